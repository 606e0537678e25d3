-- Pooled gifts: viewers pledge coins toward one expensive gift (called by gifting/rooms/pools.py and
-- workers/settlement.py).
--
-- Each pledge is a pending transfer viewer -> sys:pool_escrow. When the pledges reach the price the pool
-- completes in the same call: the escrow pays the gift like settle.lua does (platform share, creator share as
-- diamonds). An incomplete pool is voided at its deadline (expired), by its opener, the creator or an admin
-- (cancelled), or when its room ends (voided): every pledge goes back. A pool's status moves
-- open -> completed | expired | cancelled | voided exactly once, so a pledge is never both posted and voided.
-- A closed pool's record expires after the pool record TTL; an open one never does (its escrow is in it).
--
-- KEYS: 1 coin balances, 2 diamond balances, 3 journal, 4 pool (hash), 5 open pools (sorted set by deadline),
--   6 pledge record (pledge only; else any key of the slot), 7 the room's open pools (set), 8 the opener's open
--   pools (set), 9 the room's end marker (hash: '*' -> ended ms, pool id -> 1 for each pool voided by the end;
--   its existence closes the room to new pools and pledges), 10 viewer spend limits, 11 today's spend per viewer
--   (10 and 11: pledge only; the daily spend cap of spend_cap.lua, shared with gifts).
-- ARGV 'pledge': 1 op, 2 now_ms, 3 pledge id, 4 account, 5 coins, 6 fingerprint, 7 display name, 8 record ttl_s,
--   9 earnings hour, 10 UTC day, 11 ISO week, 12 pool record ttl_s, 13 global daily spend cap in coins (0: none),
--   14 spend total ttl_s, 15 rejected record ttl_s (a rejection is remembered briefly; an accepted pledge for the
--   full ttl_s).
-- ARGV 'expire' | 'cancel' | 'void': 1 op, 2 now_ms, 3 pool record ttl_s.
-- ARGV 'open': 1 op, 2 now_ms, 3 pool id, 4 room cap, 5 opener cap, 6 opener account, 7 coins an opener needs,
--   8.. the record's field/value pairs.
-- Returns {status, reason, balance, replay, pool JSON}; status: accepted | rejected | conflict | expired |
--   cancelled | voided | opened | noop.
local coins_key, diamonds_key, journal, pool_key, open_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, now_ms = ARGV[1], ARGV[2]
local function fmt(x) return string.format('%d', x) end

local function snapshot()
  local p = redis.call('HGETALL', pool_key)
  local t = {}
  for i = 1, #p, 2 do t[p[i]] = p[i + 1] end
  if not t.id then return '' end
  return cjson.encode({id = t.id, room = t.room, creator = t.creator, gift = t.gift, price = tonumber(t.price),
    bps = tonumber(t.bps),
    pledged = tonumber(t.pledged), status = t.status, deadline_ms = tonumber(t.deadline_ms),
    contributors = cjson.decode(t.contributors)})
end

local function statement(account, kind, amount, ref)
  redis.call('RPUSH', '{ledger}:stmt:' .. account,
    table.concat({now_ms, kind, 'coins', string.format('%d', amount), 'sys:pool_escrow', ref, '', ''}, '\t'))
end

local room_pools_key, opener_pools_key, ended_key = KEYS[7], KEYS[8], KEYS[9]

-- Leave the open-pool indexes and let the record expire: the pool is closed for good.
local function closed(id, ttl_s)
  redis.call('ZREM', open_key, id)
  redis.call('SREM', room_pools_key, id)
  redis.call('SREM', opener_pools_key, id)
  redis.call('EXPIRE', pool_key, ttl_s)
end

if op == 'open' then
  local reject = nil
  if redis.call('EXISTS', ended_key) == 1 then reject = 'room_not_live'
  elseif redis.call('SCARD', room_pools_key) >= tonumber(ARGV[4]) then reject = 'too_many_pools'
  elseif redis.call('SCARD', opener_pools_key) >= tonumber(ARGV[5]) then reject = 'too_many_open_pools'
  elseif tonumber(redis.call('HGET', coins_key, ARGV[6]) or '0') < tonumber(ARGV[7]) then
    reject = 'pool_opener_coins'
  end
  if reject then return {'rejected', reject, '0', 0, ''} end
  redis.call('HSET', pool_key, unpack(ARGV, 8))
  redis.call('ZADD', open_key, redis.call('HGET', pool_key, 'deadline_ms'), ARGV[3])
  redis.call('SADD', room_pools_key, ARGV[3])
  redis.call('SADD', opener_pools_key, ARGV[3])
  return {'opened', '', '0', 0, snapshot()}
end

local pool = redis.call('HMGET', pool_key, 'id', 'status', 'price', 'pledged', 'deadline_ms', 'creator', 'bps',
  'contributors', 'gift', 'room')
local id, status, price, pledged, deadline = pool[1], pool[2], tonumber(pool[3]), tonumber(pool[4]), tonumber(pool[5])

