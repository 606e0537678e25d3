"""What a load-test client checks in what it receives. Pure: no I/O, no gevent, no locust (unit-testable).

FeedChecker: the room events one socket receives arrive exactly once and in order.
  Every `events` frame that carries room events says which offsets it covers (`from`, `to`). The creator's
  feed has every event, so its offsets must go up by exactly 1 from `joined.offset` (or from `since.offset`
  after a recovered resume). A viewer's frame may merge a combo's cheap gifts into one entry or count the
  overflow in a `tick_summary` (gifting/live/coalesce.py), so for viewers it is the frames that must tile the
  offsets without gap or overlap (each `from` is the previous `to` + 1), and the entries inside a frame must
  be strictly increasing and within [from, to]. Events without an `offset` (viewers, leaderboard, combo_end,
  tick_summary, ...) are ephemeral and not part of the check.

OwnGifts: a sender's gifts, from `gift` to `gift_result` to its own animation in its room feed.
  Each gift gets exactly one result; each settled gift appears in the sender's feed exactly once (possibly
  merged with other gifts of its combo: a merged entry lists every gift it stands for in `gift_ids`, so it is
  matched by id, never guessed from send order, which settlement does not keep). A gift without a result, or
  settled but not shown, within the timeout is a problem, and so is a gift shown twice or shown although
  rejected. A settled gift counted in a `tick_summary` (its frame was over the entry limit) is accounted for
  by id too: the sender's own copy of that summary lists its gifts in `gift_ids`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]

# Rejections that are back-pressure, not bugs: nothing was recorded and the same gift_id may be resent.
RETRIABLE_REASONS = ("rate_limited", "overloaded")
DONE_IDS_KEPT = 20_000  # finished gift ids remembered to tell a duplicate from an unknown id


class FeedChecker:
    """Offsets of one room as seen by one socket (see the module docstring). Problems are returned as text."""

    def __init__(self, full_feed: bool) -> None:
        self.full_feed = full_feed  # the creator's feed: every event, no merging
        self.epoch: str | None = None
        self.last: int | None = None  # the last offset this socket has (processed or covered)
        self.summaries = 0  # tick_summary entries seen (viewers' frames over their entry limit)

    def start(self, epoch: str, offset: int) -> None:
        """After `joined`: events with offsets above `offset` follow, each exactly once."""
        self.epoch, self.last = epoch, offset

    def frame(self, frame: Event) -> list[str]:
        """Check one `events` frame; the checker resyncs after a problem so one gap is reported once."""
        entries: list[Event] = frame.get("events") or []
        numbered = [e for e in entries if isinstance(e, dict) and "offset" in e]
        self.summaries += sum(1 for e in entries if isinstance(e, dict) and e.get("kind") == "tick_summary")
        if not numbered and "from" not in frame:
            return []
        if self.last is None:
            return [f"events frame before joined: {_describe(frame)}"]
        problems: list[str] = []
        offsets = [e["offset"] for e in numbered]
        low = frame.get("from", offsets[0] if offsets else None)
        high = frame.get("to", offsets[-1] if offsets else None)
        if not isinstance(low, int) or not isinstance(high, int) or low > high:
            return [f"bad offset range from={low!r} to={high!r} in {_describe(frame)}"]
        expected = self.last + 1
        if low > expected:
            problems.append(f"gap: offsets {expected}..{low - 1} never arrived ({_describe(frame)})")
        elif low < expected:
            problems.append(f"duplicate: offsets {low}..{min(high, self.last)} arrived again ({_describe(frame)})")
        previous = low - 1
        for offset in offsets:
            if not isinstance(offset, int) or offset <= previous:
                problems.append(f"out of order: offset {offset!r} after {previous} ({_describe(frame)})")
            elif offset > high:
                problems.append(f"offset {offset} outside its frame's range {low}..{high}")
            elif self.full_feed and offset != previous + 1:
                problems.append(f"gap in the full feed: offsets {previous + 1}..{offset - 1} missing")
            if isinstance(offset, int):
                previous = max(previous, offset)
        if self.full_feed and previous != high:
            problems.append(f"gap in the full feed: offsets {previous + 1}..{high} missing")
        self.last = max(self.last, high)
        return problems


def _describe(frame: Event) -> str:
    offsets = [e.get("offset") for e in frame.get("events") or [] if isinstance(e, dict)]
    return (
        f"frame from={frame.get('from')} to={frame.get('to')} offsets={offsets[:8]}{'...' if len(offsets) > 8 else ''}"
    )


@dataclass(slots=True)
class Pending:
    gift_id: str
    gift: str
    cost: int
    sent_at: float
    queued: bool = True  # False while waiting to be resent after a retriable rejection
    status: str | None = None  # settled | rejected, from gift_result
    result_at: float = 0.0
    animated: bool = False
    late: bool = False  # reported without a result in time: a late result still counts, without a latency


@dataclass(slots=True)
class Outcome:
    """What happened, for the caller to report: latencies in seconds, problems as text."""

    result_s: list[tuple[str, float]]  # (status or 'rejected: reason', latency)
    animation_s: list[float]
    summarized: int  # own gifts counted in a tick_summary (listed in the sender's copy)
    problems: list[str]
    retry: list[str]  # gift ids to resend (retriable rejection)


def _outcome() -> Outcome:
    return Outcome([], [], 0, [], [])


class OwnGifts:
    """One sender's gifts in flight. Times are seconds from any monotonic clock; costs are coins."""

    def __init__(self) -> None:
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.done: deque[str] = deque(maxlen=DONE_IDS_KEPT)
        self._done_set: set[str] = set()
        self.expired: set[str] = set()  # settled, reported as not shown in time: a late appearance is no news
        self.settled_cost = 0
        self.settled = 0

    # bookkeeping -------------------------------------------------------------------------------------------

    def inflight_cost(self) -> int:
        return sum(p.cost for p in self.pending.values() if p.status is None)

    def unresolved(self) -> int:
        """Gifts whose result or animation is still awaited."""
        return len(self.pending)

    def _finish(self, gift_id: str) -> None:
        self.pending.pop(gift_id, None)
        if len(self.done) == self.done.maxlen:
            self._done_set.discard(self.done[0])
        self.done.append(gift_id)
        self._done_set.add(gift_id)

    def _maybe_finish(self, record: Pending) -> None:
        if record.status == "rejected" or (record.status == "settled" and record.animated):
            self._finish(record.gift_id)

    # events ------------------------------------------------------------------------------------------------

    def sent(self, gift_id: str, gift: str, cost: int, now: float) -> None:
        record = self.pending.get(gift_id)
        if record is None:
            self.pending[gift_id] = Pending(gift_id, gift, cost, now)
        else:  # a resend of the same gift_id after a retriable rejection
            record.sent_at, record.queued = now, True

    def result(self, message: Event, now: float) -> Outcome:
        """A `gift_result` (or an `error` naming a gift_id)."""
        out = _outcome()
        gift_id = message.get("gift_id", "")
        record = self.pending.get(gift_id)
        if record is None or record.status is not None or not record.queued:
            seen = "again" if gift_id in self._done_set or record is not None else "for an unknown gift_id"
            out.problems.append(f"gift_result {seen}: {message}")
            return out
        latency = now - record.sent_at
        if message.get("type") == "error":
            out.problems.append(f"gift {gift_id}: error {message.get('code')}: {message.get('message')}")
            self._finish(gift_id)
            return out
        status, reason = message.get("status"), message.get("reason")
        if status == "settled":
            record.status, record.result_at = "settled", now
            self.settled += 1
            self.settled_cost += record.cost
            if not record.late:
                out.result_s.append(("settled", latency))
        elif status == "rejected" and reason in RETRIABLE_REASONS:
            record.queued = False
            out.result_s.append((f"rejected: {reason}", latency))
            out.retry.append(gift_id)
            return out
        elif status == "rejected":
            record.status, record.result_at = "rejected", now
            if not record.late:
                out.result_s.append((f"rejected: {reason}", latency))
            if record.animated:
                out.problems.append(f"gift {gift_id} was rejected ({reason}) but appeared in the room")
        else:
            out.problems.append(f"gift_result with status {status!r}: {message}")
            record.status = "rejected"
        self._maybe_finish(record)
        return out

    def frame(self, own_entries: list[Event], summarized: list[str], now: float) -> Outcome:
        """This sender's own gift entries (in frame order) and the ids its own copy of the frame's tick_summary
        lists, from one `events` frame of its room. Each gift is shown or summarized exactly once."""
        out = _outcome()
        for gift_id in summarized:
            out.summarized += 1
            self._shown(gift_id, {"kind": "tick_summary"}, now, out, animated=False)
        for entry in own_entries:
            gift_ids = merged_gift_ids(entry)
            if len(gift_ids) != entry.get("merged", 1):
                out.problems.append(f"own entry {entry.get('gift_id')}: merged={entry.get('merged')} but {gift_ids=}")
            for gift_id in gift_ids:
                self._shown(gift_id, entry, now, out)
        return out

    def _shown(self, gift_id: str, entry: Event, now: float, out: Outcome, animated: bool = True) -> None:
        """One of this sender's gifts appeared (alone or in a merged entry): expected exactly once, if settled."""
        record = self.pending.get(gift_id)
        if record is None and gift_id in self.expired:
            self.expired.discard(gift_id)
            return
        if record is None or record.animated:
            seen = "twice" if gift_id in self._done_set or record is not None else "but was never sent"
            out.problems.append(f"own gift {gift_id} appeared {seen} (offset {entry.get('offset')})")
            return
        if record.status == "rejected" or not record.queued:
            state = "rejected" if record.status == "rejected" else "awaiting a resend (retriable rejection)"
            out.problems.append(f"own gift {gift_id} appeared in the room but it was {state}")
        record.animated = True  # shown, or counted in a summary: either way accounted for, once
        if animated:
            out.animation_s.append(now - record.sent_at)
        self._maybe_finish(record)

    def overdue(self, now: float, timeout_s: float) -> Outcome:
        """Gifts without a result, or settled without an animation, for longer than `timeout_s`."""
        out = _outcome()
        for record in list(self.pending.values()):
            if not record.queued:
                continue
            if record.status is None and not record.late and now - record.sent_at > timeout_s:
                out.problems.append(f"gift {record.gift_id}: no gift_result within {timeout_s:g} s")
                record.late = True  # still awaited: its result decides what the balance should be
            elif record.status == "settled" and not record.animated and now - record.result_at > timeout_s:
                out.problems.append(f"gift {record.gift_id} settled but did not appear within {timeout_s:g} s")
                self.expired.add(record.gift_id)
                self._finish(record.gift_id)
        return out


def merged_gift_ids(entry: Event) -> list[str]:
    """The gifts a room entry stands for: a merged entry lists them in `gift_ids`; any other is its `gift_id`."""
    gift_ids = entry.get("gift_ids")
    if isinstance(gift_ids, list):
        return [str(g) for g in gift_ids]
    return [str(entry.get("gift_id", ""))]
