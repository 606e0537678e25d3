"""Every Redis key, stream, consumer group and channel name, in one place.

Keys are hash-tagged so that each Lua call touches exactly one cluster slot:

- `{ledger}`: balances, journal and idempotency records; one settlement call per batch.
- `{room:ID}`: one room's metadata, history stream and announce dedupe keys; one announce call per room.
- `{gifts}`: the inbound gift stream and its dead-letter stream.
- `{rooms}`: the live-room index (all live rooms, each creator's, the rooms being ended).
- `{match:ID}`: one match's meta, scored gifts and gifters.
- `{fanclub:CREATOR}`: one creator's fan club (config, members, points, activity); one fanclub.lua call per gift.
- `{catalog}`, `{auth}`: the catalog and the token revocations, each read and changed in one transaction.

Keys without a tag are read or written one at a time (never in one script or transaction with another key).
Global pub/sub channels (catalog, revocations, hub results) reach every node of a cluster; a room's channel is
sharded (room_channel): on a cluster it lives on the room's own primary, next to its history.

On a single Valkey all of this is one server; on a cluster each tag lands on one shard.
"""

from __future__ import annotations

from gifting import clock

# Ledger (one slot).
LEDGER_COINS = "{ledger}:coins"  # hash: account -> balance (coins)
LEDGER_DIAMONDS = "{ledger}:diamonds"  # hash: account -> balance (diamonds)
LEDGER_JOURNAL = "{ledger}:journal"  # stream: an entry per transfer chain or settled batch; archived, then trimmed
LEDGER_REWARDS = "{ledger}:rewards"  # hash: account -> balance (reward coins: earned, never bought or paid out)
LEDGER_DURABLE_PROBE = "{ledger}:durable_probe"  # counter: written right before a durability wait (Ledger.durable)
LEDGER_LEDGERS = (("coins", LEDGER_COINS), ("diamonds", LEDGER_DIAMONDS), ("rewards", LEDGER_REWARDS))


def gift_records(bucket: int) -> str:
    """Hash: gift id -> outcome (idempotency record) of the gifts first decided in one time bucket; the bucket
    expires once its newest record is GIFTING_IDEMPOTENCY_TTL_S old (see ledger/rules.record_buckets)."""
    return "{ledger}:gifts:" + str(bucket)


def rejected_gift_records(bucket: int) -> str:
    """Hash: gift id -> outcome of the gifts rejected in one time bucket. Kept only GIFTING_REJECTED_GIFT_TTL_S:
    rejections cost the sender nothing, so remembering them for the full window would let anyone fill memory."""
    return "{ledger}:gifts:rejected:" + str(bucket)


def user_scoped_id(user: str, idempotency_key: str) -> str:
    """An id built from a user's own key. User ids never contain ':' (auth.USER_ID_PATTERN), so the first ':'
    ends the user: no two (user, key) pairs give the same id, whatever the key holds. Every id the server
    builds from user input goes through here (readers still check the owner on every replay)."""
    assert ":" not in user, user
    return user + ":" + idempotency_key


def purchase_id(user: str, idempotency_key: str) -> str:
    return user_scoped_id(user, idempotency_key)


def withdrawal_id(user: str, idempotency_key: str) -> str:
    return "w:" + user_scoped_id(user, idempotency_key)


def purchase_record(purchase: str) -> str:
    """A purchase (keyed by user and Idempotency-Key): its outcome and later refund/chargeback. Kept in Valkey
    GIFTING_PURCHASE_HOT_S, then in PostgreSQL (gifting/history/purchases.py)."""
    return "{ledger}:purchase:" + purchase


PURCHASES_HOT = "{ledger}:purchases:hot"  # sorted set: purchase id -> made (ms), the records still in Valkey


def purchases_of(user: str) -> str:
    """List of a user's purchase ids, oldest first."""
    return "{ledger}:purchases:" + account(user)


def statement(user: str) -> str:
    """List of one user's newest transfers, oldest first, one tab-separated row each (ledger/rules.STATEMENT_FIELDS).
    Row n of the list is the statement's row LEDGER_STATEMENT_BASE[account] + n; older ones are in PostgreSQL."""
    return account_statement(account(user))


def account_statement(account_name: str) -> str:
    """statement() by account name (u:<user>), for the scripts' callers that hold account names."""
    return "{ledger}:stmt:" + account_name