-- Void an open pool: every pledge goes back. expire: past its deadline; cancel: by its opener, the creator or
-- an admin (checked by the caller); void: its room ended.
if op == 'expire' or op == 'cancel' or op == 'void' then
  local final = ({expire = 'expired', cancel = 'cancelled', void = 'voided'})[op]
  if not id or status ~= 'open' or (op == 'expire' and tonumber(now_ms) < deadline) then
    return {'noop', status or '', '0', 0, snapshot()}
  end
  local contributors = cjson.decode(pool[8])
  local legs = {}
  for _, c in ipairs(contributors) do
    local account = 'u:' .. c.user
    redis.call('HINCRBY', coins_key, account, c.coins)
    redis.call('HINCRBY', coins_key, 'sys:pool_escrow', -c.coins)
    legs[#legs + 1] = 'coins sys:pool_escrow ' .. account .. ' ' .. fmt(c.coins)
    statement(account, 'pledge_returned', c.coins, id)
  end
  if #legs > 0 then
    redis.call('XADD', journal, '*', 'kind', 'pool_voided', 'id', id, 'status', final, 'legs', table.concat(legs, '|'),
      'ts', now_ms)
  end
  redis.call('HSET', pool_key, 'status', final, 'closed_ms', now_ms)
  if op == 'void' then redis.call('HSET', ended_key, id, 1) end
  closed(id, ARGV[3])
  return {final, '', '0', 0, snapshot()}
end

-- pledge
local record_key, pledge_id, account, coins, fp = KEYS[6], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local record = redis.call('GET', record_key)
if record then
  local s, reason, bal, old_fp = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if old_fp ~= fp then return {'conflict', s, bal, 1, snapshot()} end
  return {s, reason, bal, 1, snapshot()}
end
local balance = tonumber(redis.call('HGET', coins_key, account) or '0')
local function decide(s, reason)
  local ttl_s = ARGV[8]
  if s ~= 'accepted' then ttl_s = ARGV[15] end
  redis.call('SET', record_key, s .. '|' .. reason .. '|' .. fmt(balance) .. '|' .. fp, 'EX', ttl_s)
  return {s, reason, fmt(balance), 0, snapshot()}
end
if not id then return decide('rejected', 'unknown_pool') end
if status ~= 'open' then return decide('rejected', 'pool_' .. status) end
if redis.call('EXISTS', ended_key) == 1 then return decide('rejected', 'room_not_live') end
if tonumber(now_ms) >= deadline then return decide('rejected', 'pool_expired') end
if account == 'u:' .. pool[6] then return decide('rejected', 'self_gift') end
if coins > price - pledged then return decide('rejected', 'pledge_exceeds_remaining') end
if balance < coins then return decide('rejected', 'insufficient_coins') end
local spent_today = tonumber(redis.call('HGET', KEYS[11], account) or '0')
local cap = spend_cap(tonumber(ARGV[13]), redis.call('HGET', KEYS[10], account), tonumber(now_ms))
if not spend_cap_allows(cap, spent_today, coins) then return decide('rejected', 'daily_limit') end
redis.call('HSET', KEYS[11], account, fmt(spent_today + coins))
redis.call('EXPIRE', KEYS[11], ARGV[14])

balance = balance - coins
redis.call('HSET', coins_key, account, fmt(balance))
redis.call('HINCRBY', coins_key, 'sys:pool_escrow', coins)
redis.call('XADD', journal, '*', 'kind', 'pledge_pending', 'id', pledge_id, 'ref', id,
  'legs', 'coins ' .. account .. ' sys:pool_escrow ' .. fmt(coins), 'ts', now_ms)
statement(account, 'pledge', -coins, id)
local contributors = cjson.decode(pool[8])
local user = string.sub(account, 3)
local merged = false
for _, c in ipairs(contributors) do
  if c.user == user then c.coins = c.coins + coins; merged = true end
end
if not merged then contributors[#contributors + 1] = {user = user, name = ARGV[7], coins = coins} end
pledged = pledged + coins
redis.call('HSET', pool_key, 'pledged', pledged, 'contributors', cjson.encode(contributors))

if pledged == price then
  -- Post every pledge: the escrow pays the gift, split like any gift.
  local creator = 'u:' .. pool[6]
  local diamonds = math.floor(price * tonumber(pool[7]) / 10000)
  local platform = price - diamonds
  local legs = {}
  if platform > 0 then legs[#legs + 1] = 'coins sys:pool_escrow sys:platform_revenue ' .. fmt(platform) end
  if diamonds > 0 then
    legs[#legs + 1] = 'coins sys:pool_escrow sys:creator_earnings ' .. fmt(diamonds)
    legs[#legs + 1] = 'diamonds sys:diamond_issuance ' .. creator .. ' ' .. fmt(diamonds)
  end
  redis.call('HINCRBY', coins_key, 'sys:pool_escrow', -price)
  redis.call('HINCRBY', coins_key, 'sys:platform_revenue', platform)
  redis.call('HINCRBY', coins_key, 'sys:creator_earnings', diamonds)
  redis.call('HINCRBY', diamonds_key, 'sys:diamond_issuance', -diamonds)
  redis.call('HINCRBY', diamonds_key, creator, diamonds)
  redis.call('HINCRBY', '{ledger}:earned:' .. creator, ARGV[9], diamonds)
  redis.call('XADD', journal, '*', 'kind', 'pool_completed', 'id', id, 'legs', table.concat(legs, '|'),
    'room', pool[10], 'gift', pool[9], 'bps', pool[7], 'ts', now_ms)
  redis.call('RPUSH', '{ledger}:stmt:' .. creator, table.concat({now_ms, 'gift_received', 'diamonds',
    string.format('%d', diamonds), 'pool', id, pool[9], '1'}, '\t'))
  for _, c in ipairs(contributors) do
    redis.call('HINCRBY', '{ledger}:lifetime_spent', 'u:' .. c.user, c.coins)
    local prefix = '{ledger}:top:' .. creator
    redis.call('ZINCRBY', prefix .. ':all', c.coins, 'u:' .. c.user)
    redis.call('ZINCRBY', prefix .. ':day:' .. ARGV[10], c.coins, 'u:' .. c.user)
    redis.call('ZINCRBY', prefix .. ':week:' .. ARGV[11], c.coins, 'u:' .. c.user)
  end
  redis.call('HSET', pool_key, 'status', 'completed', 'closed_ms', now_ms)
  closed(id, ARGV[12])
end
return decide('accepted', '')
