-- Credit a coin purchase once per (user, Idempotency-Key) (called by gifting/ledger/store.py).
--
-- KEYS: 1 coin balances (hash), 2 journal (stream), 3 purchase record, 4 the user's purchase list,
--   5 the user's statement (list of tab-separated rows, ledger/rules.STATEMENT_FIELDS), 6 the purchase records
--   still in Valkey (sorted set by when made; the archiver moves each to PostgreSQL after its hot window).
-- ARGV: 1 record (JSON), 2 fingerprint, 3 status ('paid' | 'declined'), 4 user account, 5 coins, 6 now_ms,
--   7 purchase id, 8 journal legs (rules.purchase_legs), 9 statement row (both applied only when paid),
--   10 bundle id, 11 currency, 12 price in minor units (on the journal entry, for the accountant's totals).
-- Returns {record JSON, fingerprint of the stored record, replay (1 = decided earlier)}; for a record of another
--   user: {'{}', '', 1}, a conflict.
-- Purchase records have no TTL: refunds and chargebacks can come months later; the archiver moves them to
-- PostgreSQL after GIFTING_PURCHASE_HOT_S, and a reversal of an archived one restores it first.
local existing = redis.call('HMGET', KEYS[3], 'fp', 'record', 'user')
if existing[1] then
  -- Checked on every replay: another user's purchase is a conflict, and its record stays private.
  if existing[3] ~= ARGV[4] then return {'{}', '', 1} end
  return {existing[2], existing[1], 1}
end
if ARGV[3] == 'paid' then
  apply_legs({coins = KEYS[1]}, ARGV[8])
  redis.call('XADD', KEYS[2], '*', 'kind', 'purchase', 'id', ARGV[7], 'legs', ARGV[8], 'ts', ARGV[6],
    'bundle', ARGV[10], 'currency', ARGV[11], 'price_minor', ARGV[12])
  redis.call('RPUSH', KEYS[5], ARGV[9])
end
redis.call('HSET', KEYS[3], 'fp', ARGV[2], 'record', ARGV[1], 'user', ARGV[4], 'coins', ARGV[5],
  'status', ARGV[3])
redis.call('RPUSH', KEYS[4], ARGV[7])
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[7])
return {ARGV[1], ARGV[2], 0}
