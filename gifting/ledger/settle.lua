-- Settle a batch of gifts atomically and idempotently (called by gifting/ledger/store.py).
--
-- KEYS: 1 coin balances (hash), 2 diamond balances (hash), 3 journal (stream), 4 viewer spend limits (hash),
--   5 today's spend per viewer (hash; every gift counts, capped or not), 6 lifetime spend per viewer (hash),
--   7 reward coin balances (hash), 8 the partition's outbox (stream), 9.. the idempotency record buckets of settled gifts (hashes: gift id ->
--   record), newest (this batch's) first (ARGV 7 of them), then those of rejected gifts, newest first (ARGV 8 of
--   them): kept only
--   GIFTING_REJECTED_GIFT_TTL_S; then the statement (list) of each account of the batch, in the order of the
--   accounts in ARGV; then four keys per creator of the batch in this partition, in the order of the creators
--   in ARGV: earnings by hour (hash), top gifters of all time, of the UTC day, of the ISO week (sorted sets).
--   All keys are of one ledger partition, the viewers' (docs/SCALING.md "Stage 2").
-- ARGV: 1 now_ms, 2 creator share bps, 3 global daily spend cap in coins (0: none), 4 earnings bucket (hour
--   number, for the withdrawal hold), 5 unix time (s) at which this batch's record bucket expires, 6 how long a
--   day's spend totals are kept (s), 7 number of settled-record bucket keys, 8 number of rejected-record bucket
--   keys, 9 unix time (s) at which this batch's rejected-record bucket expires, 10 and 11 how long a day's and
--   a week's top-gifter board is kept (s), 12 n = number of gifts, 13 m = number of accounts, 14 c = number of
--   creators, 15 the platform revenue account, 16 the creator earnings account, 17 the diamond issuance
--   account, 18 the rewards spent account; then one value per gift, fields separated by 0x1f (US):
--   gift_id, viewer account, creator account, coins, diamonds, fingerprint, reject reason ('' = none), and,
--   built by the caller (ledger/rules.py) for when the gift settles: its journal row, the viewer's statement
--   row, the creator's statement row ('' when no diamonds), and the journal row and viewer's statement row for
--   when it is paid with reward coins (rules.pays_with_rewards: reward coins first, a whole gift at a time; such
--   a gift counts toward neither the spend cap nor the lifetime spend), then, for a creator in another
--   partition, that partition's tag and the creator's credit (rules.Credit line: diamonds, statement row,
--   earned hour, top gifters), both '' for a creator in this partition; then the m accounts, then the c
--   creator accounts (of this partition).
-- Returns one string: a line per gift, 'status|reason|coin balance after|replay (1 = decided earlier)|the
--   sender's lifetime coins spent on gifts (for gifter levels)', then a last line: the id of the outbox entry
--   holding the credits owed to other partitions by this call's settled gifts ('' when none).
--
-- Why it looks like this: inside Valkey every redis.call costs a few microseconds plus its own AOF record, and
-- that, not the arithmetic, bounds settlement throughput. So the script makes a fixed number of calls per
-- batch (or per distinct account in it), never per gift: records are fields of one hash per time bucket
-- (one HMGET per bucket, one HSET), balances, caps and lifetime spend one HMGET and one HSET each, the journal
-- one entry per batch (a row per gift, each with its legs), a statement row per gift pushed with one RPUSH per
-- account, and each creator's top gifters read with ZMSCORE and written with one ZADD per period (in the
-- real path's command stats ~1.3 us per member, against ~3.8 us for a ZINCRBY each).
local coins_key, diamonds_key, journal_key = KEYS[1], KEYS[2], KEYS[3]
local limits_key, spent_key, lifetime_key = KEYS[4], KEYS[5], KEYS[6]
local rewards_key, outbox_key = KEYS[7], KEYS[8]
local FIRST_BUCKET = 9
local now_ms, bps, global_cap, hour = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local bucket_expire_at, spent_ttl_s = ARGV[5], ARGV[6]
local FIRST_REJECTED_BUCKET, rejected_expire_at = FIRST_BUCKET + tonumber(ARGV[7]), ARGV[9]
local FIRST_ACCOUNT_KEY = FIRST_REJECTED_BUCKET + tonumber(ARGV[8])
local top_day_ttl_s, top_week_ttl_s = ARGV[10], ARGV[11]
local n, m, c = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local platform_revenue, creator_earnings, diamond_issuance = ARGV[15], ARGV[16], ARGV[17]
local rewards_spent = ARGV[18]
local HEAD = 18
local CHUNK = 1000 -- values per unpack(): Lua's C stack holds a few thousand

local function fmt(x) return string.format('%d', x) end

