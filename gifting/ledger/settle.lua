-- Settle a batch of gifts atomically and idempotently (called by gifting/ledger/store.py).
--
-- KEYS: 1 coin balances (hash), 2 diamond balances (hash), 3 journal (stream), 4 viewer spend limits (hash),
--   5 today's spend per viewer (hash), 6.. one record key per gift.
-- ARGV: 1 now_ms, 2 record ttl_s, 3 creator share bps, 4 global daily spend cap in coins (0: none),
--   5 earnings bucket (hour number, for the withdrawal hold), 6 UTC day (YYYYMMDD), 7 ISO week (YYYYWww),
--   then per gift (STRIDE values):
--   gift_id, viewer account, creator account, coins, diamonds, fingerprint, reject reason ('' = none),
--   room, gift, count.
-- Returns per gift: status, reason, coin balance after, replay (1 = decided earlier), the sender's lifetime
-- coins spent on gifts (for gifter levels).
--
-- Also, for fresh settlements only (so exactly once): lifetime spend per viewer, and each creator's top
-- gifters per day, week and all time (sorted sets by coins).
--
-- Each account's balance is read once and written once per batch, and system accounts get one HINCRBY per
-- batch: the per-gift work is one GET, one SET and one XADD.
local coins_key, diamonds_key, journal_key, limits_key, spent_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now_ms, ttl_s, bps, global_cap, hour = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local day, week = ARGV[6], ARGV[7]
local HEAD, STRIDE, FIRST_RECORD = 7, 10, 6
local lifetime, lifetime_dirty = {}, {}
local top = {}  -- creator -> viewer -> coins, applied once per pair per batch
local n = (#ARGV - HEAD) / STRIDE
local spent, caps = {}, {}

local balances, dirty = {}, {}
local platform_total, earnings_total = 0, 0
local diamonds_by_creator = {}
local out = {}

local function fmt(x) return string.format('%d', x) end

local function balance(account)
  local b = balances[account]
  if b == nil then
    b = tonumber(redis.call('HGET', coins_key, account) or '0')
    balances[account] = b
  end
  return b
end

-- A viewer's daily cap: the lower of the global cap and the viewer's own (0 or absent: none).
local function cap(account)
  local c = caps[account]
  if c == nil then
    c = global_cap
    local own = tonumber(redis.call('HGET', limits_key, account) or '0')
    if own > 0 and (c == 0 or own < c) then c = own end
    caps[account] = c
    spent[account] = tonumber(redis.call('HGET', spent_key, account) or '0')
  end
  return c
end

local function spent_ever(account)
  local v = lifetime[account]
  if v == nil then
    v = tonumber(redis.call('HGET', '{ledger}:lifetime_spent', account) or '0')
    lifetime[account] = v
  end
  return v
end

local function statement(account, kind, ledger, amount, counterpart, ref, gift, count)
  redis.call('XADD', '{ledger}:stmt:' .. account, '*', 'k', kind, 'l', ledger, 'a', amount, 'c', counterpart,
    'r', ref, 'g', gift, 'n', count, 't', now_ms)
end

for i = 0, n - 1 do
  local a = HEAD + i * STRIDE
  local gift_id, viewer, creator = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local coins, diamonds = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local fp, reject = ARGV[a + 6], ARGV[a + 7]
  local record_key = KEYS[FIRST_RECORD + i]
  local record = redis.call('GET', record_key)
  if record then
    local status, reason, bal, old_fp = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if old_fp ~= fp then
      out[#out + 1] = 'conflict'; out[#out + 1] = status
    else
      out[#out + 1] = status; out[#out + 1] = reason
    end
    out[#out + 1] = bal; out[#out + 1] = 1; out[#out + 1] = fmt(spent_ever(viewer))
  else
    local status, reason = 'settled', ''
    local bal = balance(viewer)
    if reject ~= '' then
      status, reason = 'rejected', reject
    elseif bal < coins then
      status, reason = 'rejected', 'insufficient_coins'
    elseif cap(viewer) > 0 and spent[viewer] + coins > caps[viewer] then
      status, reason = 'rejected', 'daily_limit'
    else
      bal = bal - coins
      if caps[viewer] > 0 then spent[viewer] = spent[viewer] + coins end
      balances[viewer] = bal
      dirty[viewer] = true
      local platform = coins - diamonds
      platform_total = platform_total + platform
      earnings_total = earnings_total + diamonds
      local legs = {}
      if platform > 0 then legs[#legs + 1] = 'coins ' .. viewer .. ' sys:platform_revenue ' .. fmt(platform) end
      if diamonds > 0 then
        legs[#legs + 1] = 'coins ' .. viewer .. ' sys:creator_earnings ' .. fmt(diamonds)
        legs[#legs + 1] = 'diamonds sys:diamond_issuance ' .. creator .. ' ' .. fmt(diamonds)
        diamonds_by_creator[creator] = (diamonds_by_creator[creator] or 0) + diamonds
      end
      lifetime[viewer] = spent_ever(viewer) + coins
      lifetime_dirty[viewer] = true
      top[creator] = top[creator] or {}
      top[creator][viewer] = (top[creator][viewer] or 0) + coins
      redis.call('XADD', journal_key, '*', 'kind', 'gift', 'id', gift_id, 'legs', table.concat(legs, '|'),
        'room', ARGV[a + 8], 'gift', ARGV[a + 9], 'count', ARGV[a + 10], 'bps', bps, 'ts', now_ms)
      statement(viewer, 'gift_sent', 'coins', -coins, creator, gift_id, ARGV[a + 9], ARGV[a + 10])
      if diamonds > 0 then
        statement(creator, 'gift_received', 'diamonds', diamonds, viewer, gift_id, ARGV[a + 9], ARGV[a + 10])
      end
    end
    redis.call('SET', record_key, status .. '|' .. reason .. '|' .. fmt(bal) .. '|' .. fp, 'EX', ttl_s)
    out[#out + 1] = status; out[#out + 1] = reason; out[#out + 1] = fmt(bal); out[#out + 1] = 0
    out[#out + 1] = fmt(spent_ever(viewer))
  end
end

local fields = {}
for account, _ in pairs(dirty) do
  fields[#fields + 1] = account
  fields[#fields + 1] = fmt(balances[account])
end
if #fields > 0 then redis.call('HSET', coins_key, unpack(fields)) end
local spent_fields = {}
for account, c in pairs(caps) do
  if c > 0 then
    spent_fields[#spent_fields + 1] = account
    spent_fields[#spent_fields + 1] = fmt(spent[account])
  end
end
if #spent_fields > 0 then
  redis.call('HSET', spent_key, unpack(spent_fields))
  redis.call('EXPIRE', spent_key, 172800)
end
if platform_total > 0 then redis.call('HINCRBY', coins_key, 'sys:platform_revenue', platform_total) end
if earnings_total > 0 then
  redis.call('HINCRBY', coins_key, 'sys:creator_earnings', earnings_total)
  redis.call('HINCRBY', diamonds_key, 'sys:diamond_issuance', -earnings_total)
  for creator, d in pairs(diamonds_by_creator) do
    redis.call('HINCRBY', diamonds_key, creator, d)
    -- Freshly earned diamonds are held back from withdrawal for a while (chargeback protection).
    redis.call('HINCRBY', '{ledger}:earned:' .. creator, hour, d)
  end
end
local lifetime_fields = {}
for account, _ in pairs(lifetime_dirty) do
  lifetime_fields[#lifetime_fields + 1] = account
  lifetime_fields[#lifetime_fields + 1] = fmt(lifetime[account])
end
if #lifetime_fields > 0 then redis.call('HSET', '{ledger}:lifetime_spent', unpack(lifetime_fields)) end
for creator, viewers in pairs(top) do
  local prefix = '{ledger}:top:' .. creator
  for viewer, coins in pairs(viewers) do
    redis.call('ZINCRBY', prefix .. ':all', coins, viewer)
    redis.call('ZINCRBY', prefix .. ':day:' .. day, coins, viewer)
    redis.call('ZINCRBY', prefix .. ':week:' .. week, coins, viewer)
  end
  redis.call('EXPIRE', prefix .. ':day:' .. day, 172800)
  redis.call('EXPIRE', prefix .. ':week:' .. week, 1209600)
end
return out