LEDGER_STATEMENT_BASE = "{ledger}:stmt_base"  # hash: account -> rows dropped from its statement's head (archived)


def spent_on(day: str) -> str:
    """Hash: account -> coins spent on gifts that UTC day (YYYYMMDD); for the daily spend cap."""
    return "{ledger}:spent:" + day


LEDGER_LIFETIME_SPENT = "{ledger}:lifetime_spent"  # hash: account -> coins ever spent on gifts (levels)


def creator_top(creator: str, period: str, bucket: str = "") -> str:
    """Sorted set: viewer account -> coins gifted to `creator` in a period: all, day:YYYYMMDD, week:YYYYWww."""
    return "{ledger}:top:" + account(creator) + ":" + period + (":" + bucket if bucket else "")


def account_top_boards(creator_account: str, now_ms: int) -> tuple[str, str, str]:
    """The creator's top-gifter boards a gift at `now_ms` adds to: all time, its UTC day, its ISO week."""
    creator = creator_account.removeprefix(ACCOUNT_PREFIX)
    day, week = clock.utc_day(now_ms), clock.iso_week(now_ms)
    return creator_top(creator, "all"), creator_top(creator, "day", day), creator_top(creator, "week", week)


LEDGER_SPEND_LIMITS = "{ledger}:limits"  # hash: account -> the viewer's own daily spend cap in coins


def earned(user: str) -> str:
    """Hash: hour number -> diamonds earned that hour (for the withdrawal hold)."""
    return account_earned(account(user))


def account_earned(account_name: str) -> str:
    """earned() by account name (u:<user>)."""
    return "{ledger}:earned:" + account_name


def withdrawal(withdrawal_id: str) -> str:
    """Hash: a cash-out (two-phase transfer): user, diamonds, status, times, payout account."""
    return "{ledger}:withdrawal:" + withdrawal_id


def withdrawals_of(user: str) -> str:
    """List of a user's withdrawal ids, oldest first."""
    return "{ledger}:withdrawals:" + account(user)


def withdrawn_on(day: str) -> str:
    """Hash: account -> diamonds requested for withdrawal that UTC day (voided ones given back)."""
    return "{ledger}:withdrawn:" + day


WITHDRAWALS_PENDING = "{ledger}:withdrawals:pending"  # sorted set: withdrawal id -> deadline (ms)
WITHDRAWALS_DONE = "{ledger}:withdrawals:done"  # sorted set: resolved withdrawal id -> resolved (ms), until archived
WITHDRAWALS_PENDING_BY_USER = "{ledger}:withdrawals:pending_by_user"  # hash: account -> pending withdrawals


# System accounts. Users are "u:<user id>".
SYS_COIN_ISSUANCE = "sys:coin_issuance"  # coins sold to users come from here (goes negative)
SYS_PLATFORM_REVENUE = "sys:platform_revenue"  # the platform's share of gifted coins
SYS_CREATOR_EARNINGS = "sys:creator_earnings"  # the creators' share of gifted coins, paid out as diamonds
SYS_DIAMOND_ISSUANCE = "sys:diamond_issuance"  # diamonds credited to creators come from here
SYS_PAYOUT_CLEARING = "sys:payout_clearing"  # diamonds of pending withdrawals (two-phase)
SYS_DIAMONDS_PAID_OUT = "sys:diamonds_paid_out"  # diamonds of withdrawals paid out


ACCOUNT_PREFIX = "u:"  # a user's account; system accounts start with "sys:"


def account(user: str) -> str:
    return ACCOUNT_PREFIX + user


# Pooled gifts (ledger slot: pledges are transfers).
SYS_POOL_ESCROW = "sys:pool_escrow"  # coins pledged to open pools (pending transfers)
POOLS_OPEN = "{ledger}:pools:open"  # sorted set: pool id -> deadline (ms)
POOLS_CLOSED = "{ledger}:pools:closed"  # sorted set: closed pool id -> closed (ms), until archived to PostgreSQL


def pool(pool_id: str) -> str:
    """Hash: id, room, creator, gift, price, bps, pledged, status (open|completed|expired|cancelled|voided),
    deadline_ms, starter, contributors (JSON list of {user, name, coins}). Dropped by the archiver once
    PostgreSQL holds it (GIFTING_POOL_HOT_S after it closes); expires GIFTING_POOL_RECORD_TTL_S after it closes
    (a safety bound: no archiver)."""
    return "{ledger}:pool:" + pool_id


