-- Reward coins: fund the budget, or pay accruals from it, each once per transfer id (gifting/ledger/rewards.py).
-- Runs in the budget's partition (keys.rewards_part()): every key below has its tag. An accrual to a viewer of
-- another partition applies the budget's side here (sys:rewards_budget -> sys:transit) and owes the viewer's
-- side (sys:transit -> the viewer, with the statement row) as an outbox credit, written by the same call.
--
-- op 'fund': KEYS 1 reward coin balances (hash), 2 journal (stream), 3 fundings (hash). ARGV 1 'fund', 2 funding
--   id, 3 now_ms, 4 its legs (rules.reward_funding_legs), 5 record to store, 6 fingerprint (a different one under
--   the same id is a conflict). Returns {status, detail}: 'ok' | 'replay' | 'conflict' (detail: the record).
--
-- op 'accrue' (one call for many accruals of one kind and UTC day, decided one after the other):
--   KEYS 1 reward coin balances, 2 journal, 3 the day's accrual records (hash), 4 the day's earned totals (hash),
--   5 the streaks (hash), 6 the outbox (stream), 7.. the statements (lists) of the viewers of this partition.
--   ARGV 1 'accrue', 2 now_ms, 3 the budget account, 4 a viewer's daily cap and 5 the platform's daily cap (reward
--   coins), 6 unix time (s) the day's records and totals expire, 7 kind (watch | streak | first_gift), 8 UTC day;
--   then one value per accrual, fields separated by 0x1f: transfer id, coins, this partition's legs
--   (rules.place_legs of rules.reward_legs), statement row, its statement's index in KEYS ('0': the row goes with
--   the credit), record to store, viewer account, the viewer's stored streak as the caller read it and the
--   streak to store ('' and '': not a streak claim), the viewer's watch-period field of the day's totals (a watch
--   accrual adds to it; a streak claim needs it), the destination partition's tag ('' when the viewer is here),
--   and last the credit line (rules.Credit.encode; it holds 0x1f itself, so it takes the rest of the value).
--   Returns {outbox entry id ('' when nothing is owed), status of each accrual}: 'ok' | 'replay' (paid before;
--   that call wrote any outbox entry) | a refusal code (rules.reward_refusal: nothing moved, nothing recorded,
--   so a later try may pay) | 'not_watched' | 'stale' (the streak changed since the caller read it).
local balances, journal, records = KEYS[1], KEYS[2], KEYS[3]

if ARGV[1] == 'fund' then
  local id, now_ms, legs, record, fp = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local stored = redis.call('HGET', records, id)
  if stored then
    if string.match(stored, '|([^|]*)$') ~= fp then return {'conflict', stored} end
    return {'replay', stored}
  end
  apply_legs({rewards = balances}, legs)
  redis.call('XADD', journal, '*', 'kind', 'reward_funding', 'id', id, 'legs', legs, 'ts', now_ms)
  redis.call('HSET', records, id, record)
  return {'ok', record}
end

local earned, streaks, outbox = KEYS[4], KEYS[5], KEYS[6]
local now_ms, budget_account = ARGV[2], ARGV[3]
local viewer_max, day_max, expire_at, kind, day = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local FIRST = 9

local function accrue(a)
  if redis.call('HEXISTS', records, a.id) == 1 then return 'replay' end
  if kind == 'streak' then
    if tonumber(redis.call('HGET', earned, a.watch_field) or '0') < 1 then return 'not_watched' end
    if (redis.call('HGET', streaks, a.account) or '') ~= a.streak_was then return 'stale' end
  end
  local budget = tonumber(redis.call('HGET', balances, budget_account) or '0')
  local totals = redis.call('HMGET', earned, a.account, '*')
  local earned_viewer, earned_day = tonumber(totals[1] or '0'), tonumber(totals[2] or '0')
  -- rules.reward_refusal, in the same order.
  if budget < a.coins then return 'rewards_budget_exhausted' end
  if earned_viewer + a.coins > viewer_max then return 'reward_viewer_cap' end
  if earned_day + a.coins > day_max then return 'reward_platform_cap' end
  apply_legs({rewards = balances}, a.legs)
  -- 'viewer' names who was paid: with the viewer in another partition, the legs here end at sys:transit.
  redis.call('XADD', journal, '*', 'kind', 'reward', 'id', a.id, 'reward', kind, 'viewer', a.account,
    'legs', a.legs, 'day', day, 'viewer_cap', viewer_max, 'day_cap', day_max, 'ts', now_ms)
  redis.call('HINCRBY', earned, a.account, a.coins)
  redis.call('HINCRBY', earned, '*', a.coins)
  if kind == 'watch' then redis.call('HINCRBY', earned, a.watch_field, 1) end
  if kind == 'streak' then redis.call('HSET', streaks, a.account, a.streak_now) end
  redis.call('HSET', records, a.id, a.record)
  if a.stmt ~= '0' then redis.call('RPUSH', KEYS[tonumber(a.stmt)], a.row) end
  return 'ok'
end

local ARG_PATTERN = '^' .. string.rep('([^\31]*)\31', 11) .. '(.*)$'
local accruals = {}  -- every argument parsed before anything is written: a malformed one moves nothing
for i = FIRST, #ARGV do
  local id, coins, legs, row, stmt, record, account, streak_was, streak_now, watch_field, dest, credit =
    string.match(ARGV[i], ARG_PATTERN)
  if not id or not tonumber(coins) or not tonumber(stmt) then
    return redis.error_reply('rewards: malformed accrual argument ' .. (i - FIRST + 1))
  end
  accruals[#accruals + 1] = {id = id, coins = tonumber(coins), legs = legs, row = row, stmt = stmt,
    record = record, account = account, streak_was = streak_was, streak_now = streak_now,
    watch_field = watch_field, dest = dest, credit = credit}
end

local reply, owed, dests = {''}, {}, {}
for _, a in ipairs(accruals) do
  local status = accrue(a)
  if status == 'ok' and a.dest ~= '' then
    if owed[a.dest] == nil then owed[a.dest] = {}; dests[#dests + 1] = a.dest end
    owed[a.dest][#owed[a.dest] + 1] = a.credit
  end
  reply[#reply + 1] = status
end
if #reply > 1 then
  redis.call('EXPIREAT', earned, expire_at)
  redis.call('EXPIREAT', records, expire_at)
end
if #dests > 0 then
  local fields = {}
  for _, dest in ipairs(dests) do
    fields[#fields + 1] = dest
    fields[#fields + 1] = table.concat(owed[dest], '\n')
  end
  reply[1] = redis.call('XADD', outbox, '*', unpack(fields))
end
return reply
