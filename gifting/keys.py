"""Every Redis key, stream, consumer group and channel name, in one place.

Keys are hash-tagged so that each Lua call touches exactly one cluster slot:

- `{ledger:P.K}`: one ledger partition (gifting/ledger/partitions.py): its accounts' balances, journal,
  idempotency records, statements, caps, boards, its gift stream and its outbox; one settlement call per batch
  and partition.
- `{room:ID}`: one room's metadata, history stream and announce dedupe keys; one announce call per room.
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
from gifting.ledger import partitions

# Ledger: GIFTING_LEDGER_PARTITIONS partitions, one hash tag each (gifting/ledger/partitions.py). An account's
# balances, records, statement, caps and boards live in its own partition (`part_of`); a partition's keys are
# built from its tag (`part`, e.g. '{ledger:3.11}'). Every ledger script touches one partition.


def part_of(account_name: str) -> str:
    """The tag of the partition holding an account (u:<user>, sys:campaign:<id>, ...)."""
    return partitions.tag_of(account_name)


def part_of_user(user: str) -> str:
    return partitions.tag_of(account(user))


def coins(part: str) -> str:
    """Hash: account -> balance (coins) of the partition's accounts (system accounts: this partition's share)."""
    return part + ":coins"


def diamonds(part: str) -> str:
    """Hash: account -> balance (diamonds)."""
    return part + ":diamonds"


def rewards(part: str) -> str:
    """Hash: account -> balance (reward coins: earned, never bought or paid out)."""
    return part + ":rewards"


def journal(part: str) -> str:
    """Stream: an entry per transfer chain, settled batch or applied credits of the partition; archived, then
    trimmed."""
    return part + ":journal"


def durable_probe(part: str) -> str:
    """Counter: written right before a durability wait on the partition's node (Ledger.durable)."""
    return part + ":durable_probe"


def ledgers(part: str) -> tuple[tuple[str, str], ...]:
    """(ledger name, balances hash) of a partition, for each of rules.LEDGERS."""
    return (("coins", coins(part)), ("diamonds", diamonds(part)), ("rewards", rewards(part)))


def gifts_stream(part: str) -> str:
    """Stream: the gifts (and pool operations) paid from the partition's accounts, as the hubs accepted them."""
    return part + ":gifts"


def gifts_dead_letter(part: str) -> str:
    """Stream: entries of gifts_stream(part) that could not be settled, with their error (gifting ops)."""
    return part + ":gifts:dead"


def outbox(part: str) -> str:
    """Stream: credits owed to accounts of other partitions by the partition's settled transfers (a gift's
    diamonds, ...): one entry per batch, a field per destination partition. Deleted once every credit of it is
    applied and durable (workers/settlement.py); a crash leaves it to be applied again (idempotently)."""
    return part + ":outbox"


def lease(part: str) -> str:
    """String: the worker process settling the partition's stream now (SET NX PX, renewed; workers/leases.py)."""
    return part + ":lease"


def gift_records(part: str, bucket: int) -> str:
    """Hash: gift id -> outcome (idempotency record) of the gifts first decided in one time bucket; the bucket
    expires once its newest record is GIFTING_IDEMPOTENCY_TTL_S old (see ledger/rules.record_buckets). In the
    paying account's partition."""
    return part + ":gifts:" + str(bucket)


def rejected_gift_records(part: str, bucket: int) -> str:
    """Hash: gift id -> outcome of the gifts rejected in one time bucket. Kept only GIFTING_REJECTED_GIFT_TTL_S:
    rejections cost the sender nothing, so remembering them for the full window would let anyone fill memory."""
    return part + ":gifts:rejected:" + str(bucket)


def credit_records(part: str, bucket: int) -> str:
    """Hash: credit id -> 1 for the credits (from other partitions' outboxes) applied in one time bucket, so
    each is applied exactly once (buckets as for gift records)."""
    return part + ":credited:" + str(bucket)


def user_scoped_id(user: str, idempotency_key: str) -> str:
    """An id built from a user's own key. User ids never contain ':' (auth.USER_ID_PATTERN), so the first ':'
    ends the user: no two (user, key) pairs give the same id, whatever the key holds. Every id the server
    builds from user input goes through here (readers still check the owner on every replay)."""
    assert ":" not in user, user
    return user + ":" + idempotency_key


