-- Credit a coin purchase once per (user, Idempotency-Key) (called by gifting/ledger/store.py).
--
-- KEYS: 1 coin balances (hash), 2 journal (stream), 3 purchase record, 4 the user's purchase list,
--   5 the user's statement (list of tab-separated rows, ledger/rules.STATEMENT_FIELDS).
-- ARGV: 1 record (JSON), 2 fingerprint, 3 status ('paid' | 'declined'), 4 user account, 5 coins, 6 now_ms,
--   7 purchase id.
-- Returns {record JSON, fingerprint of the stored record, replay (1 = decided earlier)}; for a record of another
--   user: {'{}', '', 1}, a conflict.
-- Purchase records have no TTL: refunds and chargebacks can come months later.
local existing = redis.call('HMGET', KEYS[3], 'fp', 'record', 'user')
if existing[1] then
  -- Checked on every replay: another user's purchase is a conflict, and its record stays private.
  if existing[3] ~= ARGV[4] then return {'{}', '', 1} end
  return {existing[2], existing[1], 1}
end
if ARGV[3] == 'paid' then
  local coins = tonumber(ARGV[5])
  redis.call('HINCRBY', KEYS[1], ARGV[4], coins)
  redis.call('HINCRBY', KEYS[1], 'sys:coin_issuance', -coins)
  redis.call('XADD', KEYS[2], '*', 'kind', 'purchase', 'id', ARGV[7],
    'legs', 'coins sys:coin_issuance ' .. ARGV[4] .. ' ' .. ARGV[5], 'ts', ARGV[6])
  redis.call('RPUSH', KEYS[5], table.concat({ARGV[6], 'purchase', 'coins', ARGV[5], 'sys:coin_issuance', ARGV[7],
    '', ''}, '\t'))
end
redis.call('HSET', KEYS[3], 'fp', ARGV[2], 'record', ARGV[1], 'user', ARGV[4], 'coins', ARGV[5],
  'status', ARGV[3])
redis.call('RPUSH', KEYS[4], ARGV[7])
return {ARGV[1], ARGV[2], 0}
