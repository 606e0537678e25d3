-- The statement rows PostgreSQL does not hold yet, read for the archiver (gifting/history/hot.py), atomically
-- with where each list starts.
--
-- KEYS: 1 the statement bases (hash: account -> rows dropped from the head of its statement), 2.. the statement
--   (list) of each account, in the order of the accounts in ARGV.
-- ARGV: 1 rows read per account at most, then pairs (account, upto): an account and how many of its rows
--   PostgreSQL holds (seqs 0..upto-1).
-- Returns per account {base, rows of seqs upto..}. A base above upto would mean Valkey dropped a row that
-- PostgreSQL lacks: an error, never a silent gap.
local rows_max = tonumber(ARGV[1])
local out = {}
for i = 2, #KEYS do
  local account, upto = ARGV[2 * i - 2], tonumber(ARGV[2 * i - 1])
  local base = tonumber(redis.call('HGET', KEYS[1], account) or '0')
  if base > upto then return redis.error_reply('statement_gap') end
  out[#out + 1] = {base, redis.call('LRANGE', KEYS[i], upto - base, upto - base + rows_max - 1)}
end
return out