def scoped_user(scoped_id: str) -> str:
    """The user of a user_scoped_id (withdrawal ids start with 'w:')."""
    return scoped_id.removeprefix("w:").partition(":")[0]


def purchase_id(user: str, idempotency_key: str) -> str:
    return user_scoped_id(user, idempotency_key)


def withdrawal_id(user: str, idempotency_key: str) -> str:
    return "w:" + user_scoped_id(user, idempotency_key)


def purchase_record(purchase: str) -> str:
    """A purchase (keyed by user and Idempotency-Key): its outcome and later refund/chargeback. Kept in Valkey
    GIFTING_PURCHASE_HOT_S, then in PostgreSQL (gifting/history/purchases.py). In the buyer's partition."""
    return part_of_user(scoped_user(purchase)) + ":purchase:" + purchase


def purchases_hot(part: str) -> str:
    """Sorted set: purchase id -> made (ms), the partition's purchase records still in Valkey."""
    return part + ":purchases:hot"


def purchases_of(user: str) -> str:
    """List of a user's purchase ids, oldest first."""
    return part_of_user(user) + ":purchases:" + account(user)


def statement(user: str) -> str:
    """List of one user's newest transfers, oldest first, one tab-separated row each (ledger/rules.STATEMENT_FIELDS).
    Row n of the list is the statement's row statement_base(part)[account] + n; older ones are in PostgreSQL."""
    return account_statement(account(user))


def account_statement(account_name: str) -> str:
    """statement() by account name (u:<user>), for the scripts' callers that hold account names."""
    return part_of(account_name) + ":stmt:" + account_name


def statement_base(part: str) -> str:
    """Hash: account -> rows dropped from its statement's head (archived)."""
    return part + ":stmt_base"


def spent_on(part: str, day: str) -> str:
    """Hash: account -> coins spent on gifts that UTC day (YYYYMMDD); for the daily spend cap."""
    return part + ":spent:" + day


def lifetime_spent(part: str) -> str:
    """Hash: account -> coins ever spent on gifts (levels)."""
    return part + ":lifetime_spent"


def spend_limits(part: str) -> str:
    """Hash: account -> the viewer's own daily spend cap in coins."""
    return part + ":limits"


def creator_top(creator: str, period: str, bucket: str = "") -> str:
    """Sorted set: viewer account -> coins gifted to `creator` in a period: all, day:YYYYMMDD, week:YYYYWww. In
    the creator's partition (written with the creator's credit)."""
    name = account(creator)
    return part_of(name) + ":top:" + name + ":" + period + (":" + bucket if bucket else "")


def account_top_boards(creator_account: str, now_ms: int) -> tuple[str, str, str]:
    """The creator's top-gifter boards a gift at `now_ms` adds to: all time, its UTC day, its ISO week."""
    creator = creator_account.removeprefix(ACCOUNT_PREFIX)
    day, week = clock.utc_day(now_ms), clock.iso_week(now_ms)
    return creator_top(creator, "all"), creator_top(creator, "day", day), creator_top(creator, "week", week)


def earned(user: str) -> str:
    """Hash: hour number -> diamonds earned that hour (for the withdrawal hold)."""
    return account_earned(account(user))


def account_earned(account_name: str) -> str:
    """earned() by account name (u:<user>)."""
    return part_of(account_name) + ":earned:" + account_name


def withdrawal(withdrawal_id: str) -> str:
    """Hash: a cash-out (two-phase transfer): user, diamonds, status, times, payout account."""
    return part_of_user(scoped_user(withdrawal_id)) + ":withdrawal:" + withdrawal_id


def withdrawals_of(user: str) -> str:
    """List of a user's withdrawal ids, oldest first."""
    return part_of_user(user) + ":withdrawals:" + account(user)


def withdrawn_on(part: str, day: str) -> str:
    """Hash: account -> diamonds requested for withdrawal that UTC day (voided ones given back)."""
    return part + ":withdrawn:" + day


def withdrawals_pending(part: str) -> str:
    """Sorted set: the partition's pending withdrawal ids -> deadline (ms)."""
    return part + ":withdrawals:pending"


def withdrawals_done(part: str) -> str:
    """Sorted set: resolved withdrawal id -> resolved (ms), until archived."""
    return part + ":withdrawals:done"


def withdrawals_pending_by_user(part: str) -> str:
    """Hash: account -> pending withdrawals."""
    return part + ":withdrawals:pending_by_user"


