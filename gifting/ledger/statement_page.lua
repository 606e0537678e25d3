-- The Valkey part of one statement page (gifting/history/statements.py), read atomically with the base, so a
-- trim by the archiver between two reads cannot shift a row's seq.
--
-- KEYS: 1 the statement bases (hash: account -> rows dropped from the head), 2 the account's statement (list).
-- ARGV: 1 the account, 2 the cursor: the page holds seqs below it (-1: the newest page), 3 rows per page.
-- Returns {base, high, rows of seqs max(base, high - limit)..high-1, oldest first}; high is the cursor, or
-- the statement's length when the cursor is -1 or beyond it.
local base = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local length = base + redis.call('LLEN', KEYS[2])
local high = tonumber(ARGV[2])
if high < 0 or high > length then high = length end
local low = math.max(base, high - tonumber(ARGV[3]))
local rows = {}
if high > low then rows = redis.call('LRANGE', KEYS[2], low - base, high - base - 1) end
return {base, high, rows}
