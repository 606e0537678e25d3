-- Fan-club activity (called by gifting/fanclubs.py): a settled gift to the creator or a member's daily visit,
-- counted once by its marker. A membership gift makes its sender a member; any other activity counts only for
-- members. Keys, the member's record and the points come from the caller (rules.py, keys.py).
--
-- KEYS: 1 the club's members (hash), 2 points (sorted set), 3 last activity (hash), 4 the activity's marker.
-- ARGV: 1 member, 2 now_ms, 3 points to add, 4 '1' when the activity is the membership gift, 5 the member's
--   record if it makes them one ('joined_ms|gift_id|name'), 6 marker ttl_s.
-- Returns {member (1 | 0), points after, joined now (1 | 0)}.
local members, points, active, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member = ARGV[1]
local is_member = redis.call('HEXISTS', members, member) == 1
if not is_member and ARGV[4] ~= '1' then return {0, '0', 0} end
local joined = 0
if redis.call('SET', marker, '1', 'NX', 'EX', tonumber(ARGV[6])) then
  if not is_member then
    redis.call('HSET', members, member, ARGV[5])
    joined = 1
  end
  redis.call('ZINCRBY', points, ARGV[3], member)
  redis.call('HSET', active, member, ARGV[2])
end
return {1, redis.call('ZSCORE', points, member) or '0', joined}