# System accounts: each exists once per partition (its share: transfers balance inside their partition). Users
# are "u:<user id>".
SYS_COIN_ISSUANCE = "sys:coin_issuance"  # coins sold to users come from here (goes negative)
SYS_PLATFORM_REVENUE = "sys:platform_revenue"  # the platform's share of gifted coins
SYS_CREATOR_EARNINGS = "sys:creator_earnings"  # the creators' share of gifted coins, paid out as diamonds
SYS_DIAMOND_ISSUANCE = "sys:diamond_issuance"  # diamonds credited to creators come from here
SYS_PAYOUT_CLEARING = "sys:payout_clearing"  # diamonds of pending withdrawals (two-phase)
SYS_DIAMONDS_PAID_OUT = "sys:diamonds_paid_out"  # diamonds of withdrawals paid out
SYS_TRANSIT = "sys:transit"  # coins or reward coins on their way to another partition (an outbox credit)


ACCOUNT_PREFIX = "u:"  # a user's account; system accounts start with "sys:"


def account(user: str) -> str:
    return ACCOUNT_PREFIX + user


# Pooled gifts: a pool lives in its room's creator's partition (part), with its escrow, pledge records and
# indexes; pledgers pay from their own partitions (gifting/ledger/pools.py).
SYS_POOL_ESCROW = "sys:pool_escrow"  # coins pledged to open pools (pending transfers)


def pools_open(part: str) -> str:
    """Sorted set: pool id -> deadline (ms)."""
    return part + ":pools:open"


def pools_closed(part: str) -> str:
    """Sorted set: closed pool id -> closed (ms), until archived to PostgreSQL."""
    return part + ":pools:closed"


def pool(part: str, pool_id: str) -> str:
    """Hash: id, room, creator, gift, price, bps, pledged, status (open|completed|expired|cancelled|voided),
    deadline_ms, starter, contributors (JSON list of {user, name, coins}). Dropped by the archiver once
    PostgreSQL holds it (GIFTING_POOL_HOT_S after it closes); expires GIFTING_POOL_RECORD_TTL_S after it closes
    (a safety bound: no archiver)."""
    return part + ":pool:" + pool_id


def pledge_record(part: str, pledge_id: str) -> str:
    """Hash: a pledge in its PLEDGER's partition, by user-scoped pledge id: status (debited | accepted |
    rejected), reason, balance, fp, pool, coins, debited_ms (ledger/pledge.lua)."""
    return part + ":pledge:" + pledge_id


def pledge_landing(part: str, pledge_id: str) -> str:
    """String: a pledge's outcome in its POOL's partition ('accepted' or the refusal's reason), by user-scoped
    pledge id: the pledge lands in the escrow, or is refused, exactly once (ledger/pool.lua)."""
    return part + ":pledge_landing:" + pledge_id


def pledges_in_flight(part: str) -> str:
    """Sorted set: user-scoped pledge id -> debited (ms), the partition's pledges debited whose pool's answer is
    not applied yet; workers/pool_sweep.py pushes those older than GIFTING_PLEDGE_REDRIVE_MS again."""
    return part + ":pledges:in_flight"


def room_pools(part: str, room: str) -> str:
    """Set: the room's open pool ids (for the per-room limit and the join snapshot)."""
    return part + ":room_pools:" + room


def opener_pools(part: str, user: str) -> str:
    """Set: the open pool ids a user opened (for the per-user limit)."""
    return part + ":opener_pools:" + account(user)


def room_ended(part: str, room: str) -> str:
    """Hash: '*' -> when the room's end began (ms), pool id -> 1 for each pool its end voided. While it exists,
    pool.lua opens no pool in the room and accepts no pledge to it; it expires with the ended room."""
    return part + ":room_ended:" + room


# Reward coins (accruals are transfers on the `rewards` ledger; gifting/ledger/rewards.py). The budget, its
# fundings, the accrual records and the daily totals live in one partition, rewards_part().
SYS_REWARDS_ISSUANCE = "sys:rewards_issuance"  # reward coins come into being here (goes negative)
SYS_REWARDS_BUDGET = "sys:rewards_budget"  # funded by admins; every accrual comes from it; never negative
SYS_REWARDS_SPENT = "sys:rewards_spent"  # reward coins spent on gifts end here (the platform pays the creator)


