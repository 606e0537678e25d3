-- Reverse a paid purchase as a new transfer (never an edit): a refund or a chargeback.
--
-- KEYS: 1 coin balances (hash), 2 journal (stream), 3 purchase record (hash), 4 the user's statement (list).
-- ARGV: 1 mode ('refund' | 'chargeback'), 2 now_ms, 3 purchase id.
-- A refund needs the coins unspent. A chargeback takes them regardless: the balance may go below zero,
-- a debt that blocks gifting until repaid by later purchases.
-- Returns {'ok' | error code, balance after}.
local status, account, coins = unpack(redis.call('HMGET', KEYS[3], 'status', 'user', 'coins'))
if not status then return {'unknown_purchase', '0'} end
local balance = tonumber(redis.call('HGET', KEYS[1], account) or '0')
if status == 'declined' then return {'purchase_not_paid', tostring(balance)} end
if status ~= 'paid' then return {'already_reversed', tostring(balance)} end
coins = tonumber(coins)
if ARGV[1] == 'refund' and balance < coins then return {'coins_spent', tostring(balance)} end
local kind = ARGV[1]
balance = redis.call('HINCRBY', KEYS[1], account, -coins)
redis.call('HINCRBY', KEYS[1], 'sys:coin_issuance', coins)
redis.call('XADD', KEYS[2], '*', 'kind', kind, 'id', kind .. ':' .. ARGV[3], 'ref', ARGV[3],
  'legs', 'coins ' .. account .. ' sys:coin_issuance ' .. string.format('%d', coins), 'ts', ARGV[2])
redis.call('RPUSH', KEYS[4], table.concat({ARGV[2], kind, 'coins', string.format('%d', -coins), 'sys:coin_issuance',
  ARGV[3], '', ''}, '\t'))
redis.call('HSET', KEYS[3], 'status', kind == 'refund' and 'refunded' or 'charged_back', 'reversed_ms', ARGV[2])
return {'ok', tostring(balance)}
