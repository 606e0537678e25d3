-- Cash-out as a two-phase transfer (after TigerBeetle): request (pending), then post or void, exactly once.
--
-- request: creator -> sys:payout_clearing (diamonds), pending until posted (paid) or voided (failed).
-- post:    sys:payout_clearing -> sys:diamonds_paid_out.
-- void:    sys:payout_clearing -> creator: the diamonds come back.
--
-- KEYS: 1 diamond balances, 2 journal, 3 withdrawal record (hash), 4 pending (sorted set by deadline),
--   5 the user's withdrawal list, 6 the user's statement (list), 7 the user's earnings by hour, 8 withdrawn today,
--   9 pending withdrawals per account (hash).
-- ARGV: 1 mode, 2 now_ms, 3 withdrawal id; request adds: 4 account, 5 diamonds, 6 minimum, 7 daily cap,
--   8 hold cutoff hour (earnings in this hour or later are held), 9 deadline_ms, 10 payout account,
--   11 fingerprint, 12 day (YYYYMMDD), 13 pending withdrawals one account may have; void adds: 4 reason.
-- Returns {'ok' | error code, status, detail}.
local mode, now_ms, id = ARGV[1], ARGV[2], ARGV[3]
local function fmt(x) return string.format('%d', x) end

if mode == 'request' then
  local account, amount = ARGV[4], tonumber(ARGV[5])
  local existing = redis.call('HMGET', KEYS[3], 'fp', 'status', 'user')
  if existing[1] then
    -- The owner is checked on every replay: another user's withdrawal is never answered, even with equal fields.
    if existing[3] ~= account then return {'idempotency_key_conflict', '', ''} end
    if existing[1] ~= ARGV[11] then return {'idempotency_key_conflict', existing[2], ''} end
    return {'ok', existing[2], 'replay'}
  end
  if amount < tonumber(ARGV[6]) then return {'below_minimum', '', ARGV[6]} end
  -- A bound per creator, so one creator's withdrawals cannot crowd the payout queue.
  local pending = tonumber(redis.call('HGET', KEYS[9], account) or '0')
  if pending >= tonumber(ARGV[13]) then return {'too_many_pending_withdrawals', '', fmt(pending)} end
  local today = tonumber(redis.call('HGET', KEYS[8], account) or '0')
  if today + amount > tonumber(ARGV[7]) then return {'daily_cap_exceeded', '', fmt(tonumber(ARGV[7]) - today)} end
  local balance = tonumber(redis.call('HGET', KEYS[1], account) or '0')
  if balance < amount then return {'insufficient_diamonds', '', fmt(balance)} end
  local held, cutoff = 0, tonumber(ARGV[8])
  local buckets = redis.call('HGETALL', KEYS[7])
  for i = 1, #buckets, 2 do
    if tonumber(buckets[i]) >= cutoff then held = held + tonumber(buckets[i + 1])
    else redis.call('HDEL', KEYS[7], buckets[i]) end  -- past the hold: forget the bucket
  end
  if amount > balance - held then return {'diamonds_on_hold', '', fmt(math.max(0, balance - held))} end
  redis.call('HINCRBY', KEYS[1], account, -amount)
  redis.call('HINCRBY', KEYS[1], 'sys:payout_clearing', amount)
  redis.call('XADD', KEYS[2], '*', 'kind', 'withdrawal_pending', 'id', id,
    'legs', 'diamonds ' .. account .. ' sys:payout_clearing ' .. fmt(amount), 'ts', now_ms)
  redis.call('HSET', KEYS[3], 'fp', ARGV[11], 'user', account, 'diamonds', fmt(amount), 'status', 'pending',
    'created_ms', now_ms, 'deadline_ms', ARGV[9], 'payout_account', ARGV[10], 'day', ARGV[12])
  redis.call('ZADD', KEYS[4], ARGV[9], id)
  redis.call('HINCRBY', KEYS[9], account, 1)
  redis.call('RPUSH', KEYS[5], id)
  redis.call('RPUSH', KEYS[6], table.concat({now_ms, 'withdrawal', 'diamonds', fmt(-amount), 'sys:payout_clearing', id,
    '', ''}, '\t'))
  redis.call('HINCRBY', KEYS[8], account, amount)
  redis.call('EXPIRE', KEYS[8], 172800)
  return {'ok', 'pending', ''}
end

local status, account, amount, day = unpack(redis.call('HMGET', KEYS[3], 'status', 'user', 'diamonds', 'day'))
if not status then return {'unknown_withdrawal', '', ''} end
if status ~= 'pending' then return {'withdrawal_not_pending', status, ''} end
redis.call('ZREM', KEYS[4], id)
if redis.call('HINCRBY', KEYS[9], account, -1) <= 0 then redis.call('HDEL', KEYS[9], account) end
if mode == 'post' then
  redis.call('HINCRBY', KEYS[1], 'sys:payout_clearing', -tonumber(amount))
  redis.call('HINCRBY', KEYS[1], 'sys:diamonds_paid_out', tonumber(amount))
  redis.call('XADD', KEYS[2], '*', 'kind', 'withdrawal_posted', 'id', id,
    'legs', 'diamonds sys:payout_clearing sys:diamonds_paid_out ' .. amount, 'ts', now_ms)
  redis.call('HSET', KEYS[3], 'status', 'paid', 'resolved_ms', now_ms)
  return {'ok', 'paid', ''}
end
-- void
redis.call('HINCRBY', KEYS[1], 'sys:payout_clearing', -tonumber(amount))
redis.call('HINCRBY', KEYS[1], account, tonumber(amount))
redis.call('XADD', KEYS[2], '*', 'kind', 'withdrawal_voided', 'id', id,
  'legs', 'diamonds sys:payout_clearing ' .. account .. ' ' .. amount, 'ts', now_ms)
redis.call('HSET', KEYS[3], 'status', 'failed', 'resolved_ms', now_ms, 'reason', ARGV[4])
redis.call('RPUSH', KEYS[6], table.concat({now_ms, 'withdrawal_returned', 'diamonds', amount, 'sys:payout_clearing',
  id, '', ''}, '\t'))
local withdrawn_key = '{ledger}:withdrawn:' .. day
if redis.call('EXISTS', withdrawn_key) == 1 then redis.call('HINCRBY', withdrawn_key, account, -tonumber(amount)) end
return {'ok', 'failed', ARGV[4]}