def rewards_part() -> str:
    return part_of(SYS_REWARDS_BUDGET)


def rewards_fundings(part: str) -> str:
    """Hash: funding id -> 'coins|fingerprint' (kept for ever)."""
    return part + ":rewards:fundings"


def rewards_streaks(part: str) -> str:
    """Hash: account -> 'YYYYMMDD count', the last streak day claimed."""
    return part + ":rewards:streaks"


def reward_records(part: str, day: str) -> str:
    """Hash: accrual id -> 'coins|kind' of the reward accruals of one UTC day (ids name their day or minute, so
    an id is only ever tried on its day); expires with rules.REWARD_DAY_TTL_S."""
    return part + ":rewards:done:" + day


def rewards_earned_on(part: str, day: str) -> str:
    """Hash: account -> reward coins earned that UTC day, '*' -> the platform's total, 'w:' + account -> watch
    periods accrued (the streak needs one)."""
    return part + ":rewards:earned:" + day


def rewards_watch_field(user: str) -> str:
    """The field of rewards_earned_on(day) counting a viewer's watch periods that day."""
    return "w:" + account(user)


# Sponsored gifts: a campaign's budget is a coin account, sys:campaign:<id>; the campaign's record, counters and
# fundings live in that account's partition (campaign_part).
CAMPAIGN_ACCOUNT_PREFIX = "sys:campaign:"  # a campaign's budget; funded by its brand or an admin grant


def campaign_account(campaign_id: str) -> str:
    return CAMPAIGN_ACCOUNT_PREFIX + campaign_id


def campaign_part(campaign_id: str) -> str:
    return part_of(campaign_account(campaign_id))


def campaigns_open(part: str) -> str:
    """Sorted set: campaign id -> end (ms), until its budget is returned."""
    return part + ":campaigns:open"


def campaign(campaign_id: str) -> str:
    """Hash: the campaign (brand, gift, window, targets, limits, status active|closed) and its counters (funded,
    spent, sends, impressions, returned). Kept for ever: the brand's report reads it."""
    return campaign_part(campaign_id) + ":campaign:" + campaign_id


def campaign_viewer_day(campaign_id: str, day: str) -> str:
    """Hash: viewer account -> sponsored gifts sent that UTC day (YYYYMMDD), for the per-viewer daily limit."""
    return campaign_part(campaign_id) + ":campaign:" + campaign_id + ":viewers:" + day


def campaign_rooms(campaign_id: str) -> str:
    """Hash: room id -> sponsored gifts sent in that room, for the per-room limit."""
    return campaign_part(campaign_id) + ":campaign:" + campaign_id + ":rooms"


def campaign_creators(campaign_id: str) -> str:
    """Set: the creator accounts the campaign's gifts reached (the report's `creators_reached`)."""
    return campaign_part(campaign_id) + ":campaign:" + campaign_id + ":creators"


def campaign_funding(campaign_id: str, funding_id: str) -> str:
    """Hash: one funding of a campaign (brand coins or admin grant), idempotent by its id. Kept for ever."""
    return campaign_part(campaign_id) + ":campaign_funding:" + funding_id


def brand_campaigns(brand: str) -> str:
    """List: a brand's campaign ids, oldest first."""
    return part_of_user(brand) + ":brand_campaigns:" + account(brand)


# Perks (gifting/perks.py). What a purchase grants is in the buyer's partition, written by perk.lua with its
# transfer; what a room shows (pins) is in the room's slot, written after the purchase by its id (a replay
# writes it again).
PERK_CATALOG = "catalog:perks"  # hash: perk id -> JSON (admins edit it; the shipped perks are seeded once)


def perk_entrances(part: str) -> str:
    """Hash: user account -> entrance effect paid up to (ms), of the partition's users."""
    return part + ":perks:entrances"


def perk_purchase(purchase: str) -> str:
    """Hash: a perk purchase's outcome by its user-scoped id (fp, status, reason, coins, diamonds, ...)."""
    return part_of_user(scoped_user(purchase)) + ":perk:" + purchase


def room_tickets(part: str, room: str) -> str:
    """Hash: user account -> the purchase id of their ticket to the room's premium stream ('' once refunded), for
    the partition's users (a room's ticket holders are spread over every partition)."""
    return part + ":tickets:" + room


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


# Inbound gifts: a stream per ledger partition (gifts_stream), read by the settlement workers.
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
