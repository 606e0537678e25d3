-- Reward coins: fund the budget, or pay one accrual from it, once per transfer id (gifting/ledger/rewards.py).
-- Runs in the budget's partition (keys.rewards_part()): every key below has its tag. An accrual to a viewer of
-- another partition applies the budget's side here (sys:rewards_budget -> sys:transit) and owes the viewer's
-- side (sys:transit -> the viewer, with the statement row) as an outbox credit, written by the same call.
--
-- KEYS: 1 reward coin balances (hash), 2 journal (stream), 3 the id's record hash (fundings, or the day's
--   accrual records), 4 the day's earned totals (hash), 5 the statement (list) of the account credited (when
--   the row goes with an outbox credit: any key of the partition, unused), 6 the streaks (hash), 7 the outbox
--   (stream).
-- ARGV: 1 op ('fund' | 'accrue'), 2 transfer id, 3 now_ms, 4 coins, 5 this partition's legs (rules.place_legs of
--   rules.reward_funding_legs or rules.reward_legs), 6 statement row ('' for none here), 7 record to store,
--   8 fingerprint (fund: a different one under the same id is a conflict); accrue only: 9 the budget account,
--   10 the viewer's account, 11 a viewer's daily cap and 12 the platform's daily cap (reward coins), 13 unix time
--   (s) the day's records and totals expire, 14 kind (watch | streak | first_gift), 15 UTC day, 16 the viewer's
--   stored streak as the caller read it and 17 the streak to store ('' and '': not a streak claim), 18 the
--   viewer's watch-period field of the day's totals (a watch accrual adds to it; a streak claim needs it),
--   19.. the outbox entry's field/value pairs (rules.outbox_fields: destination tag, credit lines; none when
--   the viewer is in this partition).
-- Returns {status, detail, outbox entry id ('' when nothing is owed)}: 'ok' | 'replay' (detail: the stored
--   record; the original call wrote any outbox entry) | 'conflict' | a refusal code (rules.reward_refusal:
--   nothing moved, nothing recorded, so a later try may pay) | 'not_watched' | 'stale' (the streak changed since
--   the caller read it: read again).
local balances, journal, records = KEYS[1], KEYS[2], KEYS[3]
local op, id, now_ms, coins = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local legs, row, record, fp = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

local stored = redis.call('HGET', records, id)
if stored then
  if op == 'fund' and string.match(stored, '|([^|]*)$') ~= fp then return {'conflict', stored, ''} end
  return {'replay', stored, ''}
end

local outbox_id = ''
if op == 'accrue' then
  local earned, streaks = KEYS[4], KEYS[6]
  local budget_account, account = ARGV[9], ARGV[10]
  local viewer_max, day_max, expire_at = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13]
  local kind, day, streak_was, streak_now, watch_field = ARGV[14], ARGV[15], ARGV[16], ARGV[17], ARGV[18]
  if kind == 'streak' then
    if tonumber(redis.call('HGET', earned, watch_field) or '0') < 1 then return {'not_watched', '', ''} end
    if (redis.call('HGET', streaks, account) or '') ~= streak_was then return {'stale', '', ''} end
  end
  local budget = tonumber(redis.call('HGET', balances, budget_account) or '0')
  local totals = redis.call('HMGET', earned, account, '*')
  local earned_viewer, earned_day = tonumber(totals[1] or '0'), tonumber(totals[2] or '0')
  -- rules.reward_refusal, in the same order.
  if budget < coins then return {'rewards_budget_exhausted', tostring(budget), ''} end
  if earned_viewer + coins > viewer_max then
    return {'reward_viewer_cap', tostring(viewer_max - earned_viewer), ''}
  end
  if earned_day + coins > day_max then return {'reward_platform_cap', tostring(day_max - earned_day), ''} end
  apply_legs({rewards = balances}, legs)
  -- 'viewer' names who was paid: with the viewer in another partition, the legs here end at sys:transit.
  redis.call('XADD', journal, '*', 'kind', 'reward', 'id', id, 'reward', kind, 'viewer', account, 'legs', legs,
    'day', day, 'viewer_cap', viewer_max, 'day_cap', day_max, 'ts', now_ms)
  redis.call('HINCRBY', earned, account, coins)
  redis.call('HINCRBY', earned, '*', coins)
  if kind == 'watch' then redis.call('HINCRBY', earned, watch_field, 1) end
  if kind == 'streak' then redis.call('HSET', streaks, account, streak_now) end
  redis.call('EXPIREAT', earned, expire_at)
  redis.call('HSET', records, id, record)
  redis.call('EXPIREAT', records, expire_at)
  if #ARGV > 18 then outbox_id = redis.call('XADD', KEYS[7], '*', unpack(ARGV, 19)) end
else
  apply_legs({rewards = balances}, legs)
  redis.call('XADD', journal, '*', 'kind', 'reward_funding', 'id', id, 'legs', legs, 'ts', now_ms)
  redis.call('HSET', records, id, record)
end
if row ~= '' then redis.call('RPUSH', KEYS[5], row) end
return {'ok', record, outbox_id}