def pledge_record(pledge_id: str) -> str:
    return "{ledger}:pledge:" + pledge_id


def room_pools(room: str) -> str:
    """Set: the room's open pool ids (for the per-room limit and the join snapshot). In the ledger slot, so
    pool.lua opens and closes pools and keeps this set in one atomic step."""
    return "{ledger}:room_pools:" + room


def opener_pools(user: str) -> str:
    """Set: the open pool ids a user opened (for the per-user limit)."""
    return "{ledger}:opener_pools:" + account(user)


def room_ended(room: str) -> str:
    """Hash: '*' -> when the room's end began (ms), pool id -> 1 for each pool its end voided. While it exists,
    pool.lua opens no pool in the room and accepts no pledge to it; it expires with the ended room."""
    return "{ledger}:room_ended:" + room


# Reward coins (ledger slot: accruals are transfers on the `rewards` ledger; gifting/ledger/rewards.py).
SYS_REWARDS_ISSUANCE = "sys:rewards_issuance"  # reward coins come into being here (goes negative)
SYS_REWARDS_BUDGET = "sys:rewards_budget"  # funded by admins; every accrual comes from it; never negative
SYS_REWARDS_SPENT = "sys:rewards_spent"  # reward coins spent on gifts end here (the platform pays the creator)
REWARDS_FUNDINGS = "{ledger}:rewards:fundings"  # hash: funding id -> 'coins|fingerprint' (kept for ever)
REWARDS_STREAKS = "{ledger}:rewards:streaks"  # hash: account -> 'YYYYMMDD count', the last streak day claimed


def reward_records(day: str) -> str:
    """Hash: accrual id -> 'coins|kind' of the reward accruals of one UTC day (ids name their day or minute, so
    an id is only ever tried on its day); expires with rules.REWARD_DAY_TTL_S."""
    return "{ledger}:rewards:done:" + day


def rewards_earned_on(day: str) -> str:
    """Hash: account -> reward coins earned that UTC day, '*' -> the platform's total, 'w:' + account -> watch
    periods accrued (the streak needs one)."""
    return "{ledger}:rewards:earned:" + day


def rewards_watch_field(user: str) -> str:
    """The field of rewards_earned_on(day) counting a viewer's watch periods that day."""
    return "w:" + account(user)


# Sponsored gifts (ledger slot: a campaign's budget is a coin account, sys:campaign:<id>).
CAMPAIGN_ACCOUNT_PREFIX = "sys:campaign:"  # a campaign's budget; funded by its brand or an admin grant
CAMPAIGNS_OPEN = "{ledger}:campaigns:open"  # sorted set: campaign id -> end (ms), until its budget is returned


def campaign_account(campaign_id: str) -> str:
    return CAMPAIGN_ACCOUNT_PREFIX + campaign_id


def campaign(campaign_id: str) -> str:
    """Hash: the campaign (brand, gift, window, targets, limits, status active|closed) and its counters (funded,
    spent, sends, impressions, returned). Kept for ever: the brand's report reads it."""
    return "{ledger}:campaign:" + campaign_id


def campaign_viewer_day(campaign_id: str, day: str) -> str:
    """Hash: viewer account -> sponsored gifts sent that UTC day (YYYYMMDD), for the per-viewer daily limit."""
    return "{ledger}:campaign:" + campaign_id + ":viewers:" + day


def campaign_rooms(campaign_id: str) -> str:
    """Hash: room id -> sponsored gifts sent in that room, for the per-room limit."""
    return "{ledger}:campaign:" + campaign_id + ":rooms"


def campaign_creators(campaign_id: str) -> str:
    """Set: the creator accounts the campaign's gifts reached (the report's `creators_reached`)."""
    return "{ledger}:campaign:" + campaign_id + ":creators"


def campaign_funding(funding_id: str) -> str:
    """Hash: one funding of a campaign (brand coins or admin grant), idempotent by its id. Kept for ever."""
    return "{ledger}:campaign_funding:" + funding_id


def brand_campaigns(brand: str) -> str:
    """List: a brand's campaign ids, oldest first."""
    return "{ledger}:brand_campaigns:" + account(brand)


# Perks (gifting/perks.py). What a purchase grants is in the ledger slot, written by perk.lua with its transfer;
# what a room shows (pins) is in the room's slot, written after the purchase by its id (a replay writes it again).
PERK_CATALOG = "catalog:perks"  # hash: perk id -> JSON (admins edit it; the shipped perks are seeded once)
PERK_ENTRANCES = "{ledger}:perks:entrances"  # hash: user account -> entrance effect paid up to (ms)


