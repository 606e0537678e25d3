"""Top gifters per recipient: on a multi-guest stage each person who receives gifts (the host or a guest) has a
board of who gave them the most coins during the live session.

The settlement worker records every settled gift on its recipient's board in the same pipeline that announces
it, with its own markers (bucketed like the room history's, gifting/ledger/rules.py record_buckets), so a resent
or redelivered gift counts once. Boards live under the room's tag; the room's registry of recipients lets the
room's end expire them with the room, and a join read them all.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from gifting import clock, keys, valkey
from gifting.config import Settings
from gifting.ledger import rules
from gifting.rooms.store import top_entries

# KEYS: 1 room meta, 2 the room's recipients (set), 3.. the marker buckets (hashes: gift id -> 1), newest (this
# call's) first, then one board (sorted set: sender account -> coins) per recipient. ARGV: 1 buckets, 2 unix time
# (s) at which the newest bucket expires, 3 n rows 'gift id \t board number (1..) \t sender account \t coins', then
# each board's recipient (user id), in board order. Returns the number of gifts counted by this call.
RECORD = """
local buckets, n = tonumber(ARGV[1]), tonumber(ARGV[3])
local first_board = 3 + buckets
local rows, ids = {}, {}
for i = 1, n do
  local id, board, sender, coins = string.match(ARGV[3 + i], '^([^\\t]*)\\t(%d+)\\t([^\\t]*)\\t(%d+)$')
  if not id then return redis.error_reply('recipient_top: malformed row ' .. i) end
  rows[i] = {id = id, board = KEYS[first_board + tonumber(board) - 1], sender = sender, coins = coins}
  ids[i] = id
end
local seen = {}
for k = 3, 2 + buckets do
  local found = redis.call('HMGET', KEYS[k], unpack(ids))
  for i, v in ipairs(ids) do
    if found[i] then seen[v] = true end
  end
end
local marks = {}
for _, r in ipairs(rows) do
  if not seen[r.id] then
    seen[r.id] = true
    marks[#marks + 1] = r.id
    marks[#marks + 1] = '1'
    redis.call('ZINCRBY', r.board, r.coins, r.sender)
  end
end
if #marks > 0 then
  redis.call('HSET', KEYS[3], unpack(marks))
  redis.call('EXPIREAT', KEYS[3], ARGV[2])
  redis.call('SADD', KEYS[2], unpack(ARGV, 4 + n))
  -- A board first written after the room's end began expires with the room, like announce.lua's keys.
  local ttl = redis.call('TTL', KEYS[1])
  if ttl > 0 then
    for k = 2, #KEYS do
      if k < 3 or k >= first_board then redis.call('EXPIRE', KEYS[k], ttl) end
    end
  end
end
return #marks / 2
"""


class RecipientBoards:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.script = redis.register_script(RECORD)

    def record(self, room: str, gifts: list[tuple[str, str, str, int]], client: Any) -> Any:
        """Queue on the pipeline `client` (by sha: the worker loads the script at start) the settled gifts
        (gift id, recipient, sender, coins) of one room onto their recipients' boards, each gift once."""
        recipients = list(dict.fromkeys(recipient for _, recipient, _, _ in gifts))
        number = {recipient: i + 1 for i, recipient in enumerate(recipients)}
        rows = [f"{gid}\t{number[to]}\t{keys.account(sender)}\t{coins}" for gid, to, sender, coins in gifts]
        buckets, expire_at = rules.record_buckets(clock.now_ms() // 1000, self.settings.idempotency_ttl_s)
        board_keys = [
            keys.room_meta(room),
            keys.room_recipients(room),
            *(keys.room_recipients_counted(room, bucket) for bucket in buckets),
            *(keys.room_recipient_top(room, recipient) for recipient in recipients),
        ]
        args = [len(buckets), expire_at, len(rows), *rows, *recipients]
        return valkey.queue_evalsha(client, self.script.sha, board_keys, args)


async def recipient_top(redis: aioredis.Redis, room: str, recipient: str, limit: int) -> list[dict[str, Any]]:
    """The top `limit` gifters of one recipient in the room's live session (empty: none received a gift)."""
    return await top_entries(redis, keys.room_recipient_top(room, recipient), limit)


async def recipient_tops(
    redis: aioredis.Redis, room: str, on_stage: list[str], limit: int
) -> dict[str, list[dict[str, Any]]]:
    """The boards of who is on stage now (the host and at most GIFTING_STAGE_GUESTS_MAX guests), for a join."""
    return {recipient: await recipient_top(redis, room, recipient, limit) for recipient in on_stage}
