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
-- The legs, statement rows and account names come from the caller (ledger/rules.py); so do the contributors'
-- accounts. The caller builds them from the pool as it read it and passes the contributors it read: if they
-- changed since (another pledge landed), the script writes nothing and answers 'stale', and the caller reads
-- again and retries.
--
-- KEYS: 1 coin balances, 2 diamond balances, 3 journal, 4 pool (hash), 5 open pools (sorted set by deadline),
--   6 pledge record (pledge), the closed pools not yet archived (expire | cancel | void: sorted set by when
--   closed; the archiver copies each to PostgreSQL), any key of the slot (open); 7 the room's open pools (set),
--   8 the opener's open pools (set), 9 the room's end marker (hash: '*' -> ended ms, pool id -> 1 for each pool
--   voided by the end; its existence closes the room to new pools and pledges);
--   pledge adds: 10 viewer spend limits, 11 today's spend per viewer (the daily spend cap of spend_cap.lua,
--   shared with gifts), 12 lifetime spend per viewer, 13 the pledger's statement, 14 the creator's statement,
--   15 the creator's earnings by hour, 16..18 the creator's top-gifter boards (all, day, week), 19 the closed
--   pools not yet archived (as KEYS 6 of the other operations);
--   expire | cancel | void add: 10.. the statement of each contributor, in the order of ARGV 5.. .
-- ARGV 'pledge': 1 op, 2 now_ms, 3 pledge id, 4 account, 5 coins, 6 fingerprint, 7 display name, 8 record ttl_s,
--   9 earnings hour, 10 user id, 11 the contributors as the caller read them, 12 pool record ttl_s, 13 global
--   daily spend cap in coins (0: none), 14 spend total ttl_s, 15 rejected record ttl_s (a rejection is
--   remembered briefly; an accepted pledge for the full ttl_s), 16 the creator's account, 17 the pledge's legs,
--   18 the pledger's statement row; when this pledge completes the pool: 19 the completion's legs, 20 the
--   creator's statement row, 21 the creator's diamonds, 22 every contributor's coins ('account coins|...'),
--   23 and 24 how long a day's and a week's top-gifter board is kept (s); 25 a reject reason decided by the
--   caller ('' : none; archive_backlog), recorded like the script's own.
-- ARGV 'expire' | 'cancel' | 'void': 1 op, 2 now_ms, 3 pool record ttl_s, 4 the contributors as the caller read
--   them, 5 the legs returning every pledge, 6.. each contributor's statement row.
-- ARGV 'open': 1 op, 2 now_ms, 3 pool id, 4 room cap, 5 opener cap, 6 opener account, 7 coins an opener needs,
--   8.. the record's field/value pairs.
-- Returns {status, reason, balance, replay, pool JSON}; status: accepted | rejected | conflict | expired |
--   cancelled | voided | opened | noop | stale. Opening a pool moves no money; its refusals are the HTTP error
--   codes of rooms/pools.py, not reject reasons.
local coins_key, diamonds_key, journal, pool_key, open_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, now_ms = ARGV[1], ARGV[2]
local function fmt(x) return string.format('%d', x) end
local balance_keys = {coins = coins_key, diamonds = diamonds_key}

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

local room_pools_key, opener_pools_key, ended_key = KEYS[7], KEYS[8], KEYS[9]

-- Leave the open-pool indexes and let the record expire: the pool is closed for good.
local function closed(id, ttl_s, closed_key)
  redis.call('ZREM', open_key, id)
  redis.call('SREM', room_pools_key, id)
  redis.call('SREM', opener_pools_key, id)
  redis.call('EXPIRE', pool_key, ttl_s)
  redis.call('ZADD', closed_key, now_ms, id)
end