def perk_purchase(purchase: str) -> str:
    """Hash: a perk purchase's outcome by its user-scoped id (fp, status, reason, coins, diamonds, ...)."""
    return "{ledger}:perk:" + purchase


def room_tickets(room: str) -> str:
    """Hash: user account -> the purchase id of their ticket to the room's premium stream ('' once refunded)."""
    return "{ledger}:tickets:" + room


def room_pins(room: str) -> str:
    """Sorted set: the room's highlighted messages (JSON) by the ms they unpin; expired ones are trimmed."""
    return "{room:" + room + "}:pins"


# Fan clubs (gifting/fanclubs.py): one hash tag per creator's club.


def fanclub(creator: str) -> str:
    """Hash: the creator's fan-club choices: membership_gift, member_gift ('' none), free_premium ('1' | '0')."""
    return "{fanclub:" + creator + "}:config"


def fanclub_members(creator: str) -> str:
    """Hash: member user id -> 'joined_ms|gift_id|name' (the membership gift that made them a member)."""
    return "{fanclub:" + creator + "}:members"


def fanclub_points(creator: str) -> str:
    """Sorted set: member user id -> points (coins gifted to the creator plus daily visits)."""
    return "{fanclub:" + creator + "}:points"


def fanclub_active(creator: str) -> str:
    """Hash: member user id -> the ms of their last activity (a gift to the creator, a visit)."""
    return "{fanclub:" + creator + "}:active"


def fanclub_counted(creator: str, activity: str) -> str:
    """String: marks an activity (a gift id, a member's visit of a day) as counted once (expires)."""
    return "{fanclub:" + creator + "}:counted:" + activity


# Inbound gifts (one slot).
GIFTS_STREAM = "{gifts}:in"
GIFTS_DEAD_LETTER = "{gifts}:dead"
SETTLEMENT_GROUP = "settlement"


# Rooms.
ROOMS_LIVE = "{rooms}:live"  # sorted set: room id -> started_at (ms)
ROOMS_ENDING = "{rooms}:ending"  # sorted set: room id -> when its end began (ms), until every step of it is done


def creator_live_rooms(creator: str) -> str:
    """Sorted set: the creator's live room ids -> started_at (ms); at most GIFTING_LIVE_ROOMS_PER_CREATOR_MAX."""
    return "{rooms}:live:" + account(creator)


def room_meta(room: str) -> str:
    """Hash: creator, creator_name, title, status (live|ended), epoch, offset, started_at_ms, ended_at_ms."""
    return "{room:" + room + "}:meta"


def room_history(room: str) -> str:
    """Stream of room events; entry id is `<offset>-0`, so offsets and stream ids are the same thing."""
    return "{room:" + room + "}:history"


def room_stats(room: str) -> str:
    """Hash: gifts, coins, diamonds of the room's live session (counted once each, with the history)."""
    return "{room:" + room + "}:stats"


def room_top(room: str) -> str:
    """Sorted set: user -> coins gifted during this live session (top gifters per stream)."""
    return "{room:" + room + "}:top"


def room_goal(room: str) -> str:
    """Hash: the room's LIVE goal: id, kind (gift | diamonds), gift, target, progress, status."""
    return "{room:" + room + "}:goal"


def room_summary(room: str) -> str:
    """String: the stream summary (JSON), written when the stream ends."""
    return "{room:" + room + "}:summary"


def room_viewers(room: str) -> str:
    """Hash: hub id -> 'count ts_ms': each web process's sockets in the room, refreshed periodically."""
    return "{room:" + room + "}:viewers"


def room_recipients(room: str) -> str:
    """Set: who received gifts in this live session (the host, guests on stage): whose boards exist."""
    return "{room:" + room + "}:recipients"


def room_recipient_top(room: str, recipient: str) -> str:
    """Sorted set: sender account -> coins given to one recipient (host or guest) in this live session."""
    return "{room:" + room + "}:recipient_top:" + account(recipient)


def room_recipients_counted(room: str, bucket: int) -> str:
    """Hash: gift id -> 1 for the gifts counted on a recipient's board in one time bucket (exactly once; buckets as
    for gift records: ledger/rules.record_buckets)."""
    return "{room:" + room + "}:recipients_counted:" + str(bucket)


