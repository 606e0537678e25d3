-- Append events to one room's history exactly once, derive the room's live state from them, and publish
-- (called through gifting/rooms.py RoomStore.announce by the settlement worker and the web process).
--
-- KEYS: 1 room meta (hash), 2 history (stream), 3 stats (hash), 4 stream top gifters (sorted set),
--   5 goal (hash), 6.. one announced-marker key per event.
-- ARGV: 1 room channel, 2 history max length (entries, approximate), 3 marker ttl_s, 4 epoch candidate (used
--   only when the room has no epoch: its history was lost), 5 combo window ms, then per event (STRIDE values):
--   JSON object without an offset, coins, diamonds, gift id, count, contributors ('user coins|user coins', ''),
--   combo key ('sender:gift', or '' for events that do not combo).
--
-- Everything derived here (offsets, combos, stats, top gifters, goal progress and completion) happens once
-- per event, because the marker admits each event once and the script is atomic. Goal events are appended
-- to the history too, so a resuming client sees them like any other event.
-- Returns the number of events appended.
local meta, history, stats, top, goal = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel, maxlen, marker_ttl, window_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local HEAD, STRIDE, FIRST_MARKER = 5, 7, 6
local prefix = string.sub(meta, 1, -5)  -- '{room:ID}:'

if redis.call('HSETNX', meta, 'epoch', ARGV[4]) == 1 then
  redis.call('HSET', meta, 'offset', 0)
  redis.call('DEL', history)
end

local appended = {}
local function append(event)
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  event = '{"offset":' .. offset .. ',' .. string.sub(event, 2)
  redis.call('XADD', history, 'MAXLEN', '~', maxlen, offset .. '-0', 'e', event)
  appended[#appended + 1] = event
end

local g = redis.call('HMGET', goal, 'status', 'kind', 'gift', 'progress', 'target')
local goal_active = g[1] == 'active'
local goal_progress = tonumber(g[4] or '0')
local goal_moved = false
local gifts, coins_total, diamonds_total = 0, 0, 0

for i = 0, (#ARGV - HEAD) / STRIDE - 1 do
  local a = HEAD + i * STRIDE
  if redis.call('SET', KEYS[FIRST_MARKER + i], '1', 'NX', 'EX', marker_ttl) then
    local event, coins, diamonds = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local gift, count, contributors, combo = ARGV[a + 4], tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7]
    if combo ~= '' then
      -- Same sender, same gift, within the window: one combo with a running count.
      local combo_key = prefix .. 'combo:' .. combo
      local current = redis.call('GET', combo_key)
      local id, total
      if current then
        id, total = string.match(current, '^(.*)|(%d+)$')
        total = tonumber(total) + count
      else
        id, total = cjson.decode(event)['gift_id'], count
      end
      redis.call('SET', combo_key, id .. '|' .. total, 'PX', window_ms)
      event = string.sub(event, 1, -2) .. ',"combo":{"id":' .. cjson.encode(id) .. ',"count":' .. total .. '}}'
    end
    append(event)
    if coins > 0 then
      gifts, coins_total, diamonds_total = gifts + 1, coins_total + coins, diamonds_total + diamonds
    end
    for user, amount in string.gmatch(contributors, '([^ |]+) (%d+)') do
      redis.call('ZINCRBY', top, amount, user)
    end
    if goal_active then
      if g[2] == 'diamonds' then
        goal_progress = goal_progress + diamonds
        goal_moved = goal_moved or diamonds > 0
      elseif g[2] == 'gift' and gift == g[3] then
        goal_progress = goal_progress + count
        goal_moved = true
      end
    end
  end
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
  append(cjson.encode({kind = 'goal_progress', goal = snapshot}))
  if done then
    redis.call('HINCRBY', stats, 'goals_met', 1)
    append(cjson.encode({kind = 'goal_completed', goal = snapshot}))
  end
end

if #appended > 0 then
  redis.call('PUBLISH', channel, '[' .. table.concat(appended, ',') .. ']')
end
return #appended
