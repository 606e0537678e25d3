-- A purchase record's moves between Valkey and PostgreSQL (gifting/history/purchases.py), each one atomic step
-- in the `{ledger}` slot: a script instead of WATCH/MULTI, which redis-py's async cluster client does not run
-- reliably (EXISTS after WATCH answers the pipeline object itself, so a restore saw a record that was not there).
--
-- KEYS: 1 the purchase record (hash), 2 the hot records (sorted set: purchase id -> made), 3 the user's
-- purchases (list; the record key again when there is no user to unlist from).
-- ARGV: 1 'restore' | 'drop', 2 the purchase id, 3 made (ms, restore only), then field/value pairs: the record
-- to restore, or the record as PostgreSQL committed it.
-- restore: writes the record (due at once) only if Valkey has none; returns 1 if it wrote it.
-- drop: deletes the record and its index entries only if it is still exactly what was committed (a reversal
-- landed meanwhile keeps it for the next round); returns 1 if it dropped it.
local mode, id = ARGV[1], ARGV[2]
if mode == 'restore' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
  redis.call('ZADD', KEYS[2], ARGV[3], id)
  return 1
end
local committed, fields = {}, 0
for i = 4, #ARGV, 2 do
  committed[ARGV[i]] = ARGV[i + 1]
  fields = fields + 1
end
local current = redis.call('HGETALL', KEYS[1])
if #current > 0 then
  if #current ~= 2 * fields then return 0 end
  for i = 1, #current, 2 do
    if committed[current[i]] ~= current[i + 1] then return 0 end
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], id)
if fields > 0 and KEYS[3] ~= KEYS[1] then redis.call('LREM', KEYS[3], 1, id) end
return 1
