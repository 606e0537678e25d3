-- Drop a statement's oldest rows from Valkey once PostgreSQL holds them (gifting/history/hot.py), keeping the
-- newest GIFTING_STATEMENT_HOT_ROWS. The base moves with the trim, in one step, so a row keeps its seq.
--
-- KEYS: 1 the statement bases (hash: account -> rows dropped), 2.. the statement (list) of each account.
-- ARGV: 1 rows to keep, then pairs (account, upto): PostgreSQL holds the account's seqs 0..upto-1 (committed).
-- Returns the rows dropped.
local keep, dropped = tonumber(ARGV[1]), 0
for i = 2, #KEYS do
  local account, upto = ARGV[2 * i - 2], tonumber(ARGV[2 * i - 1])
  local base = tonumber(redis.call('HGET', KEYS[1], account) or '0')
  local drop = math.min(upto - base, redis.call('LLEN', KEYS[i]) - keep)
  if drop > 0 then
    redis.call('LTRIM', KEYS[i], drop, -1)
    redis.call('HINCRBY', KEYS[1], account, drop)
    dropped = dropped + drop
  end
end
return dropped
