-- A creator's top-gifter boards, one rule for gifts (settle.lua) and completed pools (pool.lua): store.py
-- prepends this file to both. A board gains each gifter's coins; the day's and the week's boards are kept
-- rules.TOP_DAY_TTL_S and TOP_WEEK_TTL_S after their last gift, the all-time board for ever (ttl 0).
--
-- board: its key (from KEYS); ttl_s: seconds it is kept (0: for ever); by_gifter: account -> coins to add.
-- A fixed number of calls per board, whatever the number of gifters (ZMSCORE, then one ZADD per chunk).
local TOP_CHUNK = 500 -- members per call: Lua's C stack holds a few thousand values
local function top_gifters_add(board, ttl_s, by_gifter)
  local members = {}
  for m, _ in pairs(by_gifter) do members[#members + 1] = m end
  for i = 1, #members, TOP_CHUNK do
    local last = math.min(i + TOP_CHUNK - 1, #members)
    local scores, args = redis.call('ZMSCORE', board, unpack(members, i, last)), {}
    for j = i, last do
      args[#args + 1] = string.format('%d', tonumber(scores[j - i + 1] or '0') + by_gifter[members[j]])
      args[#args + 1] = members[j]
    end
    redis.call('ZADD', board, unpack(args))
  end
  if #members > 0 and tonumber(ttl_s) > 0 then redis.call('EXPIRE', board, ttl_s) end
end
