"""Settings from the environment. Every limit is named with its unit and documented here.

The README's configuration table is generated from this module (`gifting config --markdown`),
so this is the one place a setting is described.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gifting.ledger import partitions

SECRET_BYTES_MIN = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
SETTLE_CONCURRENCY_MAX = 32  # batch loops per worker process (each holds a Valkey connection while it waits)
SETTLE_BATCH_HARD_MAX = 2000  # the Lua scripts unpack() a batch's ids into one call; Lua's C stack holds ~8,000


class ConfigError(ValueError):
    """A setting from the environment could not be used; the message names the variable."""


def _setting(env: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    # Where things are.
    redis_url: str = _setting(
        "REDIS_URL",
        "",
        "Valkey/Redis to use. Empty: start (or find) the embedded Valkey in the data directory.",
    )
    secret: str = _setting(
        "GIFTING_SECRET",
        "",
        "HS256 secret for tokens. Empty: a generated one kept in the data directory (dev).",
    )
    redis_connections_max: int = _setting(
        "GIFTING_REDIS_CONNECTIONS_MAX", 100, "Valkey connections per process; more requests wait for a free one."
    )
    redis_wait_s: float = _setting(
        "GIFTING_REDIS_WAIT_S", 10.0, "Longest wait for a free Valkey connection before the request fails, seconds."
    )
    store_retry_after_s: int = _setting(
        "GIFTING_STORE_RETRY_AFTER_S",
        2,
        "While Valkey is unreachable, HTTP answers 503 `store_unavailable` with this Retry-After, in seconds.",
    )
    dev_valkey_restarts_max: int = _setting(
        "GIFTING_DEV_VALKEY_RESTARTS_MAX",
        5,
        "`gifting dev`: restarts of a crashed embedded Valkey allowed per GIFTING_DEV_VALKEY_RESTART_WINDOW_S; "
        "one crash more stops everything (exit 1).",
    )
    dev_valkey_restart_window_s: float = _setting(
        "GIFTING_DEV_VALKEY_RESTART_WINDOW_S", 60.0, "The window of GIFTING_DEV_VALKEY_RESTARTS_MAX, seconds."
    )
    database_url: str = _setting(
        "GIFTING_DATABASE_URL",
        "",
        "PostgreSQL for the ledger's history (the archive). Empty: start (or find) the embedded PostgreSQL 16 "
        "(pgserver wheel) in the data directory.",
    )
    host: str = _setting("GIFTING_HOST", "127.0.0.1", "Address the web process binds to.")
    port: int = _setting("GIFTING_PORT", 8000, "Port the web process binds to.")
    data_dir: str = _setting(
        "GIFTING_DATA_DIR", ".gifting", "Data directory: embedded Valkey (AOF), dev secret, state files."
    )
    dev_mode: bool = _setting("GIFTING_DEV", False, "Dev mode: enables the demo-token endpoint. Never in production.")
    metrics_dir: str = _setting(
        "GIFTING_METRICS_DIR",
        "",
        "Prometheus multiprocess files: each `serve`/`worker` process writes its own subdirectory `ROLE-PID` here. "
        "Empty: `metrics` in the data directory.",
    )
    worker_metrics_host: str = _setting(
        "GIFTING_WORKER_METRICS_HOST", "127.0.0.1", "Address of the worker's Prometheus `/metrics` listener."
    )
    worker_metrics_port: int = _setting(
        "GIFTING_WORKER_METRICS_PORT", 9108, "Port of the worker's Prometheus `/metrics` listener; 0: none."
    )
    log_format: str = _setting(
        "GIFTING_LOG_FORMAT", "text", "Log lines: `text` (human) or `json` (one JSON object per line)."
    )

    # Money.
    creator_share_bps: int = _setting(
        "GIFTING_CREATOR_SHARE_BPS",
        5000,
        "Creator's share of a gift's coin value, in basis points (1/100 %).",
    )
    idempotency_ttl_s: int = _setting(
        "GIFTING_IDEMPOTENCY_TTL_S",
        7 * 86400,
        "How long a settled gift or accepted pledge id is remembered, in seconds (at least; at most 1/8 longer). "
        "Purchases: forever.",
    )
    rejected_gift_ttl_s: int = _setting(
        "GIFTING_REJECTED_GIFT_TTL_S",
        3600,
        "How long a rejected gift or pledge id is remembered, in seconds (at least; at most 1/8 longer); then a "
        "resend is decided anew.",
    )
    daily_spend_coins_max: int = _setting(
        "GIFTING_DAILY_SPEND_COINS_MAX",
        0,
        "Coins a viewer may spend per UTC day, gifts and pool pledges together; 0: no global cap.",
    )
    spend_limit_cooloff_s: int = _setting(
        "GIFTING_SPEND_LIMIT_COOLOFF_S",
        86400,
        "A viewer's own daily spend cap raised or removed takes effect after this many seconds; lowered: at once.",
    )
    withdrawal_diamonds_min: int = _setting(
        "GIFTING_WITHDRAWAL_DIAMONDS_MIN", 1000, "Smallest withdrawal, in diamonds."
    )
    withdrawal_diamonds_per_day_max: int = _setting(
        "GIFTING_WITHDRAWAL_DIAMONDS_PER_DAY_MAX", 1_000_000, "Diamonds a creator may withdraw per UTC day."
    )
    diamond_hold_s: int = _setting(
        "GIFTING_DIAMOND_HOLD_S", 3 * 86400, "Diamonds earned this recently cannot be withdrawn, in seconds."
    )
    withdrawal_timeout_s: int = _setting(
        "GIFTING_WITHDRAWAL_TIMEOUT_S", 86400, "A withdrawal still pending after this many seconds is voided."
    )
    payout_interval_ms: int = _setting(
        "GIFTING_PAYOUT_INTERVAL_MS", 1000, "How often the worker sends pending withdrawals to the payout provider."
    )
    payouts_per_run_max: int = _setting(
        "GIFTING_PAYOUTS_PER_RUN_MAX",
        100,
        "Pending withdrawals sent to the payout provider per run (a page), shared equally among the ledger "
        "partitions (at least one each; past this many partitions, a run takes the next this many in turn).",
    )
    payout_call_timeout_ms: int = _setting(
        "GIFTING_PAYOUT_CALL_TIMEOUT_MS",
        10_000,
        "Longest wait for one payout provider call; past it the withdrawal is treated as processing, in ms.",
    )
    payout_retry_s_max: int = _setting(
        "GIFTING_PAYOUT_RETRY_S_MAX",
        300,
        "A withdrawal the provider keeps `processing` is asked again after a doubling delay up to this, seconds.",
    )
    withdrawals_pending_per_user_max: int = _setting(
        "GIFTING_WITHDRAWALS_PENDING_PER_USER_MAX", 3, "Pending withdrawals one creator may have at once."
    )

    # HTTP limits (gifting/web/edge.py).
    http_body_bytes_max: int = _setting(
        "GIFTING_HTTP_BODY_BYTES_MAX",
        16384,
        "Largest request body, bytes; larger ones get 413 `body_too_large`, refused on Content-Length unread.",
    )
    http_header_bytes_max: int = _setting(
        "GIFTING_HTTP_HEADER_BYTES_MAX", 16384, "Largest request line plus headers, bytes; larger ones get 400."
    )
    http_header_timeout_s: float = _setting(
        "GIFTING_HTTP_HEADER_TIMEOUT_S",
        10.0,
        "A request's line and headers (and then its body) must arrive within this, seconds, from the connection's "
        "start or its previous answer; else it is closed (a body: 408 `request_timeout`).",
    )
    http_idle_timeout_s: int = _setting(
        "GIFTING_HTTP_IDLE_TIMEOUT_S", 5, "A keep-alive connection idle this long after an answer is closed, seconds."
    )
    connections_max: int = _setting(
        "GIFTING_CONNECTIONS_MAX",
        20000,
        "Open connections per web process, websockets included; more get 503 `too_many_connections`. 0: no cap.",
    )
    connections_per_address_max: int = _setting(
        "GIFTING_CONNECTIONS_PER_ADDRESS_MAX",
        256,
        "Open connections per client IP address and process; more get 503 `too_many_connections`. 0: no cap "
        "(behind a proxy that connects from one address).",
    )

    # Websocket limits.
    ws_message_bytes_max: int = _setting(
        "GIFTING_WS_MESSAGE_BYTES_MAX",
        4096,
        "Largest client message; larger ones get error `frame_too_large`.",
    )
    ws_frame_bytes_hard_max: int = _setting(
        "GIFTING_WS_FRAME_BYTES_HARD_MAX",
        65536,
        "Protocol-level cap; a larger frame closes the socket (1009).",
    )
    ws_queue_bytes_max: int = _setting(
        "GIFTING_WS_QUEUE_BYTES_MAX",
        1 << 20,
        "Outgoing bytes queued per connection; over it the client is closed with 4008 and resumes by offset.",
    )
    ws_rooms_per_connection_max: int = _setting(
        "GIFTING_WS_ROOMS_PER_CONNECTION_MAX", 4, "Rooms one connection may join at once."
    )
    ws_invalid_messages_max: int = _setting(
        "GIFTING_WS_INVALID_MESSAGES_MAX",
        20,
        "Invalid messages tolerated per connection before closing (4002).",
    )
    ws_connections_per_user_max: int = _setting(
        "GIFTING_WS_CONNECTIONS_PER_USER_MAX",
        5,
        "Open websockets one user may have on one web process; one more is closed with 4029.",
    )
    ws_message_rate_per_s: float = _setting(
        "GIFTING_WS_MESSAGE_RATE_PER_S",
        30.0,
        "Sustained client messages of any type per connection per second (token bucket); over it: `rate_limited`.",
    )
    ws_message_burst: int = _setting(
        "GIFTING_WS_MESSAGE_BURST", 60, "Client messages one connection may send in a burst (bucket size)."
    )
    ws_join_cost: int = _setting(
        "GIFTING_WS_JOIN_COST",
        10,
        "Messages a `join` or `pool_start` counts as against the budget (a join reads a snapshot and may replay).",
    )
    ws_ping_interval_s: float = _setting("GIFTING_WS_PING_INTERVAL_S", 20.0, "Keepalive ping interval, seconds.")
    shutdown_grace_s: int = _setting(
        "GIFTING_SHUTDOWN_GRACE_S",
        5,
        "On SIGTERM a web process stops accepting, closes its websockets with 1012 and waits this long for requests "
        "in flight (an HTTP gift awaiting settlement) before it cancels them and exits, seconds.",
    )
    tick_ms: int = _setting("GIFTING_TICK_MS", 50, "Hub coalescing tick: one frame per room per tick, in ms.")
    combo_window_ms: int = _setting(
        "GIFTING_COMBO_WINDOW_MS", 3000, "The same gift from the same viewer within this many ms extends a combo."
    )
    big_gift_coins: int = _setting(
        "GIFTING_BIG_GIFT_COINS", 500, "Gifts worth at least this many coins are never merged in viewers' frames."
    )
    frame_events_max: int = _setting(
        "GIFTING_FRAME_EVENTS_MAX", 50, "Entries in one viewers' frame; cheap gifts beyond it become a tick summary."
    )
    merged_gifts_max: int = _setting(
        "GIFTING_MERGED_GIFTS_MAX",
        20,
        "Gift messages one merged viewers' entry stands for (it lists their gift ids); more start a new entry.",
    )
    viewers_interval_ms: int = _setting(
        "GIFTING_VIEWERS_INTERVAL_MS", 2000, "How often approximate viewer counts are shared and pushed, in ms."
    )
    leaderboard_interval_ms: int = _setting(
        "GIFTING_LEADERBOARD_INTERVAL_MS", 2000, "Top gifters are pushed at most this often per room, in ms."
    )
    leaderboard_size: int = _setting("GIFTING_LEADERBOARD_SIZE", 10, "Entries in a pushed top-gifters list.")
    pool_deadline_s_min: int = _setting("GIFTING_POOL_DEADLINE_S_MIN", 10, "Shortest pool deadline, seconds.")
    pool_deadline_s_max: int = _setting("GIFTING_POOL_DEADLINE_S_MAX", 3600, "Longest pool deadline, seconds.")
    pools_per_room_max: int = _setting("GIFTING_POOLS_PER_ROOM_MAX", 3, "Open pools one room may have at once.")
    pools_per_user_max: int = _setting(
        "GIFTING_POOLS_PER_USER_MAX",
        1,
        "Open pools one user may have opened at once, over the rooms of the creators of one ledger partition (a "
        "pool lives in its creator's partition, and the count with it, so it is checked atomically).",
    )
    pool_open_coins_min: int = _setting(
        "GIFTING_POOL_OPEN_COINS_MIN", 1, "Coins a user must hold to open a pool (0: anyone may open one)."
    )
    pool_record_ttl_s: int = _setting(
        "GIFTING_POOL_RECORD_TTL_S",
        90 * 86400,
        "A closed pool's record expires from Valkey this long after it closes, seconds, archived or not (open: "
        "kept): only a safety bound for a server without an archiver; keep it well over GIFTING_POOL_HOT_S.",
    )
    pledge_redrive_ms: int = _setting(
        "GIFTING_PLEDGE_REDRIVE_MS",
        5000,
        "A pledge debited in its pledger's partition whose pool's answer (landed or refused and refunded) is not "
        "applied this long after, milliseconds, is pushed again by the worker (a process died between the steps).",
    )
    campaign_duration_s_max: int = _setting(
        "GIFTING_CAMPAIGN_DURATION_S_MAX",
        90 * 86400,
        "Longest sponsored-gift campaign (end minus start), seconds; a longer one is refused `bad_campaign`.",
    )
    campaign_targets_max: int = _setting(
        "GIFTING_CAMPAIGN_TARGETS_MAX",
        100,
        "Target rooms plus target creators one campaign may name (none: every live room).",
    )
    campaigns_open_max: int = _setting(
        "GIFTING_CAMPAIGNS_OPEN_MAX",
        1000,
        "Campaigns not yet closed, over every brand; creating one more is refused `too_many_campaigns`.",
    )
    campaign_fund_coins_max: int = _setting(
        "GIFTING_CAMPAIGN_FUND_COINS_MAX",
        100_000_000,
        "Most coins one funding (a brand's transfer or an admin grant) adds to a budget; more is `bad_amount`.",
    )
    campaigns_listed_max: int = _setting(
        "GIFTING_CAMPAIGNS_LISTED_MAX",
        50,
        "Campaigns one listing answers: a brand's newest; for a room, those it can send now among this many open "
        "campaigns ending soonest.",
    )
    replay_events_max: int = _setting(
        "GIFTING_REPLAY_EVENTS_MAX",
        1000,
        "Most events replayed on resume; more missed means `recovered: false`.",
    )
    snapshot_events: int = _setting("GIFTING_SNAPSHOT_EVENTS", 20, "Recent events included in a join snapshot (count).")

    # Gifts.
    gift_count_max: int = _setting("GIFTING_GIFT_COUNT_MAX", 999, "Largest `count` in one gift message.")
    gift_rate_per_s: float = _setting(
        "GIFTING_GIFT_RATE_PER_S",
        20.0,
        "Sustained gift messages per user per second (token bucket, per process).",
    )
    gift_burst: int = _setting("GIFTING_GIFT_BURST", 40, "Gift messages a user may send in a burst (bucket size).")
    gift_backlog_max: int = _setting(
        "GIFTING_GIFT_BACKLOG_MAX",
        200_000,
        "Unsettled gifts (stream entries) beyond which new gifts get `overloaded` instead of queueing.",
    )
    gift_result_timeout_ms: int = _setting(
        "GIFTING_GIFT_RESULT_TIMEOUT_MS", 5000, "HTTP gift endpoint: wait for settlement this long, then 202."
    )

    # Settlement worker.
    settle_batch_max: int = _setting(
        "GIFTING_SETTLE_BATCH_MAX", 500, f"Gifts read and settled per Lua call, 1..{SETTLE_BATCH_HARD_MAX}."
    )
    settle_concurrency: int = _setting(
        "GIFTING_SETTLE_CONCURRENCY",
        4,
        "Batches one worker process settles at once, each taking the batches of every partition it leases "
        f"read meanwhile, 1..{SETTLE_CONCURRENCY_MAX}.",
    )
    ledger_partitions: int = _setting(
        "GIFTING_LEDGER_PARTITIONS",
        partitions.PARTITIONS_DEFAULT,
        f"Ledger partitions (hash tags), 1..{partitions.PARTITIONS_MAX}. Fixed at install: the first process "
        "stores it in Valkey and every later one must agree (docs/SCALING.md).",
    )
    partition_lease_ms: int = _setting(
        "GIFTING_PARTITION_LEASE_MS",
        5000,
        "A worker's lease on a partition lasts this long unless renewed (at a third of it); a dead worker's "
        "partitions are taken over after it, in ms.",
    )
    outbox_redrive_ms: int = _setting(
        "GIFTING_OUTBOX_REDRIVE_MS",
        1000,
        "Credits owed to other partitions still in an outbox after this long (their writer failed or died) are "
        "applied again by the partition's worker; bounds the credit lag after a crash, in ms.",
    )
    settle_block_ms: int = _setting("GIFTING_SETTLE_BLOCK_MS", 200, "XREADGROUP BLOCK when the stream is empty.")
    claim_idle_ms: int = _setting(
        "GIFTING_CLAIM_IDLE_MS", 15000, "Entries idle this long with a consumer are reclaimed (XAUTOCLAIM)."
    )
    deliveries_max: int = _setting(
        "GIFTING_DELIVERIES_MAX", 5, "Deliveries of one entry before it goes to the dead-letter stream."
    )
    waitaof_timeout_ms: int = _setting(
        "GIFTING_WAITAOF_TIMEOUT_MS", 2000, "Longest wait for the AOF fsync of a batch before retrying it."
    )
    durable_replicas: int = _setting(
        "GIFTING_DURABLE_REPLICAS",
        0,
        "Replicas that must also have a write in their AOF (WAITAOF) before it counts as done and a gift is "
        "announced; 0: the local AOF only. With a replica per primary, 1: a failover loses nothing acknowledged.",
    )
    heartbeat_ttl_s: int = _setting(
        "GIFTING_HEARTBEAT_TTL_S", 10, "A worker heartbeat older than this makes /readyz fail."
    )
    consumer_idle_s_max: int = _setting(
        "GIFTING_CONSUMER_IDLE_S_MAX",
        3600,
        "A settlement consumer idle this long with no pending entries is removed from the group, seconds.",
    )
    room_end_retry_s: int = _setting(
        "GIFTING_ROOM_END_RETRY_S", 30, "A room end left unfinished (a crash) this long is finished by the worker, s."
    )

    # Archiver (workers/archiver.py): the journal's history moves to PostgreSQL.
    archive_batch_entries: int = _setting(
        "GIFTING_ARCHIVE_BATCH_ENTRIES",
        500,
        "Journal entries the archiver COPYs to PostgreSQL per transaction (a settled batch of gifts is one entry).",
    )
    archive_backlog_max: int = _setting(
        "GIFTING_ARCHIVE_BACKLOG_MAX",
        100_000,
        "Journal entries (a settled batch of gifts is one) allowed to wait in Valkey for the archiver; past it "
        "every debit (gift, pledge, new withdrawal, sponsored gift, perk, ticket, reward accrual) is refused "
        "`archive_backlog` (memory stays bounded, no money is lost). 0: no bound.",
    )
    purchase_hot_s: int = _setting(
        "GIFTING_PURCHASE_HOT_S",
        90 * 86400,
        "How long a purchase record stays in Valkey after it is made (the refund window), seconds; then the "
        "archiver moves it to PostgreSQL, where history, resends, refunds and chargebacks still find it.",
    )
    withdrawal_hot_s: int = _setting(
        "GIFTING_WITHDRAWAL_HOT_S",
        30 * 86400,
        "How long a withdrawal stays in Valkey after it is resolved (paid or failed; a pending one always stays), "
        "seconds; then the archiver moves it to PostgreSQL, where history and resends still find it.",
    )
    summary_hot_s: int = _setting(
        "GIFTING_SUMMARY_HOT_S",
        7 * 86400,
        "How long a stream's summary stays in Valkey after the stream ends, seconds (keep it under the summary's "
        "90-day TTL); then the archiver moves it to PostgreSQL, where the summary and session reads still find it.",
    )
    pool_hot_s: int = _setting(
        "GIFTING_POOL_HOT_S",
        7 * 86400,
        "How long a closed pool's record stays in Valkey after it closes, seconds; then the archiver moves it to "
        "PostgreSQL (dropped from Valkey only once committed there), where GET /v1/pools/{id} still finds it.",
    )
    statement_hot_rows: int = _setting(
        "GIFTING_STATEMENT_HOT_ROWS",
        200,
        "Statement rows per user kept in Valkey once PostgreSQL holds them (count): after each batch the archiver "
        "copies a user's new rows to PostgreSQL and drops the older ones from Valkey; rows not yet archived stay "
        "whatever their number. GET /v1/wallet/transactions reads the dropped ones from PostgreSQL.",
    )
    top_gifters_kept: int = _setting(
        "GIFTING_TOP_GIFTERS_KEPT",
        1000,
        "Gifters kept on each creator's top-gifter board (all time, UTC day, ISO week), count: after each batch "
        "the archiver drops the lowest beyond it (their gifts stay in PostgreSQL's legs); one who returns is "
        "ranked by what they gift from then on.",
    )
    archive_idle_ms: int = _setting(
        "GIFTING_ARCHIVE_IDLE_MS", 200, "The archiver's pause when the journal holds nothing to archive, ms."
    )
    archive_retry_max_s: float = _setting(
        "GIFTING_ARCHIVE_RETRY_MAX_S",
        5.0,
        "Longest pause between the archiver's retries while PostgreSQL or Valkey is unreachable (doubling from "
        "0.1 s), seconds; the entries wait in Valkey's journal meanwhile.",
    )

    # Rooms.
    room_history_events_max: int = _setting(
        "GIFTING_ROOM_HISTORY_EVENTS_MAX", 10000, "Events kept per room for resume (XADD MAXLEN ~)."
    )
    live_rooms_per_creator_max: int = _setting(
        "GIFTING_LIVE_ROOMS_PER_CREATOR_MAX",
        1,
        "Rooms one creator may have live at once; going live again gets 409 `already_live` (at least 1).",
    )
    room_title_chars_max: int = _setting("GIFTING_ROOM_TITLE_CHARS_MAX", 120, "Longest room title, characters.")
    ended_room_ttl_s: int = _setting(
        "GIFTING_ENDED_ROOM_TTL_S", 86400, "How long an ended room's history is kept, seconds."
    )

    # Multi-guest rooms (gifting/rooms/stage.py).
    stage_guests_max: int = _setting(
        "GIFTING_STAGE_GUESTS_MAX", 9, "Guests on a room's stage at once besides the host (more: `too_many_guests`)."
    )
    stage_invite_timeout_s: int = _setting(
        "GIFTING_STAGE_INVITE_TIMEOUT_S", 60, "A stage invite not accepted within this many seconds expires."
    )

    # Matches (gifting/rooms/matches.py).
    match_duration_s: int = _setting(
        "GIFTING_MATCH_DURATION_S", 300, "A match's length when the invite names none, seconds."
    )
    match_duration_s_max: int = _setting(
        "GIFTING_MATCH_DURATION_S_MAX", 900, "Longest match an invite may ask for, seconds (longer: `bad_duration`)."
    )
    match_invite_timeout_s: int = _setting(
        "GIFTING_MATCH_INVITE_TIMEOUT_S", 30, "An invite not accepted within this many seconds expires."
    )
    match_mvps_max: int = _setting(
        "GIFTING_MATCH_MVPS_MAX", 3, "Top gifters (MVPs) of each side named in `match_ended`."
    )
    match_record_ttl_s: int = _setting(
        "GIFTING_MATCH_RECORD_TTL_S",
        90 * 86400,
        "An ended match's record expires from Valkey this long after it ends, seconds, archived or not: only a "
        "safety bound for a server without an archiver; keep it well over GIFTING_MATCH_HOT_S.",
    )
    match_hot_s: int = _setting(
        "GIFTING_MATCH_HOT_S",
        7 * 86400,
        "How long an ended match's record stays in Valkey after it ends, seconds; then the archiver moves it to "
        "PostgreSQL (dropped from Valkey only once committed there), where GET /v1/matches/{id} still finds it.",
    )

    # Reward coins earned by taking part (gifting/ledger/rewards.py, docs/REWARDS.md).
    reward_watch_period_s: int = _setting(
        "GIFTING_REWARD_WATCH_PERIOD_S",
        60,
        "Watch-time accrual period, seconds: a viewer connected to a live room through a whole period, and active "
        "(GIFTING_REWARD_IDLE_S), earns GIFTING_REWARD_WATCH_COINS for it, once however many sockets it has.",
    )
    reward_watch_coins: int = _setting(
        "GIFTING_REWARD_WATCH_COINS", 1, "Reward coins per watch period; 0: watching earns nothing."
    )
    reward_idle_s: int = _setting(
        "GIFTING_REWARD_IDLE_S",
        90,
        "A socket that sent no message (ping, join, gift) for this many seconds is idle and earns nothing.",
    )
    reward_streak_coins: int = _setting(
        "GIFTING_REWARD_STREAK_COINS",
        2,
        "Daily streak bonus per consecutive day watched, reward coins (POST /v1/rewards/streak; 0: none).",
    )
    reward_streak_days_max: int = _setting(
        "GIFTING_REWARD_STREAK_DAYS_MAX", 7, "The streak bonus grows with the streak up to this many days."
    )
    reward_first_gift_coins: int = _setting(
        "GIFTING_REWARD_FIRST_GIFT_COINS", 5, "Reward coins for a viewer's first settled gift of the UTC day; 0: none."
    )
    reward_viewer_day_coins_max: int = _setting(
        "GIFTING_REWARD_VIEWER_DAY_COINS_MAX",
        100,
        "Reward coins one viewer may earn per UTC day, every kind together; an accrual beyond it moves nothing.",
    )
    reward_day_coins_max: int = _setting(
        "GIFTING_REWARD_DAY_COINS_MAX",
        1_000_000,
        "Reward coins the whole platform may pay out of sys:rewards_budget per UTC day; beyond it nothing accrues.",
    )

    # Perks (gifting/perks.py): highlighted messages, entrance effects, premium-stream tickets.
    perk_creator_share_bps: int = _setting(
        "GIFTING_PERK_CREATOR_SHARE_BPS",
        5000,
        "Creator's share of a perk or ticket, basis points (paid as diamonds, rounded down; the rest is the "
        "platform's).",
    )
    highlight_pin_s_per_coin: int = _setting(
        "GIFTING_HIGHLIGHT_PIN_S_PER_COIN",
        2,
        "A highlighted message stays pinned this many seconds per coin paid (up to GIFTING_HIGHLIGHT_PIN_S_MAX).",
    )
    highlight_pin_s_max: int = _setting(
        "GIFTING_HIGHLIGHT_PIN_S_MAX", 3600, "Longest a highlighted message stays pinned, seconds."
    )
    highlight_chars_max: int = _setting(
        "GIFTING_HIGHLIGHT_CHARS_MAX", 200, "Longest highlighted message, characters (longer: `bad_message`)."
    )
    highlight_pins_max: int = _setting(
        "GIFTING_HIGHLIGHT_PINS_MAX", 20, "Pinned messages a room snapshot (`joined.pins`) shows at most, newest."
    )
    entrance_cooldown_s: int = _setting(
        "GIFTING_ENTRANCE_COOLDOWN_S",
        60,
        "A viewer's entrance effect is shown to a room at most once per this many seconds (rejoins are quiet).",
    )
    ticket_coins_max: int = _setting(
        "GIFTING_TICKET_COINS_MAX", 100_000, "Highest premium-stream ticket price a creator may set, coins."
    )
    premium_refund_window_s: int = _setting(
        "GIFTING_PREMIUM_REFUND_WINDOW_S",
        1800,
        "A premium stream that ends sooner than this after it was marked premium refunds every ticket in full, "
        "seconds (0: never).",
    )

    # Fan clubs (gifting/fanclubs.py).
    fanclub_pause_s: int = _setting(
        "GIFTING_FANCLUB_PAUSE_S",
        7 * 86400,
        "A member without activity (a gift to the creator, a visit) for this long is paused: no badge, no member "
        "perks, level kept, until their next activity, seconds.",
    )
    fanclub_visit_points: int = _setting(
        "GIFTING_FANCLUB_VISIT_POINTS",
        10,
        "Fan-club points a member earns for visiting the creator's room, once per UTC day (a coin gifted is 1).",
    )

    # Tokens.
    token_ttl_s: int = _setting("GIFTING_TOKEN_TTL_S", 86400, "Lifetime of tokens minted by `gifting token`.")
    sync_check_interval_s: float = _setting(
        "GIFTING_SYNC_CHECK_INTERVAL_S",
        2.0,
        "How often a web process compares its catalog and token revocations with Valkey's (a missed pub/sub "
        "message is caught up within this), seconds.",
    )
    overlay_token_ttl_s: int = _setting(
        "GIFTING_OVERLAY_TOKEN_TTL_S",
        30 * 86400,
        "Lifetime of a read-only overlay token (POST /v1/overlay-tokens), seconds: the studio mints a new link.",
    )

    # Derived paths, not settings.
    def path(self, *parts: str) -> Path:
        return Path(self.data_dir).joinpath(*parts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from `environ` (default: os.environ); `overrides` win (for tests)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.metadata["env"], raw, type(f.default))
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and not 0 <= value < math.inf:
                raise ConfigError(f"{f.metadata['env']}: expected a finite value >= 0, got {value}")
        if not 0 <= self.creator_share_bps <= 10000:
            raise ConfigError(f"GIFTING_CREATOR_SHARE_BPS: expected 0..10000, got {self.creator_share_bps}")
        if self.tick_ms < 1 or self.settle_batch_max < 1 or self.gift_count_max < 1:
            raise ConfigError("GIFTING_TICK_MS, GIFTING_SETTLE_BATCH_MAX and GIFTING_GIFT_COUNT_MAX must be >= 1")
        if self.archive_batch_entries < 1:
            raise ConfigError(f"GIFTING_ARCHIVE_BATCH_ENTRIES: expected >= 1, got {self.archive_batch_entries}")
        if self.top_gifters_kept < 1:
            raise ConfigError(f"GIFTING_TOP_GIFTERS_KEPT: expected >= 1, got {self.top_gifters_kept}")
        if not 1 <= self.ledger_partitions <= partitions.PARTITIONS_MAX:
            raise ConfigError(
                f"GIFTING_LEDGER_PARTITIONS: expected 1..{partitions.PARTITIONS_MAX}, got {self.ledger_partitions}"
            )
        partitions.configure(self.ledger_partitions)
        if self.partition_lease_ms < 300 or self.outbox_redrive_ms < 1:
            raise ConfigError("GIFTING_PARTITION_LEASE_MS must be >= 300, GIFTING_OUTBOX_REDRIVE_MS >= 1")
        if self.pledge_redrive_ms < 1:
            raise ConfigError(f"GIFTING_PLEDGE_REDRIVE_MS: expected >= 1, got {self.pledge_redrive_ms}")
        if not 1 <= self.settle_concurrency <= SETTLE_CONCURRENCY_MAX:
            raise ConfigError(
                f"GIFTING_SETTLE_CONCURRENCY: expected 1..{SETTLE_CONCURRENCY_MAX}, got {self.settle_concurrency}"
            )
        if self.settle_batch_max > SETTLE_BATCH_HARD_MAX:
            raise ConfigError(
                f"GIFTING_SETTLE_BATCH_MAX: expected 1..{SETTLE_BATCH_HARD_MAX}, got {self.settle_batch_max}"
            )
        if self.secret and len(self.secret.encode()) < SECRET_BYTES_MIN:
            raise ConfigError(
                f"GIFTING_SECRET: expected at least {SECRET_BYTES_MIN} bytes (HS256 key), got {len(self.secret)}"
            )
        if self.sync_check_interval_s <= 0 or self.ws_connections_per_user_max < 1:
            raise ConfigError("GIFTING_SYNC_CHECK_INTERVAL_S must be > 0, GIFTING_WS_CONNECTIONS_PER_USER_MAX >= 1")
        if not 1 <= self.ws_join_cost <= self.ws_message_burst:
            raise ConfigError("GIFTING_WS_JOIN_COST: expected 1..GIFTING_WS_MESSAGE_BURST (else no join ever fits)")
        if self.payouts_per_run_max < 1 or self.pools_per_user_max < 1:
            raise ConfigError("GIFTING_PAYOUTS_PER_RUN_MAX and GIFTING_POOLS_PER_USER_MAX must be >= 1")
        if self.live_rooms_per_creator_max < 1:
            raise ConfigError(
                f"GIFTING_LIVE_ROOMS_PER_CREATOR_MAX: expected at least 1, got {self.live_rooms_per_creator_max}"
            )
        if self.ws_message_bytes_max > self.ws_frame_bytes_hard_max:
            raise ConfigError("GIFTING_WS_MESSAGE_BYTES_MAX must not exceed GIFTING_WS_FRAME_BYTES_HARD_MAX")
        if self.reward_watch_period_s < 1:
            raise ConfigError(f"GIFTING_REWARD_WATCH_PERIOD_S: expected >= 1, got {self.reward_watch_period_s}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"GIFTING_LOG_FORMAT: expected text or json, got {self.log_format!r}")
        if self.worker_metrics_port > 65535:
            raise ConfigError(f"GIFTING_WORKER_METRICS_PORT: expected 0..65535, got {self.worker_metrics_port}")


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}") from None


def markdown_table() -> str:
    """The configuration table for the README."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default != "" else "(empty)"
        rows.append(f"| `{f.metadata['env']}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)


def write_readme_table(path: Path) -> None:
    """Replace the configuration table in the README with the one generated from this module."""
    text = path.read_text()
    start = text.index("| variable | default | meaning |")
    end = text.index("\n\n", start)
    path.write_text(text[:start] + markdown_table() + text[end:])
