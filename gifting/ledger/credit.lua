-- Apply credits owed by other partitions' transfers, each exactly once (called by gifting/ledger/store.py,
-- Ledger.apply_credits, with the lines of outbox entries: ledger/rules.Credit).
--
-- KEYS: 1 coin balances, 2 diamond balances, 3 reward coin balances (hashes), 4 journal (stream), 5.. the
--   credit record buckets (hashes: credit id -> 1), newest (this call's) first (ARGV 2 of them), then the
--   statements, earnings-by-hour hashes and top-gifter boards the credits name (by index into KEYS).
-- ARGV: 1 now_ms, 2 number of record buckets, 3 unix time (s) at which the newest bucket expires, 4 and 5 how
--   long a day's and a week's top-gifter board is kept (s); then one value per credit, fields separated by 0x1f
--   (US): id, legs ('ledger debit credit amount' joined by '|'), journal row (rules.CREDIT_ROW_FIELDS), the
--   statement rows ('key index' 0x1e 'row', joined by 0x1d), earned ('key index, hour, diamonds' or ''), board
--   ('key index of all, day, week, gifter account, coins' or '').
-- Returns the number of credits applied now (the others were applied before).
local now_ms, n_buckets, expire_at = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local top_ttls = {0, ARGV[4], ARGV[5]}
local HEAD, FIRST_BUCKET = 5, 5
local balance_keys = {coins = KEYS[1], diamonds = KEYS[2], rewards = KEYS[3]}

local ids, credits = {}, {}
for i = HEAD + 1, #ARGV do
  local id, legs, row, stmts, earned, board =
    string.match(ARGV[i], '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
  if not id then return redis.error_reply('credit: malformed credit argument ' .. (i - HEAD)) end
  ids[#ids + 1] = id
  credits[#credits + 1] = {id = id, legs = legs, row = row, stmts = stmts, earned = earned, board = board}
end
if #ids == 0 then return 0 end

local applied = {}
for k = FIRST_BUCKET, FIRST_BUCKET + n_buckets - 1 do
  for i = 1, #ids, 1000 do
    local last = math.min(i + 999, #ids)
    local found = redis.call('HMGET', KEYS[k], unpack(ids, i, last))
    for j, v in ipairs(found) do if v then applied[ids[i + j - 1]] = true end end
  end
end

local rows, records, statements, boards = {}, {}, {}, {}
for _, c in ipairs(credits) do
  if not applied[c.id] then
    applied[c.id] = true -- the same id twice in one call is applied once
    apply_legs(balance_keys, c.legs)
    rows[#rows + 1] = c.row
    records[#records + 1] = c.id
    records[#records + 1] = '1'
    for pair in string.gmatch(c.stmts, '[^\29]+') do
      local ki, row = string.match(pair, '^(%d+)\30(.*)$')
      local list = statements[ki]
      if list == nil then list = {}; statements[ki] = list end
      list[#list + 1] = row
    end
    if c.earned ~= '' then
      local ki, hour, amount = string.match(c.earned, '^(%d+) (%d+) (%d+)$')
      redis.call('HINCRBY', KEYS[tonumber(ki)], hour, amount)
    end
    if c.board ~= '' then
      local all, day, week, gifter, coins = string.match(c.board, '^(%d+) (%d+) (%d+) (%S+) (%d+)$')
      for i, ki in ipairs({all, day, week}) do
        local board = boards[ki]
        if board == nil then board = {ttl = top_ttls[i], by = {}}; boards[ki] = board end
        board.by[gifter] = (board.by[gifter] or 0) + tonumber(coins)
      end
    end
  end
end
if #rows == 0 then return 0 end
local CHUNK = 1000 -- values per unpack(): Lua's C stack holds a few thousand
for i = 1, #records, CHUNK do
  redis.call('HSET', KEYS[FIRST_BUCKET], unpack(records, i, math.min(i + CHUNK - 1, #records)))
end
redis.call('EXPIREAT', KEYS[FIRST_BUCKET], expire_at)
redis.call('XADD', KEYS[4], '*', 'kind', 'credits', 'rows', table.concat(rows, '\n'), 'ts', now_ms)
for ki, list in pairs(statements) do
  for i = 1, #list, CHUNK do redis.call('RPUSH', KEYS[tonumber(ki)], unpack(list, i, math.min(i + CHUNK - 1, #list))) end
end
for ki, board in pairs(boards) do top_gifters_add(KEYS[tonumber(ki)], board.ttl, board.by) end
return #rows
