"""Fault 2 (SQLite): the store file is locked by another process for a while.

Another process holds ``BEGIN EXCLUSIVE`` on the database, so every write
waits for the busy timeout and fails. Publishers must get a quick 503 JSON
with Retry-After (never a hang, never a 500), open streams must keep their
heartbeats, workers must stay up, and once the lock is gone everything
published is delivered exactly once.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.eventsource import EventSourceClient
from tests.support.faults import stored_ids
from tests.support.waiting import wait_until

ROOM = "outage"
STREAMS = 20
PUBLISHERS = 8

_LOCK_HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()  # hold the lock until the test says so
conn.execute("COMMIT")
print("released", flush=True)
"""


def _post(url: str, text: str) -> tuple[int, float, requests.Response]:
    started = time.monotonic()
    reply = requests.post(url + "/messages", json={"room": ROOM, "text": text}, timeout=30)
    return reply.status_code, time.monotonic() - started, reply


@pytest.mark.slow
def test_locked_sqlite_store_answers_503_quickly_and_loses_nothing(start_server, sqlite_path):
    server = start_server(HEARTBEAT_SECONDS="0.5", RETRY_MS="300")
    workers = set(server.worker_pids())
    clients = [EventSourceClient("127.0.0.1", server.port, ROOM) for _ in range(STREAMS)]
    outcome: dict = {}

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 30)
        for number in range(3):
            assert server.publish(ROOM, f"before {number}")
        holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, sqlite_path],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            heartbeats_before = [client.parser.comments for client in clients]
            locked_at = time.monotonic()
            with ThreadPoolExecutor(PUBLISHERS) as pool:
                outcome["during"] = await asyncio.to_thread(
                    lambda: list(pool.map(lambda n: _post(server.url, f"during {n}"), range(2 * PUBLISHERS))))
            outcome["locked_for"] = time.monotonic() - locked_at
            outcome["heartbeats"] = [client.parser.comments - before
                                     for client, before in zip(clients, heartbeats_before, strict=True)]
        finally:
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            holder.wait()
        for number in range(5):
            assert server.publish(ROOM, f"after {number}")
        expected = stored_ids(sqlite_path, ROOM)
        await asyncio.to_thread(wait_until, lambda: all(len(c.messages) >= len(expected) for c in clients), 15)
        await asyncio.sleep(0.5)  # a quiet period: a duplicate, if any, would arrive now
        for client in clients:
            client.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(scenario())
    during = outcome["during"]
    durations = sorted(duration for _, duration, _ in during)
    print(f"\nSQLite locked for {outcome['locked_for']:.1f}s: {len(during)} POSTs from {PUBLISHERS} threads -> "
          f"statuses {sorted({status for status, _, _ in during})}, "
          f"answered in {durations[0]:.2f}..{durations[-1]:.2f}s; "
          f"heartbeats per stream meanwhile {min(outcome['heartbeats'])}..{max(outcome['heartbeats'])}")

    for status, _, reply in during:
        assert status == 503
        assert reply.headers["Retry-After"] == "2"
        assert reply.json()["code"] == 503 and reply.json()["status"] == "Service Unavailable"
    assert durations[-1] < 5.0  # about the 2 s busy timeout, never a hang
    assert min(outcome["heartbeats"]) >= 2
    assert set(server.worker_pids()) == workers  # no crash, no respawn
    assert "Traceback" not in server.log_path.read_text()  # an outage is a warning, not a crash
    expected = stored_ids(sqlite_path, ROOM)
    assert len(expected) == 8  # the 3 before and 5 after; nothing from the failed POSTs
    for client in clients:
        assert len(client.connections) == 1
        assert [event.id for event in client.messages] == expected
