"""Versioned schema migrations for the history database, run by `gifting migrate` (and at start-up in dev).

Each migration runs once, in its own transaction, with its version recorded in the same transaction; a
migration is never edited after it ships (add a new one). An advisory lock keeps two starting processes from
migrating at once.
"""

from __future__ import annotations

import psycopg

from gifting import keys

MIGRATE_LOCK = 7_817_001  # pg_advisory_xact_lock key held while migrating

# The journal keeps each Valkey journal entry as it was: (stream, id) is its identity, so archiving it twice is
# impossible (primary key), and `fields` is the entry as the audit reads it (ledger/rules parses it).
# archive_cursor: per journal stream, the newest entry committed here; the archiver's only state.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE journal (
            stream text NOT NULL,
            ms bigint NOT NULL,
            seq bigint NOT NULL,
            kind text NOT NULL,
            fields jsonb NOT NULL,
            PRIMARY KEY (stream, ms, seq)
        );
        CREATE TABLE archive_cursor (
            stream text PRIMARY KEY,
            ms bigint NOT NULL,
            seq bigint NOT NULL
        );
        """,
    ),
    (
        2,
        # One row per leg, written with its journal row: what the daily totals (and an accountant's queries)
        # read without parsing the journal's packed batches. `day` is the UTC day of the journal entry.
        """
        CREATE TABLE legs (
            stream text NOT NULL,
            ms bigint NOT NULL,
            seq bigint NOT NULL,
            transfer text NOT NULL,
            kind text NOT NULL,
            ledger text NOT NULL,
            debit text NOT NULL,
            credit text NOT NULL,
            amount bigint NOT NULL CHECK (amount > 0),
            day date NOT NULL,
            FOREIGN KEY (stream, ms, seq) REFERENCES journal ON DELETE CASCADE
        );
        CREATE INDEX legs_day ON legs (day);
        CREATE VIEW daily_totals AS
            SELECT day, kind, ledger, count(DISTINCT transfer) AS transfers, sum(amount) AS amount
            FROM legs GROUP BY day, kind, ledger;
        """,
    ),
    (
        3,
        # Statement rows that Valkey dropped (it keeps the newest GIFTING_STATEMENT_HOT_ROWS per user), copied
        # as Valkey holds them: (account, seq) is the row's place in the user's statement, the id the API shows,
        # so a page reads seqs below Valkey's oldest from here and the rest from Valkey, with no gap or overlap.
        # statement_cursor: per account, the rows held here (seqs 0..upto-1) and the journal batch that last
        # moved it (an archiver restarted after that batch's commit trims those accounts again).
        """
        CREATE TABLE statements (
            account text NOT NULL,
            seq bigint NOT NULL,
            line text NOT NULL,
            PRIMARY KEY (account, seq)
        );
        CREATE TABLE statement_cursor (
            account text PRIMARY KEY,
            upto bigint NOT NULL,
            batch_ms bigint NOT NULL,
            batch_seq bigint NOT NULL
        );
        CREATE INDEX statement_cursor_batch ON statement_cursor (batch_ms, batch_seq);
        """,
    ),
    (
        4,
        # Resolved withdrawals past GIFTING_WITHDRAWAL_HOT_S, stream summaries past GIFTING_SUMMARY_HOT_S and
        # closed pools (final: written once, keyed by id or room; `fields`/`record`: the Valkey record as it was).
        # A pool's pledges are journal entries: the view `pledges`.
        # Purchase records past Valkey's hot window (GIFTING_PURCHASE_HOT_S), keyed by purchase id: an upsert
        # keeps the newest status (a refund of an archived purchase restores it to Valkey, which archives it
        # again). The accountant's views read the journal and its legs: a purchase's journal entry carries its
        # bundle, currency and price (older entries: NULL), and a refund or chargeback names it in `ref`.
        f"""
        CREATE TABLE purchases (
            id text PRIMARY KEY,
            account text NOT NULL,
            status text NOT NULL,
            coins bigint NOT NULL,
            fp text NOT NULL,
            record jsonb NOT NULL,
            made_ms bigint NOT NULL,
            reversed_ms bigint
        );
        CREATE INDEX purchases_account ON purchases (account, made_ms DESC);
        CREATE TABLE withdrawals (
            id text PRIMARY KEY,
            account text NOT NULL,
            diamonds bigint NOT NULL,
            status text NOT NULL,
            fp text NOT NULL,
            fields jsonb NOT NULL,
            created_ms bigint NOT NULL,
            resolved_ms bigint NOT NULL
        );
        CREATE INDEX withdrawals_account ON withdrawals (account, created_ms DESC);
        CREATE TABLE summaries (
            room text PRIMARY KEY,
            creator text NOT NULL,
            ended_ms bigint NOT NULL,
            summary jsonb NOT NULL
        );
        CREATE INDEX summaries_creator ON summaries (creator, ended_ms DESC);
        CREATE TABLE pools (
            id text PRIMARY KEY,
            room text NOT NULL,
            creator text NOT NULL,
            status text NOT NULL,
            closed_ms bigint NOT NULL,
            record jsonb NOT NULL
        );
        CREATE VIEW pledges AS
            SELECT l.transfer AS pledge, j.fields->>'ref' AS pool, l.debit AS account, l.amount AS coins, l.day
            FROM legs l JOIN journal j USING (stream, ms, seq) WHERE l.kind = 'pledge_pending';
        CREATE INDEX journal_purchase_id ON journal ((fields->>'id')) WHERE kind = 'purchase';
        CREATE VIEW daily_sales AS
            SELECT l.day, j.fields->>'bundle' AS bundle, j.fields->>'currency' AS currency,
                   count(*) AS purchases, sum(l.amount) AS coins_sold,
                   sum((j.fields->>'price_minor')::bigint) AS money_minor
            FROM legs l JOIN journal j USING (stream, ms, seq)
            WHERE l.kind = 'purchase' GROUP BY 1, 2, 3;
        CREATE VIEW daily_reversals AS
            SELECT l.day, l.kind, p.fields->>'bundle' AS bundle, p.fields->>'currency' AS currency,
                   count(*) AS reversals, sum(l.amount) AS coins,
                   sum((p.fields->>'price_minor')::bigint) AS money_minor
            FROM legs l JOIN journal r USING (stream, ms, seq)
            LEFT JOIN journal p ON p.kind = 'purchase' AND p.fields->>'id' = r.fields->>'ref'
            WHERE l.kind IN ('refund', 'chargeback') GROUP BY 1, 2, 3, 4;
        CREATE VIEW daily_ledger AS
            SELECT day,
                   coalesce(sum(amount) FILTER (WHERE ledger = 'coins'
                       AND credit IN ('{keys.SYS_PLATFORM_REVENUE}', '{keys.SYS_CREATOR_EARNINGS}')), 0) AS coins_spent,
                   coalesce(sum(amount) FILTER (WHERE ledger = 'diamonds'
                       AND debit = '{keys.SYS_DIAMOND_ISSUANCE}'), 0) AS diamonds_earned,
                   coalesce(sum(amount) FILTER (WHERE ledger = 'diamonds'
                       AND credit = '{keys.SYS_DIAMONDS_PAID_OUT}'), 0) AS diamonds_paid_out
            FROM legs GROUP BY day;
        """,
    ),
    (
        5,
        # Ended matches past GIFTING_MATCH_HOT_S (final: written once, keyed by id; `record`: the Valkey record
        # as it was, shown as GET /v1/matches/{id} shows it). Their gifts are journal entries.
        """
        CREATE TABLE matches (
            id text PRIMARY KEY,
            ended_ms bigint NOT NULL,
            record jsonb NOT NULL
        );
        """,
    ),
    (
        6,
        # The partitioned ledger (docs/SCALING.md "Stage 2"): each partition has its own journal stream, whose
        # ids are its own, so an archived entry is keyed by (partition, stream id). `part` is the partition's
        # number, read from the stream's tag '{ledger:P.K}:journal' (NULL for the single '{ledger}:journal' of
        # an installation from before the partitions); legs carry it too, for per-partition queries.
        r"""
        ALTER TABLE journal ADD COLUMN part integer
            GENERATED ALWAYS AS (substring(stream FROM '^\{ledger:([0-9]+)\.[0-9]+\}')::integer) STORED;
        CREATE UNIQUE INDEX journal_part_id ON journal (part, ms, seq);
        ALTER TABLE legs ADD COLUMN part integer
            GENERATED ALWAYS AS (substring(stream FROM '^\{ledger:([0-9]+)\.[0-9]+\}')::integer) STORED;
        """,
    ),
    (
        7,
        # Pools on partitions (docs/SCALING.md "Pooled gifts"): a pledge lands in its pool's partition from
        # sys:transit (its coins left the pledger's partition first), so the pledger is the entry's `account`
        # field; older entries' legs name the pledger as the debit.
        """
        CREATE OR REPLACE VIEW pledges AS
            SELECT l.transfer AS pledge, j.fields->>'ref' AS pool, coalesce(j.fields->>'account', l.debit) AS account,
                   l.amount AS coins, l.day
            FROM legs l JOIN journal j USING (stream, ms, seq) WHERE l.kind = 'pledge_pending';
        """,
    ),
)


def migrate(url: str) -> list[int]:
    """Apply every migration not yet applied; returns the versions applied now."""
    applied: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int PRIMARY KEY, applied_at timestamptz)")
        for version, sql in MIGRATIONS:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                if conn.execute("SELECT 1 FROM schema_version WHERE version = %s", (version,)).fetchone():
                    continue
                conn.execute(sql.encode())
                conn.execute("INSERT INTO schema_version VALUES (%s, now())", (version,))
                applied.append(version)
    return applied
