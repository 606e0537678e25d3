-- Reverse a paid purchase as a new transfer (never an edit): a refund or a chargeback.
--
-- KEYS: 1 coin balances (hash), 2 journal (stream), 3 purchase record (hash), 4 the user's statement (list).
-- ARGV: 1 mode ('refund' | 'chargeback'), 2 now_ms, 3 purchase id, 4 transfer id, 5 the user's account and
--   6 the purchase's coins (as the caller read them from the record; checked here), 7 journal legs
--   (rules.reversal_legs), 8 statement row.
-- A refund needs the coins unspent. A chargeback takes them regardless: the balance may go below zero,
-- a debt that blocks gifting until repaid by later purchases.
-- Returns {'ok' | error code, balance after}.
local status, account, coins = unpack(redis.call('HMGET', KEYS[3], 'status', 'user', 'coins'))
if not status then return {'unknown_purchase', '0'} end
local balance = tonumber(redis.call('HGET', KEYS[1], account) or '0')
if status == 'declined' then return {'purchase_not_paid', tostring(balance)} end
if status ~= 'paid' then return {'already_reversed', tostring(balance)} end
assert(account == ARGV[5] and coins == ARGV[6], 'reverse: the legs do not match the purchase record')
if ARGV[1] == 'refund' and balance < tonumber(coins) then return {'coins_spent', tostring(balance)} end
apply_legs({coins = KEYS[1]}, ARGV[7])
redis.call('XADD', KEYS[2], '*', 'kind', ARGV[1], 'id', ARGV[4], 'ref', ARGV[3], 'legs', ARGV[7], 'ts', ARGV[2])
redis.call('RPUSH', KEYS[4], ARGV[8])
redis.call('HSET', KEYS[3], 'status', ARGV[1] == 'refund' and 'refunded' or 'charged_back', 'reversed_ms', ARGV[2])
return {'ok', redis.call('HGET', KEYS[1], account)}