if op == 'open' then
  local refused = nil
  if redis.call('EXISTS', ended_key) == 1 then refused = 'room_not_live'
  elseif redis.call('SCARD', room_pools_key) >= tonumber(ARGV[4]) then refused = 'too_many_pools'
  elseif redis.call('SCARD', opener_pools_key) >= tonumber(ARGV[5]) then refused = 'too_many_open_pools'
  elseif tonumber(redis.call('HGET', coins_key, ARGV[6]) or '0') < tonumber(ARGV[7]) then
    refused = 'pool_opener_coins'
  end
  if refused then return {'rejected', refused, '0', 0, ''} end
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
  if pool[8] ~= ARGV[4] then return {'stale', '', '0', 0, ''} end
  local legs = ARGV[5]
  if legs ~= '' then
    apply_legs(balance_keys, legs)
    redis.call('XADD', journal, '*', 'kind', 'pool_voided', 'id', id, 'status', final, 'legs', legs, 'ts', now_ms)
  end
  for i = 10, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[i - 4]) end
  redis.call('HSET', pool_key, 'status', final, 'closed_ms', now_ms)
  if op == 'void' then redis.call('HSET', ended_key, id, 1) end
  closed(id, ARGV[3], KEYS[6])
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
if ARGV[25] ~= '' then return decide('rejected', ARGV[25]) end
if not id then return decide('rejected', 'unknown_pool') end
local CLOSED = {completed = 'pool_completed', expired = 'pool_expired', cancelled = 'pool_cancelled',
  voided = 'pool_voided'}
if status ~= 'open' then return decide('rejected', CLOSED[status]) end
if redis.call('EXISTS', ended_key) == 1 then return decide('rejected', 'room_not_live') end
if tonumber(now_ms) >= deadline then return decide('rejected', 'pool_expired') end
if account == ARGV[16] then return decide('rejected', 'self_gift') end
if coins > price - pledged then return decide('rejected', 'pledge_exceeds_remaining') end
if balance < coins then return decide('rejected', 'insufficient_coins') end
local spent_today = tonumber(redis.call('HGET', KEYS[11], account) or '0')
local cap = spend_cap(tonumber(ARGV[13]), redis.call('HGET', KEYS[10], account), tonumber(now_ms))
if not spend_cap_allows(cap, spent_today, coins) then return decide('rejected', 'daily_limit') end
if pool[8] ~= ARGV[11] then return {'stale', '', '0', 0, ''} end
redis.call('HSET', KEYS[11], account, fmt(spent_today + coins))
redis.call('EXPIRE', KEYS[11], ARGV[14])

balance = balance - coins
apply_legs(balance_keys, ARGV[17])
redis.call('XADD', journal, '*', 'kind', 'pledge_pending', 'id', pledge_id, 'ref', id, 'legs', ARGV[17], 'ts', now_ms)
redis.call('RPUSH', KEYS[13], ARGV[18])
local contributors = cjson.decode(pool[8])
local user = ARGV[10]
local merged = false
for _, c in ipairs(contributors) do
  if c.user == user then c.coins = c.coins + coins; merged = true end
end
if not merged then contributors[#contributors + 1] = {user = user, name = ARGV[7], coins = coins} end
pledged = pledged + coins
redis.call('HSET', pool_key, 'pledged', pledged, 'contributors', cjson.encode(contributors))

if pledged == price then
  -- Post every pledge: the escrow pays the gift, split like any gift (the caller's legs).
  local legs = ARGV[19]
  assert(legs ~= '', 'pool: the pledge completes the pool but the caller sent no completion legs')
  apply_legs(balance_keys, legs)
  redis.call('HINCRBY', KEYS[15], ARGV[9], ARGV[21])
  redis.call('XADD', journal, '*', 'kind', 'pool_completed', 'id', id, 'legs', legs,
    'room', pool[10], 'gift', pool[9], 'bps', pool[7], 'ts', now_ms)
  redis.call('RPUSH', KEYS[14], ARGV[20])
  local by_gifter = {}
  for gifter, amount in string.gmatch(ARGV[22], '([^ |]+) (%d+)') do
    by_gifter[gifter] = tonumber(amount)
    redis.call('HINCRBY', KEYS[12], gifter, amount)
  end
  local ttls = {0, ARGV[23], ARGV[24]}
  for i = 1, 3 do top_gifters_add(KEYS[15 + i], ttls[i], by_gifter) end
  redis.call('HSET', pool_key, 'status', 'completed', 'closed_ms', now_ms)
  closed(id, ARGV[12], KEYS[19])
end
return decide('accepted', '')
