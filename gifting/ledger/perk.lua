-- Perks bought with coins (called by gifting/ledger/perks.py): a highlighted message, an entrance effect, a
-- premium-stream ticket. One transfer chain per purchase, idempotent by its user-scoped id, counted against
-- the daily spend cap (spend_cap.lua, prepended with legs.lua), and what it grants written in the same call.
-- The legs, rows, accounts and the entrance's duration come from the caller (ledger/rules.py). Like a gift
-- (settle.lua), a perk is paid wholly with reward coins when they cover its price (rules.pays_with_rewards),
-- else wholly with bought coins: the caller builds both leg sets and this script picks one; reward-paid ones
-- do not count toward the spend cap (it measures money spent).
-- Every call touches ONE ledger partition, the buyer's (the grant, the record, the spend cap are theirs). When the
-- room's creator lives in another partition, the creator's part (diamonds, statement row) is one credit line
-- the caller built (rules.place_legs, rules.Credit) and this script adds to the partition's outbox with the
-- transfer; Ledger.apply_credits applies it there once. Both leg sets give the creator the same part.
--
-- 'buy' KEYS: 1 coin balances, 2 diamond balances, 3 journal, 4 purchase record (hash), 5 viewer spend limits,
--   6 today's spend per viewer, 7 the viewer's statement, 8 the creator's statement (the purchase record again,
--   unused, when the creator is in another partition), 9 what it grants: the entrances hash (entrance), the
--   room's tickets hash (ticket), else the purchase record, 10 the room's end marker in this partition
--   (perks.refund_tickets sets it in every partition before it refunds tickets: no purchase settles in a room
--   after it), 11 reward coin balances, 12 the partition's outbox.
-- 'buy' ARGV: 1 op, 2 now_ms, 3 purchase id, 4 fingerprint, 5 viewer account, 6 coins, 7 legs (rules.perk_legs),
--   8 the viewer's statement row, 9 the creator's row ('' when no diamonds), 10 global daily spend cap in coins
--   (0: none), 11 spend total ttl_s, 12 record ttl_s (0: kept, a ticket's until its stream ends), 13 kind
--   (highlight | entrance | ticket), 14 duration ms (highlight: the pin; entrance: what it adds), 15 creator
--   share bps, 16 legs when paid with reward coins (rules.perk_legs with_rewards), 17 the viewer's statement row
--   then, 18 a reject reason decided by the caller ('': none; archive_backlog), recorded like the script's own,
--   19 the creator's partition tag ('' when local or nothing is owed), 20 its credit line, 21.. the record's
--   field/value pairs (perk, room, creator, diamonds, message, ...).
-- 'refund' KEYS: 1 coin balances, 2 diamond balances, 3 journal, 4 purchase record, 5 the room's tickets hash
--   of this partition, 6 the viewer's statement, 7 the creator's statement (the record again when the creator
--   is in another partition), 8 reward coin balances, 9 the partition's outbox.
-- 'refund' ARGV: 1 op, 2 now_ms, 3 purchase id, 4 transfer id, 5 viewer account, 6 this partition's legs
--   (rules.perk_refund_legs placed: reward coins back for a reward-paid ticket), 7 the viewer's row, 8 the
--   creator's row ('' when no diamonds or the creator is in another partition), 9 what the caller read the
--   ticket was paid with (coins | rewards), 10 the creator's partition tag ('' when local), 11 its credit line
--   (the creator gives the diamonds back there).
-- Returns {status, reason, coin balance, replay (1: decided earlier), until_ms, paid with (coins | rewards | ''),
--   outbox entry id ('' when none written)};
--   status: settled | rejected | conflict | refunded | noop (a refund of a purchase not settled, or refunded
--   already: nothing moves).
local op, now_ms = ARGV[1], tonumber(ARGV[2])
local coins_key, diamonds_key, journal, record_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function fmt(x) return string.format('%d', x) end
local function balance_of(account) return tonumber(redis.call('HGET', coins_key, account) or '0') end

if op == 'refund' then
  local status, viewer, paid_with = unpack(redis.call('HMGET', record_key, 'status', 'viewer', 'paid_with'))
  if status ~= 'settled' then return {'noop', status or 'unknown_perk', fmt(balance_of(ARGV[5])), 1, '0', '', ''} end
  assert(viewer == ARGV[5] and (paid_with or 'coins') == ARGV[9],
    'perk refund: the legs do not match the purchase record')
  apply_legs({coins = coins_key, diamonds = diamonds_key, rewards = KEYS[8]}, ARGV[6])
  redis.call('XADD', journal, '*', 'kind', 'perk_refund', 'id', ARGV[4], 'ref', ARGV[3], 'legs', ARGV[6],
    'ts', ARGV[2])
  redis.call('RPUSH', KEYS[6], ARGV[7])
  if ARGV[8] ~= '' then redis.call('RPUSH', KEYS[7], ARGV[8]) end
  redis.call('HSET', record_key, 'status', 'refunded', 'refunded_ms', ARGV[2])
  redis.call('HSET', KEYS[5], ARGV[5], '')
  local outbox_id = ''
  if ARGV[10] ~= '' then outbox_id = redis.call('XADD', KEYS[9], '*', ARGV[10], ARGV[11]) end
  return {'refunded', '', fmt(balance_of(ARGV[5])), 0, '0', ARGV[9], outbox_id}
end

local viewer, coins, kind, grant_key = ARGV[5], tonumber(ARGV[6]), ARGV[13], KEYS[9]
local stored = redis.call('HMGET', record_key, 'fp', 'status', 'reason', 'until_ms', 'viewer', 'paid_with')
if stored[1] then
  if stored[1] ~= ARGV[4] or stored[5] ~= viewer then
    return {'conflict', 'perk_id_conflict', fmt(balance_of(viewer)), 1, '0', '', ''}
  end
  return {stored[2], stored[3], fmt(balance_of(viewer)), 1, stored[4], stored[6] or '', ''}
end

local function decided(status, reason, until_ms, ttl_s, paid_with, outbox_id)
  redis.call('HSET', record_key, 'fp', ARGV[4], 'status', status, 'reason', reason, 'until_ms', until_ms,
    'viewer', viewer, 'kind', kind, 'coins', ARGV[6], 'ts', ARGV[2], 'paid_with', paid_with, unpack(ARGV, 21))
  if ttl_s > 0 then redis.call('EXPIRE', record_key, ttl_s) end
  return {status, reason, fmt(balance_of(viewer)), 0, until_ms, paid_with, outbox_id}
end

local refused, balance = nil, balance_of(viewer)
-- rules.pays_with_rewards: reward coins first, a whole price at a time, never while in chargeback debt.
local with_rewards = coins > 0 and balance >= 0 and
  tonumber(redis.call('HGET', KEYS[11], viewer) or '0') >= coins
if ARGV[18] ~= '' then
  refused = ARGV[18]
elseif redis.call('EXISTS', KEYS[10]) == 1 then
  refused = 'room_not_live'
elseif kind == 'ticket' and (redis.call('HGET', grant_key, viewer) or '') ~= '' then
  refused = 'ticket_held'
elseif with_rewards then
  refused = nil
elseif balance < coins then
  refused = 'insufficient_coins'
elseif not spend_cap_allows(spend_cap(tonumber(ARGV[10]), redis.call('HGET', KEYS[5], viewer), now_ms),
    tonumber(redis.call('HGET', KEYS[6], viewer) or '0'), coins) then
  refused = 'daily_limit'
end
-- A refusal is remembered like a settled purchase (a failed id stays failed: a retry needs a new id).
if refused then return decided('rejected', refused, '0', math.max(tonumber(ARGV[12]), 86400), '', '') end

local legs, viewer_row, paid_with = ARGV[7], ARGV[8], 'coins'
if with_rewards then
  legs, viewer_row, paid_with = ARGV[16], ARGV[17], 'rewards'
else
  redis.call('HINCRBY', KEYS[6], viewer, coins)
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[11]))
end
apply_legs({coins = coins_key, diamonds = diamonds_key, rewards = KEYS[11]}, legs)
redis.call('XADD', journal, '*', 'kind', 'perk', 'id', ARGV[3], 'perk', kind, 'legs', legs, 'bps', ARGV[15],
  'ts', ARGV[2])
redis.call('RPUSH', KEYS[7], viewer_row)
if ARGV[9] ~= '' then redis.call('RPUSH', KEYS[8], ARGV[9]) end
local outbox_id = ''
if ARGV[19] ~= '' then outbox_id = redis.call('XADD', KEYS[12], '*', ARGV[19], ARGV[20]) end

local until_ms = 0
if kind == 'entrance' then
  -- rules.entrance_until_ms: a purchase while one runs extends it.
  until_ms = math.max(tonumber(redis.call('HGET', grant_key, viewer) or '0'), now_ms) + tonumber(ARGV[14])
  redis.call('HSET', grant_key, viewer, fmt(until_ms))
elseif kind == 'ticket' then
  redis.call('HSET', grant_key, viewer, ARGV[3])
else
  until_ms = now_ms + tonumber(ARGV[14])
end
return decided('settled', '', fmt(until_ms), tonumber(ARGV[12]), paid_with, outbox_id)
