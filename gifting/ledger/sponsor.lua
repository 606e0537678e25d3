-- Sponsored gifts: a campaign's budget pays for gifts viewers send free (called by gifting/ledger/campaigns.py).
-- legs.lua is prepended. Every key, account, leg and row comes from the caller (ledger/rules.py builds them).
-- Every call touches ONE ledger partition, the campaign's (keys.campaign_part): a campaign's id is chosen so its
-- budget lives in its brand's partition, so funding and the return are local; a sponsored gift's creator may
-- live in another partition, whose part of the gift (diamonds, statement row, earned hour) this script hands to
-- the partition's outbox as one credit line (rules.place_legs, rules.Credit; applied by Ledger.apply_credits).
--
-- op 'send' (one sponsored gift, idempotent by gift id like settle.lua: the same record buckets and format):
--   KEYS: 1 coin balances, 2 diamond balances, 3 journal, 4 the campaign (hash), 5 the campaign's per-viewer
--     counts of today (hash), 6 its per-room counts (hash), 7 the creators it reached (set), 8 the creator's
--     statement, 9 the creator's earnings by hour (8 and 9: the campaign hash again, unused, when the creator is
--     in another partition), 10 the partition's outbox, 11.. the settled-record buckets newest first (ARGV 17 of
--     them), then the rejected-record buckets newest first (ARGV 18 of them).
--   ARGV: 1 op, 2 now_ms, 3 gift id, 4 fingerprint, 5 reject reason decided by the caller ('' = none), 6 viewer
--     account, 7 creator account, 8 campaign account, 9 coins, 10 diamonds, 11 count (gifts), 12 this
--     partition's legs, 13 room, 14 gift, 15 creator share bps, 16 the creator's statement row ('' when the
--     creator is in another partition), 17 settled bucket count, 18 rejected bucket count, 19 settled bucket
--     expiry (unix s), 20 rejected bucket expiry (unix s), 21 earnings hour, 22 ttl of the per-viewer day counts
--     (s), 23 impressions (room viewers now), 24 campaign id, 25 the creator's partition tag ('' when local),
--     26 its credit line, 27 the viewer's coin balance as the caller read it in the viewer's own partition (a
--     sponsored gift does not change it; it is what the sender's result shows).
--   Returns {status, reason, the viewer's coin balance, replay 0|1, outbox entry id ('' when none written)}. The
--   window, the per-viewer daily limit, the per-room limit and the budget are checked here, atomically with the
--   debit: the budget never goes below zero.
-- op 'fund' (brand coins or an admin grant into the budget, idempotent by funding id; local to the partition):
--   KEYS: 1 coin balances, 2 journal, 3 the campaign, 4 the funding record, 5 the payer's statement (a grant: the
--     funding record again). ARGV: 1 op, 2 now_ms, 3 funding id, 4 fingerprint, 5 payer account ('' = grant),
--     6 coins, 7 legs, 8 statement row, 9 journal kind, 10 campaign id, 11 invoice ('' for brand coins),
--     12 campaign account.
--   Returns {code, budget balance}: ok | replay | idempotency_key_conflict | campaign_closed | insufficient_coins.
-- op 'close' (the unspent budget back to the brand, exactly once; local to the partition):
--   KEYS: 1 coin balances, 2 journal, 3 the campaign, 4 open campaigns of the partition (sorted set), 5 the
--   brand's statement.
--   ARGV: 1 op, 2 now_ms, 3 campaign id, 4 campaign account, 5 the budget as the caller read it, 6 legs, 7 the
--     brand's statement row, 8 '1': close before the end (the brand or an admin ends it early), 9 the return's
--     transfer id.
--   Returns {code, returned}: closed | already_closed | not_ended | stale (the budget moved since the caller read
--   it: read again and retry).
local coins_key = KEYS[1]
local op, now_ms = ARGV[1], tonumber(ARGV[2])
local function fmt(x) return string.format('%d', x) end

if op == 'send' then
  local diamonds_key, journal, campaign = KEYS[2], KEYS[3], KEYS[4]
  local viewer_day, rooms, creators, creator_stmt, earned = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
  local outbox = KEYS[10]
  local id, fp, reject, viewer, creator, budget = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local coins, diamonds, count = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local settled_n, rejected_n = tonumber(ARGV[17]), tonumber(ARGV[18])
  local balance = ARGV[27]
  for k = 11, 10 + settled_n + rejected_n do
    local record = redis.call('HGET', KEYS[k], id)
    if record then
      local status, reason, bal, old_fp = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
      if old_fp ~= fp then reason, status = status, 'conflict' end
      return {status, reason, bal, 1, ''}
    end
  end
  local c = redis.call('HMGET', campaign, 'status', 'start_ms', 'end_ms', 'viewer_day_max', 'room_max')
  local room = ARGV[13]
  if reject == '' then
    if c[1] ~= 'active' or now_ms >= tonumber(c[3]) then reject = 'campaign_ended'
    elseif now_ms < tonumber(c[2]) then reject = 'campaign_not_started'
    elseif tonumber(c[4]) > 0 and tonumber(redis.call('HGET', viewer_day, viewer) or '0') + count > tonumber(c[4]) then
      reject = 'sponsor_viewer_limit'
    elseif tonumber(c[5]) > 0 and tonumber(redis.call('HGET', rooms, room) or '0') + count > tonumber(c[5]) then
      reject = 'sponsor_room_limit'
    elseif tonumber(redis.call('HGET', coins_key, budget) or '0') < coins then reject = 'budget_exhausted'
    end
  end
  if reject ~= '' then
    redis.call('HSET', KEYS[11 + settled_n], id, 'rejected|' .. reject .. '|' .. balance .. '|' .. fp)
    redis.call('EXPIREAT', KEYS[11 + settled_n], ARGV[20])
    return {'rejected', reject, balance, 0, ''}
  end
  apply_legs({coins = coins_key, diamonds = diamonds_key}, ARGV[12])
  redis.call('XADD', journal, '*', 'kind', 'sponsored', 'id', id, 'legs', ARGV[12], 'room', room, 'gift', ARGV[14],
    'count', ARGV[11], 'bps', ARGV[15], 'campaign', ARGV[24], 'creator', creator, 'ts', ARGV[2])
  redis.call('HINCRBY', viewer_day, viewer, count)
  redis.call('EXPIRE', viewer_day, ARGV[22])
  redis.call('HINCRBY', rooms, room, count)
  redis.call('SADD', creators, creator)
  redis.call('HINCRBY', campaign, 'spent', coins)
  redis.call('HINCRBY', campaign, 'sends', count)
  redis.call('HINCRBY', campaign, 'impressions', tonumber(ARGV[23]))
  local outbox_id = ''
  if ARGV[25] ~= '' then
    outbox_id = redis.call('XADD', outbox, '*', ARGV[25], ARGV[26]) -- the creator's part, applied once there
  elseif diamonds > 0 then
    redis.call('RPUSH', creator_stmt, ARGV[16])
    redis.call('HINCRBY', earned, ARGV[21], diamonds) -- freshly earned diamonds are held back like any gift's
  end
  redis.call('HSET', KEYS[11], id, 'settled||' .. balance .. '|' .. fp)
  redis.call('EXPIREAT', KEYS[11], ARGV[19])
  return {'settled', '', balance, 0, outbox_id}
end

if op == 'fund' then
  local journal, campaign, record, stmt = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local payer, coins, budget_id, budget = ARGV[5], tonumber(ARGV[6]), ARGV[10], ARGV[12]
  local old_fp = redis.call('HGET', record, 'fp')
  if old_fp then
    if old_fp ~= ARGV[4] then return {'idempotency_key_conflict', '0'} end
    return {'replay', redis.call('HGET', coins_key, budget) or '0'}
  end
  local c = redis.call('HMGET', campaign, 'status', 'end_ms')
  if c[1] ~= 'active' or now_ms >= tonumber(c[2]) then return {'campaign_closed', '0'} end
  if payer ~= '' and tonumber(redis.call('HGET', coins_key, payer) or '0') < coins then
    return {'insufficient_coins', redis.call('HGET', coins_key, budget) or '0'}
  end
  apply_legs({coins = coins_key}, ARGV[7])
  redis.call('XADD', journal, '*', 'kind', ARGV[9], 'id', ARGV[3], 'legs', ARGV[7], 'ref', budget_id,
    'invoice', ARGV[11], 'ts', ARGV[2])
  redis.call('HINCRBY', campaign, 'funded', coins)
  if payer ~= '' then redis.call('RPUSH', stmt, ARGV[8]) end
  redis.call('HSET', record, 'fp', ARGV[4], 'campaign', budget_id, 'coins', ARGV[6], 'payer', payer,
    'invoice', ARGV[11], 'ts', ARGV[2])
  return {'ok', redis.call('HGET', coins_key, budget) or '0'}
end

if op == 'close' then
  local journal, campaign, open_key, stmt = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local id, budget = ARGV[3], ARGV[4]
  local c = redis.call('HMGET', campaign, 'status', 'end_ms', 'returned')
  if c[1] ~= 'active' then return {'already_closed', c[3] or '0'} end
  if ARGV[8] ~= '1' and now_ms < tonumber(c[2]) then return {'not_ended', '0'} end
  local remaining = redis.call('HGET', coins_key, budget) or '0'
  if remaining ~= ARGV[5] then return {'stale', remaining} end
  if tonumber(remaining) > 0 then
    apply_legs({coins = coins_key}, ARGV[6])
    redis.call('XADD', journal, '*', 'kind', 'campaign_return', 'id', ARGV[9], 'legs', ARGV[6],
      'ref', id, 'ts', ARGV[2])
    redis.call('RPUSH', stmt, ARGV[7])
  end
  redis.call('HSET', campaign, 'status', 'closed', 'returned', remaining, 'closed_ms', ARGV[2])
  redis.call('ZREM', open_key, id)
  return {'closed', remaining}
end

return redis.error_reply('sponsor: unknown op ' .. tostring(op))
