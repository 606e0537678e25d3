-- Append settled gifts to one room's history exactly once and publish them (called by workers/settlement.py).
--
-- KEYS: 1 room meta (hash), 2 room history (stream), 3.. one announced-marker key per event.
-- ARGV: 1 room channel, 2 history max length (entries, approximate), 3 marker ttl_s, 4 epoch candidate
--   (used only when the room has no epoch: its history was lost), 5.. events as JSON objects without
--   an offset.
-- The offset is assigned here, under the script's atomicity, so offsets are dense and ordered; the stream
-- entry id is '<offset>-0'. Returns the number of events appended.
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[4]) == 1 then
  redis.call('HSET', KEYS[1], 'offset', 0)
  redis.call('DEL', KEYS[2])
end
local appended = {}
for i = 5, #ARGV do
  local marker = KEYS[i - 2]
  if redis.call('SET', marker, '1', 'NX', 'EX', ARGV[3]) then
    local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
    local event = '{"offset":' .. offset .. ',' .. string.sub(ARGV[i], 2)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'e', event)
    appended[#appended + 1] = event
  end
end
if #appended > 0 then
  redis.call('PUBLISH', ARGV[1], '[' .. table.concat(appended, ',') .. ']')
end
return #appended
