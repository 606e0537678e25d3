-- Append settled gifts to one room's history exactly once and publish them (called by workers/settlement.py).
--
-- KEYS: 1 room meta (hash), 2 room history (stream), 3 room stats (hash), 4.. one announced-marker key per
--   event.
-- ARGV: 1 room channel, 2 history max length (entries, approximate), 3 marker ttl_s, 4 epoch candidate
--   (used only when the room has no epoch: its history was lost), then per event: the event as a JSON object
--   without an offset, its coins, its diamonds (0 for events that are not gifts).
-- Room stats (gifts, coins, diamonds of this live session) count each event once, with the history.
-- The offset is assigned here, under the script's atomicity, so offsets are dense and ordered; the stream
-- entry id is '<offset>-0'. Returns the number of events appended.
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[4]) == 1 then
  redis.call('HSET', KEYS[1], 'offset', 0)
  redis.call('DEL', KEYS[2])
end
local appended = {}
local gifts, coins, diamonds = 0, 0, 0
for i = 0, (#ARGV - 4) / 3 - 1 do
  local a = 5 + 3 * i
  if redis.call('SET', KEYS[4 + i], '1', 'NX', 'EX', ARGV[3]) then
    local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
    local event = '{"offset":' .. offset .. ',' .. string.sub(ARGV[a], 2)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'e', event)
    appended[#appended + 1] = event
    local c = tonumber(ARGV[a + 1])
    if c > 0 then
      gifts, coins, diamonds = gifts + 1, coins + c, diamonds + tonumber(ARGV[a + 2])
    end
  end
end
if gifts > 0 then
  redis.call('HINCRBY', KEYS[3], 'gifts', gifts)
  redis.call('HINCRBY', KEYS[3], 'coins', coins)
  redis.call('HINCRBY', KEYS[3], 'diamonds', diamonds)
end
if #appended > 0 then
  redis.call('PUBLISH', ARGV[1], '[' .. table.concat(appended, ',') .. ']')
end
return #appended
