-- Append events to one room's history exactly once, derive the room's live state from them, and publish
-- (called through gifting/rooms/store.py RoomStore.announce by the settlement worker and the web process).
--
-- KEYS: 1 room meta (hash), 2 history (stream), 3 stats (hash), 4 stream top gifters (sorted set),
--   5 goal (hash), 6.. the announced-marker buckets (hashes: dedupe id -> 1), newest (this call's) first, then
--   the key of each combo the events continue (strings: 'first gift id|running count'), in the order of their
--   combo ids in ARGV.
-- ARGV: 1 room channel ('{...}': a shard channel), 2 history length kept (events, approximate), 3 epoch candidate (used only when the
--   room has no epoch: its history was lost), 4 combo window ms, 5 unix time (s) at which this call's marker
--   bucket expires, 6 n = number of events, then n values, tab-separated: dedupe id, coins, diamonds, gift id,
--   count, contributors ('user coins|user coins' or ''), combo key ('sender:gift', or '' for events that do
--   not combo); then the n events as JSON objects (no offset, no combo); then the ended room TTL (s), the
--   number of marker buckets, and the distinct combo ids of the events, one per combo key.
--
-- The events one call appends are stored and published once, as one announcement (rooms.announced_events
-- reads it): {"from": offset of the first, "combos": [[index, combo id, count], ...], "events": [...]}; the
-- history entry's id is the offset of the last, and history is trimmed by offset (MINID). So the script
-- copies no event text and makes one XADD per call: inside Valkey each redis.call and each string built per
-- gift costs microseconds, and that bounds the worker's throughput.
--
-- Everything derived here (offsets, combos, stats, top gifters, goal progress and completion) happens once
-- per event, because the markers admit each event once and the script is atomic. Goal events are appended
-- to the history too, so a resuming client sees them like any other event.
-- Returns the number of events appended.
local meta, history, stats, top, goal = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local FIRST_BUCKET = 6
local channel, keep, window_ms, bucket_expire_at = ARGV[1], tonumber(ARGV[2]), ARGV[4], ARGV[5]
local n = tonumber(ARGV[6])
local HEAD = 6
local LAST_BUCKET = FIRST_BUCKET + tonumber(ARGV[HEAD + 2 * n + 2]) - 1
local combo_keys = {} -- combo id -> its key
for k = LAST_BUCKET + 1, #KEYS do combo_keys[ARGV[HEAD + 2 * n + 2 + k - LAST_BUCKET]] = KEYS[k] end

if redis.call('HSETNX', meta, 'epoch', ARGV[3]) == 1 then
  redis.call('HSET', meta, 'offset', 0)
  redis.call('DEL', history)
end

local events, ids = {}, {}
for i = 1, n do
  local id, coins, diamonds, gift, count, contributors, combo =
    string.match(ARGV[HEAD + i], '^([^\t]*)\t(%d+)\t(%d+)\t([^\t]*)\t(%d+)\t([^\t]*)\t([^\t]*)$')
  if not id then return redis.error_reply('announce: malformed event argument ' .. i) end
  events[i] = {id = id, coins = tonumber(coins), diamonds = tonumber(diamonds), gift = gift, count = tonumber(count),
    contributors = contributors, combo = combo, json = ARGV[HEAD + n + i]}
  ids[i] = id
end

local seen = {}
for k = FIRST_BUCKET, LAST_BUCKET do
  local found = redis.call('HMGET', KEYS[k], unpack(ids))
  for i, v in ipairs(ids) do
    if found[i] then seen[v] = true end
  end
end

local offset = tonumber(redis.call('HGET', meta, 'offset') or '0')
local appended, combo_marks, markers = {}, {}, {}
local g = redis.call('HMGET', goal, 'status', 'kind', 'gift', 'progress', 'target')
local goal_active = g[1] == 'active'
local goal_progress = tonumber(g[4] or '0')
local goal_moved = false
local gifts, coins_total, diamonds_total = 0, 0, 0
local combos, gifters = {}, {} -- combo key -> {id, total} (written once at the end); user -> coins

for _, e in ipairs(events) do
  if not seen[e.id] then
    seen[e.id] = true -- the same id twice in one call is appended once
    markers[#markers + 1] = e.id
    markers[#markers + 1] = '1'
    appended[#appended + 1] = e.json
    if e.combo ~= '' then
      -- Same sender, same gift, within the window: one combo with a running count (its id: the first gift's).
      local c = combos[e.combo]
      if c == nil then
        local current = redis.call('GET', combo_keys[e.combo])
        if current then
          local id, total = string.match(current, '^(.*)|(%d+)$')
          c = {id = id, total = tonumber(total)}
        else
          c = {id = e.id, total = 0}
        end
        combos[e.combo] = c
      end
      c.total = c.total + e.count
      combo_marks[#combo_marks + 1] = '[' .. (#appended - 1) .. ',' .. cjson.encode(c.id) .. ',' .. c.total .. ']'
    end
    if e.coins > 0 then
      gifts, coins_total, diamonds_total = gifts + 1, coins_total + e.coins, diamonds_total + e.diamonds
    end
    for user, amount in string.gmatch(e.contributors, '([^ |]+) (%d+)') do
      gifters[user] = (gifters[user] or 0) + tonumber(amount)
    end
    if goal_active then
      if g[2] == 'diamonds' then
        goal_progress = goal_progress + e.diamonds
        goal_moved = goal_moved or e.diamonds > 0
      elseif g[2] == 'gift' and e.gift == g[3] then
        goal_progress = goal_progress + e.count
        goal_moved = true
      end
    end
  end
end

if #markers > 0 then
  redis.call('HSET', KEYS[FIRST_BUCKET], unpack(markers))
  redis.call('EXPIREAT', KEYS[FIRST_BUCKET], bucket_expire_at)
end
for key, c in pairs(combos) do
  redis.call('SET', combo_keys[key], c.id .. '|' .. c.total, 'PX', window_ms)
end
local users = {}
for user, _ in pairs(gifters) do users[#users + 1] = user end
if #users > 0 then
  local scores, args = redis.call('ZMSCORE', top, unpack(users)), {}
  for i, user in ipairs(users) do
    args[#args + 1] = string.format('%d', tonumber(scores[i] or '0') + gifters[user])
    args[#args + 1] = user
  end
  redis.call('ZADD', top, unpack(args))
end
if gifts > 0 then
  redis.call('HINCRBY', stats, 'gifts', gifts)
  redis.call('HINCRBY', stats, 'coins', coins_total)
  redis.call('HINCRBY', stats, 'diamonds', diamonds_total)
end
if goal_moved then
  local target = tonumber(g[5])
  local done = goal_progress >= target
  redis.call('HSET', goal, 'progress', goal_progress, 'status', done and 'completed' or 'active')
  local state = redis.call('HGETALL', goal)
  local snapshot = {}
  for i = 1, #state, 2 do snapshot[state[i]] = tonumber(state[i + 1]) or state[i + 1] end
  appended[#appended + 1] = cjson.encode({kind = 'goal_progress', goal = snapshot})
  if done then
    redis.call('HINCRBY', stats, 'goals_met', 1)
    appended[#appended + 1] = cjson.encode({kind = 'goal_completed', goal = snapshot})
  end
end

if #appended > 0 then
  local last = offset + #appended
  local announcement = '{"from":' .. (offset + 1) .. ',"combos":[' .. table.concat(combo_marks, ',') ..
    '],"events":[' .. table.concat(appended, ',') .. ']}'
  redis.call('XADD', history, 'MINID', '~', math.max(0, last - keep), last .. '-0', 'e', announcement)
  redis.call('HSET', meta, 'offset', last)
  -- A channel named with the room's tag is a shard channel (keys.room_channel): on a cluster it lives on the
  -- room's own primary, so fan-out spreads over the primaries.
  redis.call(string.byte(channel, 1) == 123 and 'SPUBLISH' or 'PUBLISH', channel, announcement)
end
-- An ended room's keys expire with it, also those first written after its end began (a gift settled while
-- the room ended), and its meta if this call made it again: nothing of an ended room stays forever.
if redis.call('HGET', meta, 'status') ~= 'live' then
  local ttl = redis.call('TTL', meta)
  if ttl < 0 then ttl = tonumber(ARGV[HEAD + 2 * n + 1]) end
  for _, key in ipairs({meta, history, stats, top, goal}) do
    if redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, ttl) end
  end
end
return #appended
