"""The on-call commands (gifting/ops.py, `gifting dead-letters|replay|wallet|backlog|withdrawal`) against a real
Valkey, each run twice."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from gifting import gifts, keys, ops
from gifting.payments import PAYOUT_SLOW
from tests.conftest import REPO, SECRET, System, gift_id, make_settings
from tests.test_payouts import withdraw
from workers.settlement import SettlementWorker


async def park(system: System, gid: str, room: str, sender: str) -> str:
    """Put a gift request on the dead-letter stream the way the worker does when it gives up on an entry."""
    request = gifts.new_request(
        gift_id=gid, room=room, gift="rose", count=1, sender=sender, sender_name=sender, hub="", price=1
    )
    part = keys.part_of_user(sender)  # a gift is in its payer's partition's streams
    entry_id: str = await system.redis.xadd(keys.gifts_stream(part), {"x": "1"})  # an id it had in the stream
    await system.redis.xdel(keys.gifts_stream(part), entry_id)
    dead = {**request.to_entry(), "entry_id": entry_id, "error": "script failed: busy", "ts": "1"}
    dead_id: str = await system.redis.xadd(keys.gifts_dead_letter(part), dead)  # type: ignore[arg-type]
    return f"{part}/{dead_id}"  # as dead-letters names it


async def settled_once(system: System, user: str, coins: int) -> None:
    """Wait (bounded) until `user` has `coins` left and the gifts stream is empty."""
    for _ in range(200):
        wallet = await system.wallet(user)
        if wallet["coins"] == coins and await system.redis.xlen(keys.gifts_stream(keys.part_of_user(user))) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{user}: {await system.wallet(user)}")


async def test_replay_moves_a_dead_letter_back_once_and_settles_each_gift_once(system: System) -> None:
    """Replayed twice, an entry moves once; two dead entries of one gift id charge the viewer once."""
    room = await system.open_room()
    await system.grant("v1", 10)
    gid = gift_id()
    first, second = await park(system, gid, room, "v1"), await park(system, gid, room, "v1")
    listed = await ops.dead_letters(system.redis, 20)
    assert listed["total"] == 2 and [e["id"] for e in listed["entries"]] == [first, second]
    assert listed["entries"][0]["error"] == "script failed: busy" and "g" in listed["entries"][0]["fields"]

    assert await ops.replay(system.redis, [first]) == {"replayed": 1, "entries": {first: "replayed"}}
    assert await ops.replay(system.redis, [first]) == {"replayed": 0, "entries": {first: "not_found"}}
    await settled_once(system, "v1", 9)
    assert (await ops.replay(system.redis, None))["entries"] == {second: "replayed"}  # --all: the same gift id
    assert (await ops.replay(system.redis, None))["replayed"] == 0
    await settled_once(system, "v1", 9)  # its idempotency record answered: not charged twice
    assert (await ops.dead_letters(system.redis, 20))["total"] == 0


async def test_wallet_and_backlog_show_balances_statement_streams_and_heartbeats(system: System) -> None:
    """wallet shows balances and statement rows; backlog shows the gifts stream, its consumers and the worker."""
    room = await system.open_room()
    await system.buy("v1", "coins_65")
    sent = await system.http.post(
        f"/v1/rooms/{room}/gifts", headers=system.auth("v1"), json={"gift": "rose", "count": 1, "gift_id": gift_id()}
    )
    assert sent.json()["status"] == "settled", sent.text
    wallet = await ops.wallet(system.redis, system.settings, "v1", 5)
    assert wallet["coins"] == 64 and wallet["diamonds"] == 0
    assert [row["kind"] for row in wallet["statement"]][:2] == ["gift_sent", "purchase"], wallet["statement"]
    for _ in range(100):  # the worker's first heartbeat
        backlog = await ops.backlog(system.redis, system.settings)
        if backlog["workers"]:
            break
        await asyncio.sleep(0.05)
    assert backlog["gifts"]["length"] == 0 and backlog["gifts"]["pending"] == 0
    assert backlog["workers"][0]["alive"] and backlog["dead_letters"]["length"] == 0
    assert any(w["consumer"] == system.worker.consumer for w in backlog["workers"])  # type: ignore[union-attr]
    assert backlog["gifts"]["consumers"]  # the partition loops' group consumers (settler-N in every process)


async def test_post_or_void_a_stuck_withdrawal_twice_answers_what_it_is(redis: aioredis.Redis, tmp_path: Path) -> None:
    """void (status failed) returns the diamonds once; a second void, or a post after, changes nothing, says so."""
    settings = make_settings(tmp_path, withdrawal_diamonds_min=1, diamond_hold_s=0)
    worker = SettlementWorker(redis, settings)
    stuck = await withdraw(worker.ledger, "c1", "k0", PAYOUT_SLOW, diamonds=7)
    assert (await ops.withdrawal(redis, settings, stuck, "show", ""))["withdrawal"]["status"] == "pending"
    voided = await ops.withdrawal(redis, settings, stuck, "void", "provider_lost_it")
    assert voided["changed"] and voided["withdrawal"]["status"] == "failed"
    assert voided["withdrawal"]["reason"] == "provider_lost_it"
    assert (await worker.ledger.wallet("c1"))["diamonds"] == 7
    for action in ("void", "post"):
        again = await ops.withdrawal(redis, settings, stuck, action, "")
        assert not again["changed"] and again["withdrawal"]["status"] == "failed", again
        assert "not pending" in again["message"]
    assert (await worker.ledger.wallet("c1"))["diamonds"] == 7
    paid = await withdraw(worker.ledger, "c1", "k1", PAYOUT_SLOW, diamonds=7)
    assert (await ops.withdrawal(redis, settings, paid, "post", ""))["withdrawal"]["status"] == "paid"
    assert not (await ops.withdrawal(redis, settings, paid, "post", ""))["changed"]


def gifting_cli(valkey_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": valkey_url, "GIFTING_SECRET": SECRET, "GIFTING_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "gifting.cli", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)


async def test_the_commands_answer_json_and_refuse_what_is_not_there(
    redis: aioredis.Redis, valkey_url: str, tmp_path: Path
) -> None:
    """`gifting backlog` prints JSON; an unknown withdrawal or a replay of nothing exits 1 with the reason."""
    backlog = await asyncio.to_thread(gifting_cli, valkey_url, tmp_path, "backlog")
    assert backlog.returncode == 0, backlog.stderr
    assert orjson.loads(backlog.stdout)["gifts"]["length"] == 0
    unknown = await asyncio.to_thread(gifting_cli, valkey_url, tmp_path, "withdrawal", "w_nope", "void")
    assert unknown.returncode == 1 and "no withdrawal 'w_nope'" in unknown.stderr
    nothing = await asyncio.to_thread(gifting_cli, valkey_url, tmp_path, "replay")
    assert nothing.returncode == 1 and "--all" in nothing.stderr
    listed = await asyncio.to_thread(gifting_cli, valkey_url, tmp_path, "dead-letters", "--count", "5")
    assert listed.returncode == 0 and orjson.loads(listed.stdout)["total"] == 0
    bad = await asyncio.to_thread(gifting_cli, valkey_url, tmp_path, "dead-letters", "--count", "0")
    assert bad.returncode == 2 and "expected 1..1000" in bad.stderr


def test_every_command_is_dispatched() -> None:
    """Every subcommand ops.add_commands declares is one ops.run answers."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    ops.add_commands(sub)
    assert set(sub.choices) == set(ops.COMMANDS)