def room_announced(room: str, bucket: int) -> str:
    """Hash: dedupe id -> 1 for the events that entered the room history in one time bucket, so each settled
    gift enters it exactly once (buckets as for gift records: ledger/rules.record_buckets)."""
    return "{room:" + room + "}:announced:" + str(bucket)


def room_combo(room: str, combo: str) -> str:
    """String: 'first gift id|running count' of one combo (combo: 'sender:gift') while its window is open."""
    return "{room:" + room + "}:combo:" + combo


def room_stage(room: str) -> str:
    """Hash: guest user -> joined_at_ms, the guests on the room's stage now (the host is always a recipient)."""
    return "{room:" + room + "}:stage"


def room_stage_invites(room: str) -> str:
    """Hash: invited user -> the invite's deadline (ms)."""
    return "{room:" + room + "}:stage_invites"


def room_matches(room: str) -> str:
    """Hash: match id -> the match's final view (JSON), for each match of the live session that ended: the
    stream summary lists them."""
    return "{room:" + room + "}:matches"


def creator_sessions(creator: str) -> str:
    """List: summaries (JSON) of a creator's ended live sessions, newest first (older ones: PostgreSQL)."""
    return "sessions:" + account(creator)


ROOMS_SUMMARIZED = "{rooms}:summarized"  # sorted set: room -> ended (ms), for each summary still in Valkey


def room_channel(room: str, sharded: bool = False) -> str:
    """Pub/sub channel of one room, subscribed by every hub process with sockets in it. Sharded (on a cluster):
    the room's tag, so SPUBLISH from announce.lua hashes to the room's own slot (a script may touch one slot)."""
    return "{room:" + room + "}" if sharded else "room:" + room


def channel_room(channel: str) -> str | None:
    """The room a room channel (either form) carries, else None."""
    if channel.startswith("{room:") and channel.endswith("}"):
        return channel[6:-1]
    return channel[5:] if channel.startswith("room:") else None


def hub_channel(hub_id: str) -> str:
    """Pub/sub channel of one hub process: gift results for the senders connected to it."""
    return "hub:" + hub_id


# Matches: one match's keys share its tag, so each match script touches one slot.
MATCHES_DUE = "matches:due"  # sorted set: match id -> when the worker next looks at it (invite deadline, end)
MATCHES_ENDED = "matches:ended"  # sorted set: ended match id -> its end (ms), until archived to PostgreSQL


def match_meta(match: str) -> str:
    """Hash: mode, status (invited|live|ended|declined|expired), a_creator, a_room, b_creator, b_room, duration_s,
    invite_deadline_ms, started_at_ms, end_ms, points_a, points_b, result (JSON, once ended)."""
    return "{match:" + match + "}:meta"


def match_scored(match: str) -> str:
    """Hash: gift id -> 'side points_a points_b' after it scored: each gift scores once, and a redelivered gift
    gets the same snapshot back (announced to the rooms under the same dedupe id)."""
    return "{match:" + match + "}:scored"


def match_gifters(match: str, side: str) -> str:
    """Sorted set: sender -> points given to one side (a | b) of the match: its MVPs."""
    return "{match:" + match + "}:gifters:" + side


def creator_match(creator: str) -> str:
    """String: the match id the creator is invited to or playing in (at most one at a time)."""
    return "matches:creator:" + account(creator)


USER_NAMES = "users:names"  # hash: user -> display name (for leaderboards)

# Liveness.
WORKER_HEARTBEATS = "workers:heartbeats"  # sorted set: consumer name -> last beat (ms)


# Catalog: seeded from gifting/catalog/catalog.json, then changed by admins; every process reloads on change.
CATALOG_GIFTS = "{catalog}:gifts"  # hash: gift id -> JSON
CATALOG_BUNDLES = "{catalog}:bundles"  # hash: bundle id -> JSON
CATALOG_VERSION = "{catalog}:version"  # integer, incremented by every change
CATALOG_CHANNEL = "catalog"  # pub/sub: the new version, published after every change

# Token revocation (gifting/revocations.py): every web process holds a copy and reloads on change.
AUTH_NOT_BEFORE = "{auth}:not_before"  # hash: user -> unix second; the user's tokens issued up to it are revoked
AUTH_VERSION = "{auth}:version"  # integer, incremented by every revocation
AUTH_CHANNEL = "auth:revoked"  # pub/sub: "user second", published after every revocation
