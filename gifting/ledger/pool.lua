-- Pooled gifts, in the POOL's partition (its room's creator's): opening, a pledge landing, and the pool's end
-- (called by gifting/ledger/store.py; the pledger's side of a pledge is pledge.lua).
--
-- A pledge is debited to sys:transit in its pledger's partition first (pledge.lua 'debit'); 'land' then moves
-- it from transit into this partition's sys:pool_escrow if the pool is open, its room not ended and the pledge
-- fits, or records it refused (the pledger's partition gives the coins back: pledge.lua 'finish'). Either way
-- exactly once, by the user-scoped pledge id, whoever calls (the pledge's caller, the redrive). When the pledges
-- reach the price the pool completes in the same call: the escrow pays the gift like settle.lua does (platform
-- share, creator share as diamonds: the creator lives in this partition). An incomplete pool is voided at its
-- deadline (expired), by its opener, the creator or an admin (cancelled), or when its room ends (voided): every
-- pledge goes back, to contributors of other partitions through sys:transit and an outbox credit (applied there
-- by credit.lua). A pool's status moves open -> completed | expired | cancelled | voided exactly once.
--
-- The legs, statement rows, credits and account names come from the caller (ledger/rules.py), built from the
-- pool as it read it; it passes the contributors it read: if they changed since (another pledge landed) and
-- they matter (a pool's end, a completion), the script writes nothing and answers 'stale', and the caller reads
-- again and retries.
--
-- KEYS: 1 coin balances, 2 diamond balances, 3 journal, 4 pool (hash), 5 open pools (sorted set by deadline),
--   6 pledge landing record (land), the closed pools not yet archived (expire | cancel | void: sorted set by
--   when closed; the archiver copies each to PostgreSQL), any key of the slot (open); 7 the room's open pools
--   (set), 8 the opener's open pools (set), 9 the room's end marker (hash: '*' -> ended ms, pool id -> 1 for each
--   pool voided by the end; its existence closes the room to new pools and pledges);
--   land adds: 10 the creator's statement, 11 the creator's earnings by hour, 12..14 the creator's top-gifter
--   boards (all, day, week), 15 the closed pools not yet archived;
--   expire | cancel | void add: 10 the partition's outbox, 11.. the statement of each contributor of this
--   partition, in the order of their rows.
-- ARGV 'land': 1 op, 2 now_ms, 3 pledge id (user-scoped), 4 account, 5 coins, 6 display name, 7 landing record
--   ttl_s, 8 earnings hour, 9 user id, 10 the contributors as the caller read them, 11 pool record ttl_s, 12 the
--   creator's account, 13 the landing's legs; when this pledge completes the pool: 14 the completion's legs,
--   15 the creator's statement row, 16 the creator's diamonds, 17 every contributor's coins ('account
--   coins|...'), 18 and 19 how long a day's and a week's top-gifter board is kept (s).
-- ARGV 'expire' | 'cancel' | 'void': 1 op, 2 now_ms, 3 pool record ttl_s, 4 the contributors as the caller read
--   them, 5 this partition's legs returning every pledge, 6 n: the statement rows of this partition's
--   contributors, 7..6+n those rows, then the outbox entry's field/value pairs (destination tag, credit lines).
-- ARGV 'open': 1 op, 2 now_ms, 3 pool id, 4 room cap, 5 opener cap, 6 '1' if the opener holds enough coins
--   (read in the opener's partition), 7.. the record's field/value pairs.
-- Returns {status, reason, balance, replay, pool JSON, outbox entry id}; status: accepted | rejected | expired |
--   cancelled | voided | opened | noop | stale. Opening a pool moves no money; its refusals are the HTTP error
--   codes of rooms/pools.py, not reject reasons.
local coins_key, diamonds_key, journal, pool_key, open_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, now_ms = ARGV[1], ARGV[2]
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
  elseif ARGV[6] ~= '1' then refused = 'pool_opener_coins'
  end
  if refused then return {'rejected', refused, '0', 0, '', ''} end
  redis.call('HSET', pool_key, unpack(ARGV, 7))
  redis.call('ZADD', open_key, redis.call('HGET', pool_key, 'deadline_ms'), ARGV[3])
  redis.call('SADD', room_pools_key, ARGV[3])
  redis.call('SADD', opener_pools_key, ARGV[3])
  return {'opened', '', '0', 0, snapshot(), ''}
end

local pool = redis.call('HMGET', pool_key, 'id', 'status', 'price', 'pledged', 'deadline_ms', 'creator', 'bps',
  'contributors', 'gift', 'room')
local id, status, price, pledged, deadline = pool[1], pool[2], tonumber(pool[3]), tonumber(pool[4]), tonumber(pool[5])

-- Void an open pool: every pledge goes back. expire: past its deadline; cancel: by its opener, the creator or
-- an admin (checked by the caller); void: its room ended.
if op == 'expire' or op == 'cancel' or op == 'void' then
  local final = ({expire = 'expired', cancel = 'cancelled', void = 'voided'})[op]
  if not id or status ~= 'open' or (op == 'expire' and tonumber(now_ms) < deadline) then
    return {'noop', status or '', '0', 0, snapshot(), ''}
  end
  if pool[8] ~= ARGV[4] then return {'stale', '', '0', 0, '', ''} end
  local legs = ARGV[5]
  if legs ~= '' then
    apply_legs(balance_keys, legs)
    redis.call('XADD', journal, '*', 'kind', 'pool_voided', 'id', id, 'status', final, 'legs', legs, 'ts', now_ms)
  end
  local n = tonumber(ARGV[6])
  for i = 1, n do redis.call('RPUSH', KEYS[10 + i], ARGV[6 + i]) end
  local outbox_id = ''
  if #ARGV > 6 + n then outbox_id = redis.call('XADD', KEYS[10], '*', unpack(ARGV, 7 + n)) end
  redis.call('HSET', pool_key, 'status', final, 'closed_ms', now_ms)
  if op == 'void' then redis.call('HSET', ended_key, id, 1) end
  closed(id, ARGV[3], KEYS[6])
  return {final, '', '0', 0, snapshot(), outbox_id}
end

-- land
local record_key, pledge_id, account, coins = KEYS[6], ARGV[3], ARGV[4], tonumber(ARGV[5])
local landed = redis.call('GET', record_key)
if landed then
  if landed == 'accepted' then return {'accepted', '', '0', 1, snapshot(), ''} end
  return {'rejected', landed, '0', 1, snapshot(), ''}
end
-- status is always 'rejected': written out at each call so tests/test_lua_scripts.py sees every reason.
local function refused(status, reason)
  redis.call('SET', record_key, reason, 'EX', ARGV[7])
  return {status, reason, '0', 0, snapshot(), ''}
end
if not id then return refused('rejected', 'unknown_pool') end
local CLOSED = {completed = 'pool_completed', expired = 'pool_expired', cancelled = 'pool_cancelled',
  voided = 'pool_voided'}
if status ~= 'open' then return refused('rejected', CLOSED[status]) end
if redis.call('EXISTS', ended_key) == 1 then return refused('rejected', 'room_not_live') end
if tonumber(now_ms) >= deadline then return refused('rejected', 'pool_expired') end
if account == ARGV[12] then return refused('rejected', 'self_gift') end
if coins > price - pledged then return refused('rejected', 'pledge_exceeds_remaining') end
-- Only the completion is built from the contributors as read (every gifter's coins for the boards): a pledge
-- that does not complete the pool lands whatever landed since, so pledges to one pool do not retry each other.
if pledged + coins == price and pool[8] ~= ARGV[10] then return {'stale', '', '0', 0, '', ''} end

apply_legs(balance_keys, ARGV[13])
redis.call('XADD', journal, '*', 'kind', 'pledge_pending', 'id', pledge_id, 'ref', id, 'account', account,
  'legs', ARGV[13], 'ts', now_ms)
local contributors = cjson.decode(pool[8])
local user = ARGV[9]
local merged = false
for _, c in ipairs(contributors) do
  if c.user == user then c.coins = c.coins + coins; merged = true end
end
if not merged then contributors[#contributors + 1] = {user = user, name = ARGV[6], coins = coins} end
pledged = pledged + coins
redis.call('HSET', pool_key, 'pledged', pledged, 'contributors', cjson.encode(contributors))

if pledged == price then
  -- Post every pledge: the escrow pays the gift, split like any gift (the caller's legs).
  local legs = ARGV[14]
  assert(legs ~= '', 'pool: the pledge completes the pool but the caller sent no completion legs')
  apply_legs(balance_keys, legs)
  redis.call('HINCRBY', KEYS[11], ARGV[8], ARGV[16])
  redis.call('XADD', journal, '*', 'kind', 'pool_completed', 'id', id, 'legs', legs,
    'room', pool[10], 'gift', pool[9], 'bps', pool[7], 'ts', now_ms)
  redis.call('RPUSH', KEYS[10], ARGV[15])
  local by_gifter = {}
  for gifter, amount in string.gmatch(ARGV[17], '([^ |]+) (%d+)') do by_gifter[gifter] = tonumber(amount) end
  local ttls = {0, ARGV[18], ARGV[19]}
  for i = 1, 3 do top_gifters_add(KEYS[11 + i], ttls[i], by_gifter) end
  redis.call('HSET', pool_key, 'status', 'completed', 'closed_ms', now_ms)
  closed(id, ARGV[11], KEYS[15])
end
redis.call('SET', record_key, 'accepted', 'EX', ARGV[7])
return {'accepted', '', '0', 0, snapshot(), ''}
