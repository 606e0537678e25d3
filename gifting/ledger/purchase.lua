-- Credit a coin purchase once per (user, Idempotency-Key) (called by gifting/ledger/store.py).
--
-- KEYS: 1 coin balances (hash), 2 journal (stream), 3 purchase record.
-- ARGV: 1 record (JSON, stored as given), 2 fingerprint, 3 status ('paid' | 'declined'), 4 user account,
--   5 coins, 6 now_ms, 7 record ttl_s, 8 bundle id, 9 price_minor, 10 currency, 11 charge id.
-- Returns {record, fingerprint of the stored record, replay (1 = decided earlier)}.
local existing = redis.call('GET', KEYS[3])
if existing then
  local fp, record = string.match(existing, '^([^|]*)|(.*)$')
  return {record, fp, 1}
end
if ARGV[3] == 'paid' then
  local coins = tonumber(ARGV[5])
  redis.call('HINCRBY', KEYS[1], ARGV[4], coins)
  redis.call('HINCRBY', KEYS[1], 'sys:coin_issuance', -coins)
  redis.call('XADD', KEYS[2], '*', 'kind', 'purchase', 'id', KEYS[3],
    'legs', 'coins sys:coin_issuance ' .. ARGV[4] .. ' ' .. ARGV[5],
    'bundle', ARGV[8], 'price_minor', ARGV[9], 'currency', ARGV[10], 'charge', ARGV[11], 'ts', ARGV[6])
end
redis.call('SET', KEYS[3], ARGV[2] .. '|' .. ARGV[1], 'EX', ARGV[7])
return {ARGV[1], ARGV[2], 0}