-- cmd key v1 v2 ... in as few calls as the C stack allows.
local function call_list(cmd, key, values)
  for i = 1, #values, CHUNK do
    redis.call(cmd, key, unpack(values, i, math.min(i + CHUNK - 1, #values)))
  end
end

-- field -> value for the given fields of a hash (absent fields are left out).
local function hmget(key, fields)
  local found = {}
  for i = 1, #fields, CHUNK do
    local last = math.min(i + CHUNK - 1, #fields)
    local values = redis.call('HMGET', key, unpack(fields, i, last))
    for j = i, last do
      local v = values[j - i + 1]
      if v then found[fields[j]] = v end
    end
  end
  return found
end

local function keys_of(set)
  local list = {}
  for k, _ in pairs(set) do list[#list + 1] = k end
  return list
end

-- Parse the batch; collect the accounts it touches.
local gifts, ids, viewer_set = {}, {}, {}
for i = HEAD + 1, HEAD + n do
  local id, viewer, creator, coins, diamonds, fp, reject, row, viewer_row, creator_row, reward_row, reward_viewer_row,
    dest, credit = string.match(ARGV[i], '^([^\31]*)\31([^\31]*)\31([^\31]*)\31(%d+)\31(%d+)\31([^\31]*)\31([^\31]*)'
      .. '\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
  if not id then return redis.error_reply('settle: malformed gift argument ' .. (i - HEAD)) end
  gifts[#gifts + 1] = {id = id, viewer = viewer, creator = creator, coins = tonumber(coins),
    diamonds = tonumber(diamonds), fp = fp, reject = reject, row = row, viewer_row = viewer_row,
    creator_row = creator_row, reward_row = reward_row, reward_viewer_row = reward_viewer_row, dest = dest,
    credit = credit}
  ids[#ids + 1] = id
  viewer_set[viewer] = true
end
local viewers = keys_of(viewer_set)

-- Each account's statement key; each creator's earnings and top-gifter board keys (all, day, week).
local statement_keys, creator_keys = {}, {}
for i = 1, m do statement_keys[ARGV[HEAD + n + i]] = KEYS[FIRST_ACCOUNT_KEY + i - 1] end
local FIRST_CREATOR_KEY = FIRST_ACCOUNT_KEY + m
for i = 1, c do
  local k = FIRST_CREATOR_KEY + 4 * (i - 1)
  creator_keys[ARGV[HEAD + n + m + i]] = {earned = KEYS[k], boards = {KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]}}
end

-- Decided earlier: the newest record bucket that knows the id wins (an id is recorded once).
local records = {}
for k = FIRST_ACCOUNT_KEY - 1, FIRST_BUCKET, -1 do
  for id, record in pairs(hmget(KEYS[k], ids)) do records[id] = record end
end

local raw_balance = hmget(coins_key, viewers)
local raw_lifetime = hmget(lifetime_key, viewers)
local raw_own_cap = hmget(limits_key, viewers)
local raw_spent = hmget(spent_key, viewers)
local raw_rewards = hmget(rewards_key, viewers)
local balances, lifetime, caps, spent, rewards = {}, {}, {}, {}, {}
for _, v in ipairs(viewers) do
  balances[v] = tonumber(raw_balance[v] or '0')
  rewards[v] = tonumber(raw_rewards[v] or '0')
  lifetime[v] = tonumber(raw_lifetime[v] or '0')
  caps[v] = spend_cap(global_cap, raw_own_cap[v], tonumber(now_ms))
  spent[v] = tonumber(raw_spent[v] or '0')
end

local dirty, rewards_dirty = {}, {}
local rewards_total, funded_total = 0, 0 -- reward coins spent; diamonds the platform pays for them
local rejected_records = {}
local platform_total, earnings_total, local_diamonds = 0, 0, 0
local diamonds_by_creator, top = {}, {} -- creator -> viewer -> coins
local outbox, owed = {}, false -- destination partition -> credit lines
local new_records, rows, statements = {}, {}, {} -- statements: account -> rows
local out = {}

local function statement(account, row)
  local list = statements[account]
  if list == nil then list = {}; statements[account] = list end
  list[#list + 1] = row
end

-- The creator's side of a settled gift, however it was paid: diamonds, statement row, top gifters; owed to the
-- creator's partition through the outbox when that is another one.
local function credit_creator(g, viewer, coins, diamonds)
  if g.dest ~= '' then
    local lines = outbox[g.dest]
    if lines == nil then lines = {}; outbox[g.dest] = lines end
    lines[#lines + 1] = g.credit
    owed = true
    return
  end
  local creator = g.creator
  local_diamonds = local_diamonds + diamonds
  if diamonds > 0 then
    diamonds_by_creator[creator] = (diamonds_by_creator[creator] or 0) + diamonds
    statement(creator, g.creator_row)
  end
  local by_viewer = top[creator]
  if by_viewer == nil then by_viewer = {}; top[creator] = by_viewer end
  by_viewer[viewer] = (by_viewer[viewer] or 0) + coins
end

for _, g in ipairs(gifts) do
  local viewer = g.viewer
  local record = records[g.id]
  if record then
    local status, reason, bal, old_fp = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if old_fp ~= g.fp then reason, status = status, 'conflict' end
    out[#out + 1] = status .. '|' .. reason .. '|' .. bal .. '|1|' .. fmt(lifetime[viewer])
  else
    local status, reason = 'settled', ''
    local bal, coins, diamonds = balances[viewer], g.coins, g.diamonds
    if g.reject ~= '' then
      status, reason = 'rejected', g.reject
    elseif coins > 0 and bal >= 0 and rewards[viewer] >= coins then -- paid with reward coins (pays_with_rewards)
      rewards[viewer], rewards_dirty[viewer] = rewards[viewer] - coins, true
      rewards_total, funded_total = rewards_total + coins, funded_total + diamonds
      earnings_total = earnings_total + diamonds
      credit_creator(g, viewer, coins, diamonds)
      rows[#rows + 1] = g.reward_row
      statement(viewer, g.reward_viewer_row)
    elseif bal < coins then
      status, reason = 'rejected', 'insufficient_coins'
    elseif not spend_cap_allows(caps[viewer], spent[viewer], coins) then
      status, reason = 'rejected', 'daily_limit'
    else
      bal = bal - coins
      balances[viewer], dirty[viewer] = bal, true
      spent[viewer] = spent[viewer] + coins
      lifetime[viewer] = lifetime[viewer] + coins
      platform_total, earnings_total = platform_total + coins - diamonds, earnings_total + diamonds
      credit_creator(g, viewer, coins, diamonds)
      rows[#rows + 1] = g.row
      statement(viewer, g.viewer_row)
    end
    record = status .. '|' .. reason .. '|' .. fmt(bal) .. '|' .. g.fp
    records[g.id] = record -- the same id again later in this batch is a replay
    local list = new_records
    if status ~= 'settled' then list = rejected_records end
    list[#list + 1] = g.id
    list[#list + 1] = record
    out[#out + 1] = status .. '|' .. reason .. '|' .. fmt(bal) .. '|0|' .. fmt(lifetime[viewer])
  end
end

-- Writes: a fixed number per batch, or one per account touched.
if #new_records > 0 then
  call_list('HSET', KEYS[FIRST_BUCKET], new_records)
  redis.call('EXPIREAT', KEYS[FIRST_BUCKET], bucket_expire_at)
end
if #rejected_records > 0 then
  call_list('HSET', KEYS[FIRST_REJECTED_BUCKET], rejected_records)
  redis.call('EXPIREAT', KEYS[FIRST_REJECTED_BUCKET], rejected_expire_at)
end
if #rows > 0 then
  redis.call('XADD', journal_key, '*', 'kind', 'gifts', 'rows', table.concat(rows, '\n'), 'bps', bps, 'ts', now_ms)
end

local fields, spent_fields, lifetime_fields = {}, {}, {}
for v, _ in pairs(dirty) do
  fields[#fields + 1] = v; fields[#fields + 1] = fmt(balances[v])
  lifetime_fields[#lifetime_fields + 1] = v; lifetime_fields[#lifetime_fields + 1] = fmt(lifetime[v])
  spent_fields[#spent_fields + 1] = v; spent_fields[#spent_fields + 1] = fmt(spent[v])
end
if #fields > 0 then
  call_list('HSET', coins_key, fields)
  call_list('HSET', lifetime_key, lifetime_fields)
end
if #spent_fields > 0 then
  call_list('HSET', spent_key, spent_fields)
  redis.call('EXPIRE', spent_key, spent_ttl_s)
end
if platform_total - funded_total ~= 0 then
  redis.call('HINCRBY', coins_key, platform_revenue, platform_total - funded_total)
end
if rewards_total > 0 then
  local reward_fields = {}
  for v, _ in pairs(rewards_dirty) do
    reward_fields[#reward_fields + 1] = v; reward_fields[#reward_fields + 1] = fmt(rewards[v])
  end
  call_list('HSET', rewards_key, reward_fields)
  redis.call('HINCRBY', rewards_key, rewards_spent, rewards_total)
end
if earnings_total > 0 then redis.call('HINCRBY', coins_key, creator_earnings, earnings_total) end
if local_diamonds > 0 then
  redis.call('HINCRBY', diamonds_key, diamond_issuance, -local_diamonds)
  for creator, d in pairs(diamonds_by_creator) do
    redis.call('HINCRBY', diamonds_key, creator, d)
    -- Freshly earned diamonds are held back from withdrawal for a while (chargeback protection).
    redis.call('HINCRBY', creator_keys[creator].earned, hour, d)
  end
end
for account, list in pairs(statements) do call_list('RPUSH', statement_keys[account], list) end

-- Each creator's top gifters per UTC day, ISO week and all time: add this batch's coins (top_gifters.lua).
local ttls = {0, top_day_ttl_s, top_week_ttl_s}
for creator, by_viewer in pairs(top) do
  for i, board in ipairs(creator_keys[creator].boards) do top_gifters_add(board, ttls[i], by_viewer) end
end
local outbox_id = ''
if owed then
  local fields = {}
  for dest, lines in pairs(outbox) do
    fields[#fields + 1] = dest
    fields[#fields + 1] = table.concat(lines, '\n')
  end
  outbox_id = redis.call('XADD', outbox_key, '*', unpack(fields))
end
out[#out + 1] = outbox_id
return table.concat(out, '\n')
