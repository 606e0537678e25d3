"""The accountant's report of one UTC day, from the history database's views (migrations 2 and 4).

Sections: the transfers per kind and ledger (daily_totals); coins sold and money taken per bundle and currency
(daily_sales); refunds and chargebacks per bundle and currency (daily_reversals); coins spent on gifts,
diamonds earned and diamonds paid out (daily_ledger). Money is in minor units of its currency, never converted
or summed across currencies. Only archived journal entries count: the archiver's backlog is not in it yet.
"""

from __future__ import annotations

import datetime
from typing import Any

import psycopg

SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "totals": ("daily_totals", ("kind", "ledger", "transfers", "amount")),
    "sales": ("daily_sales", ("bundle", "currency", "purchases", "coins_sold", "money_minor")),
    "reversals": ("daily_reversals", ("kind", "bundle", "currency", "reversals", "coins", "money_minor")),
    "ledger": ("daily_ledger", ("coins_spent", "diamonds_earned", "diamonds_paid_out")),
}
TEXT_COLUMNS = {"kind", "ledger", "bundle", "currency"}
TITLES = {
    "sales": "coins sold and money taken, per bundle and currency (money in minor units)",
    "reversals": "refunds and chargebacks, per bundle and currency of the purchase reversed",
    "ledger": "coins spent on gifts (platform + creator shares), diamonds earned, diamonds paid out",
}


def read(conn: psycopg.Connection[Any], day: datetime.date) -> dict[str, list[dict[str, Any]]]:
    """Every section's rows for `day`, sorted by their text columns."""
    report: dict[str, list[dict[str, Any]]] = {}
    for section, (view, columns) in SECTIONS.items():
        sql = f"SELECT {', '.join(columns)} FROM {view} WHERE day = %s ORDER BY {', '.join(columns)}"
        rows = conn.execute(sql.encode(), (day,)).fetchall()
        report[section] = [dict(zip(columns, (_plain(v) for v in row), strict=True)) for row in rows]
    if not report["ledger"]:
        report["ledger"] = [dict.fromkeys(SECTIONS["ledger"][1], 0)]
    return report


def _plain(value: Any) -> Any:
    """Integers as int (sums come back as Decimal), NULL text (an entry older than its field) as '-'."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else int(value)


def render(day: datetime.date, report: dict[str, list[dict[str, Any]]]) -> str:
    """A readable text table per section; the first is the transfers per kind and ledger."""
    lines = [f"archived transfers on {day.isoformat()} (UTC; entries still only in Valkey are not counted)"]
    lines += _table(SECTIONS["totals"][1], report["totals"], (20, 9, 10, 16))
    for section in ("sales", "reversals", "ledger"):
        columns = SECTIONS[section][1]
        lines += ["", f"== {TITLES[section]}"]
        lines += _table(columns, report[section], tuple(max(12, len(c)) for c in columns))
    return "\n".join(lines)


def _table(columns: tuple[str, ...], rows: list[dict[str, Any]], widths: tuple[int, ...]) -> list[str]:
    def line(values: list[Any]) -> str:
        return " ".join(
            f"{v:>{w}}" if isinstance(v, int) else f"{v or '-':<{w}}" for v, w in zip(values, widths, strict=True)
        )

    header = " ".join(f"{c:<{w}}" if c in TEXT_COLUMNS else f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))
    return [header.rstrip(), *(line([row[c] for c in columns]).rstrip() for row in rows)]
