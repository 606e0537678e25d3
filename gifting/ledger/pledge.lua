-- A pledge's steps in its PLEDGER's partition (called by gifting/ledger/store.py, Ledger.pledge and the pledge
-- redrive); the pool's own step, in the pool's partition, is pool.lua 'land'.
--
-- 'debit' (step 1): the daily spend cap, the balance, then the coins go to sys:transit and the pledge is
-- recorded 'debited' and indexed in flight, all by the user-scoped pledge id (a resend gets the record back).
-- 'finish' (step 3): applies the pool partition's answer exactly once: accepted, or refused and the coins in
-- transit come back (with the day's spend given back). Until then the record says 'debited' and the redrive
-- (workers/pool_sweep.py) asks the pool's partition again, which answers the same (idempotent by pledge id).
--
-- 'debit' KEYS: 1 coin balances, 2 journal, 3 the pledge record (hash), 4 the partition's pledges in flight
--   (sorted set), 5 spend limits, 6 today's spend per viewer, 7 the pledger's statement.
-- 'debit' ARGV: 1 op, 2 now_ms, 3 pledge id (user-scoped), 4 account, 5 coins, 6 fingerprint, 7 pool id,
--   8 rejected record ttl_s, 9 global daily spend cap in coins (0: none), 10 spend total ttl_s, 11 the debit's
--   legs, 12 the pledger's statement row, 13 a reject reason decided by the caller ('' : none), 14 the
--   pledger's display name (the redrive lands the pledge with it).
-- 'finish' KEYS: 1 coin balances, 2 journal, 3 the pledge record, 4 pledges in flight, 5 the spend total of the
--   debit's day, 6 the pledger's statement.
-- 'finish' ARGV: 1 op, 2 now_ms, 3 pledge id, 4 the pool's answer ('accepted' or the refusal's reason), 5 the
--   refund's legs, 6 the refund's statement row, 7 record ttl_s.
-- Returns {status, reason, balance, replay}; status: debited | accepted | rejected | conflict.
local coins_key, journal, record_key, in_flight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, now_ms, pledge_id = ARGV[1], ARGV[2], ARGV[3]
local function fmt(x) return string.format('%d', x) end
local balance_keys = {coins = coins_key}

local stored = redis.call('HMGET', record_key, 'status', 'reason', 'balance', 'fp', 'account', 'coins', 'pool')

if op == 'finish' then
  if stored[1] ~= 'debited' then return {stored[1] or '', stored[2] or '', stored[3] or '0', 1} end
  local balance = tonumber(stored[3])
  if ARGV[4] == 'accepted' then
    redis.call('HSET', record_key, 'status', 'accepted')
  else
    -- Refused by the pool's partition: the coins come back from transit and no longer count as spent today.
    balance = balance + tonumber(stored[6])
    apply_legs(balance_keys, ARGV[5])
    redis.call('XADD', journal, '*', 'kind', 'pledge_refunded', 'id', pledge_id, 'ref', stored[7], 'legs', ARGV[5],
      'ts', now_ms)
    redis.call('RPUSH', KEYS[6], ARGV[6])
    local spent = tonumber(redis.call('HGET', KEYS[5], stored[5]) or '0')
    if spent > 0 then redis.call('HSET', KEYS[5], stored[5], fmt(math.max(spent - tonumber(stored[6]), 0))) end
    redis.call('HSET', record_key, 'reason', ARGV[4], 'balance', fmt(balance), 'status', 'rejected')
  end
  redis.call('EXPIRE', record_key, ARGV[7])
  redis.call('ZREM', in_flight, pledge_id)
  return {redis.call('HGET', record_key, 'status'), ARGV[4] == 'accepted' and '' or ARGV[4], fmt(balance), 0}
end

-- debit
local account, coins, fp = ARGV[4], tonumber(ARGV[5]), ARGV[6]
if stored[1] then
  if stored[4] ~= fp then return {'conflict', stored[1], stored[3], 1} end
  return {stored[1], stored[2], stored[3], 1}
end
local balance = tonumber(redis.call('HGET', coins_key, account) or '0')
-- status is always 'rejected': written out at each call so tests/test_lua_scripts.py sees every reason.
local function rejected(status, reason)
  redis.call('HSET', record_key, 'status', status, 'reason', reason, 'balance', fmt(balance), 'fp', fp,
    'account', account, 'coins', ARGV[5], 'pool', ARGV[7])
  redis.call('EXPIRE', record_key, ARGV[8])
  return {status, reason, fmt(balance), 0}
end
if ARGV[13] ~= '' then return rejected('rejected', ARGV[13]) end
if balance < coins then return rejected('rejected', 'insufficient_coins') end
local spent_today = tonumber(redis.call('HGET', KEYS[6], account) or '0')
local cap = spend_cap(tonumber(ARGV[9]), redis.call('HGET', KEYS[5], account), tonumber(now_ms))
if not spend_cap_allows(cap, spent_today, coins) then return rejected('rejected', 'daily_limit') end
redis.call('HSET', KEYS[6], account, fmt(spent_today + coins))
redis.call('EXPIRE', KEYS[6], ARGV[10])

balance = balance - coins
apply_legs(balance_keys, ARGV[11])
redis.call('XADD', journal, '*', 'kind', 'pledge_debited', 'id', pledge_id, 'ref', ARGV[7], 'legs', ARGV[11],
  'ts', now_ms)
redis.call('RPUSH', KEYS[7], ARGV[12])
-- No expiry while in flight: the record is the pledge's claim on the coins in transit.
redis.call('HSET', record_key, 'status', 'debited', 'reason', '', 'balance', fmt(balance), 'fp', fp,
  'account', account, 'coins', ARGV[5], 'pool', ARGV[7], 'name', ARGV[14],
  'debited_ms', now_ms)
redis.call('ZADD', in_flight, now_ms, pledge_id)
return {'debited', '', fmt(balance), 0}
