-- Cash-out as a two-phase transfer (after TigerBeetle): request (pending), then post or void, exactly once.
-- The legs of each phase come from the caller (ledger/rules.withdrawal_legs):
--
-- request: creator -> sys:payout_clearing (diamonds), pending until posted (paid) or voided (failed).
-- post:    sys:payout_clearing -> sys:diamonds_paid_out.
-- void:    sys:payout_clearing -> creator: the diamonds come back.
--
-- KEYS: 1 diamond balances, 2 journal, 3 withdrawal record (hash), 4 pending (sorted set by deadline),
--   5 the user's withdrawal list, 6 the user's statement (list), 7 the user's earnings by hour, 8 withdrawn on
--   the request's UTC day, 9 pending withdrawals per account (hash), 10 resolved withdrawals still in Valkey
--   (sorted set by when resolved; the archiver moves each to PostgreSQL after its hot window).
-- ARGV: 1 mode, 2 now_ms, 3 withdrawal id, 4 account, 5 diamonds, 6 journal legs, 7 statement row ('': none);
--   request adds: 8 minimum, 9 daily cap, 10 hold cutoff hour (earnings in this hour or later are held),
--   11 deadline_ms, 12 payout account, 13 fingerprint, 14 day (YYYYMMDD), 15 pending withdrawals one account may
--   have, 16 how long a day's withdrawal totals are kept (s); void adds: 8 reason. Post and void are given the
--   account and diamonds the caller read from the record; the script checks them.
-- Returns {'ok' | error code, status, detail}.
local mode, now_ms, id, account, legs, row = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6], ARGV[7]
local function fmt(x) return string.format('%d', x) end

if mode == 'request' then
  local amount = tonumber(ARGV[5])
  local existing = redis.call('HMGET', KEYS[3], 'fp', 'status', 'user')
  if existing[1] then
    -- The owner is checked on every replay: another user's withdrawal is never answered, even with equal fields.
    if existing[3] ~= account then return {'idempotency_key_conflict', '', ''} end
    if existing[1] ~= ARGV[13] then return {'idempotency_key_conflict', existing[2], ''} end
    return {'ok', existing[2], 'replay'}
  end
  if amount < tonumber(ARGV[8]) then return {'below_minimum', '', ARGV[8]} end
  -- A bound per creator, so one creator's withdrawals cannot crowd the payout queue.
  local pending = tonumber(redis.call('HGET', KEYS[9], account) or '0')
  if pending >= tonumber(ARGV[15]) then return {'too_many_pending_withdrawals', '', fmt(pending)} end
  local today = tonumber(redis.call('HGET', KEYS[8], account) or '0')
  if today + amount > tonumber(ARGV[9]) then return {'daily_cap_exceeded', '', fmt(tonumber(ARGV[9]) - today)} end
  local balance = tonumber(redis.call('HGET', KEYS[1], account) or '0')
  if balance < amount then return {'insufficient_diamonds', '', fmt(balance)} end
  local held, cutoff = 0, tonumber(ARGV[10])
  local buckets = redis.call('HGETALL', KEYS[7])
  for i = 1, #buckets, 2 do
    if tonumber(buckets[i]) >= cutoff then held = held + tonumber(buckets[i + 1])
    else redis.call('HDEL', KEYS[7], buckets[i]) end  -- past the hold: forget the bucket
  end
  if amount > balance - held then return {'diamonds_on_hold', '', fmt(math.max(0, balance - held))} end
  apply_legs({diamonds = KEYS[1]}, legs)
  redis.call('XADD', KEYS[2], '*', 'kind', 'withdrawal_pending', 'id', id, 'legs', legs, 'ts', now_ms)
  redis.call('HSET', KEYS[3], 'fp', ARGV[13], 'user', account, 'diamonds', fmt(amount), 'status', 'pending',
    'created_ms', now_ms, 'deadline_ms', ARGV[11], 'payout_account', ARGV[12], 'day', ARGV[14])
  redis.call('ZADD', KEYS[4], ARGV[11], id)
  redis.call('HINCRBY', KEYS[9], account, 1)
  redis.call('RPUSH', KEYS[5], id)
  redis.call('RPUSH', KEYS[6], row)
  redis.call('HINCRBY', KEYS[8], account, amount)
  redis.call('EXPIRE', KEYS[8], ARGV[16])
  return {'ok', 'pending', ''}
end

local status, user, amount = unpack(redis.call('HMGET', KEYS[3], 'status', 'user', 'diamonds'))
if not status then return {'unknown_withdrawal', '', ''} end
if status ~= 'pending' then return {'withdrawal_not_pending', status, ''} end
assert(user == account and amount == ARGV[5], 'withdraw: the legs do not match the withdrawal record')
redis.call('ZREM', KEYS[4], id)
if redis.call('HINCRBY', KEYS[9], account, -1) <= 0 then redis.call('HDEL', KEYS[9], account) end
apply_legs({diamonds = KEYS[1]}, legs)
if mode == 'post' then
  redis.call('XADD', KEYS[2], '*', 'kind', 'withdrawal_posted', 'id', id, 'legs', legs, 'ts', now_ms)
  redis.call('HSET', KEYS[3], 'status', 'paid', 'resolved_ms', now_ms)
  redis.call('ZADD', KEYS[10], now_ms, id)
  return {'ok', 'paid', ''}
end
-- void
redis.call('XADD', KEYS[2], '*', 'kind', 'withdrawal_voided', 'id', id, 'legs', legs, 'ts', now_ms)
redis.call('HSET', KEYS[3], 'status', 'failed', 'resolved_ms', now_ms, 'reason', ARGV[8])
redis.call('ZADD', KEYS[10], now_ms, id)
redis.call('RPUSH', KEYS[6], row)
if redis.call('EXISTS', KEYS[8]) == 1 then redis.call('HINCRBY', KEYS[8], account, -tonumber(amount)) end
return {'ok', 'failed', ARGV[8]}
