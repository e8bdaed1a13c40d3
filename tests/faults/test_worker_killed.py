"""Fault 1: a worker killed with SIGKILL under load loses no message for any client, on either store.

On MongoDB the killed worker's clients come back to a worker that warms its
window from the capped collection (its tailable cursor starts at the oldest
document), while the surviving worker's tailer keeps following.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.support.eventsource import EventSourceClient
from tests.support.faults import metric
from tests.support.stores import FerretDBWorkarounds, RecordingPublisher, history_ids, stored_ids_reader
from tests.support.waiting import wait_until

STREAMS = 200
ROOMS = [f"kill-{n}" for n in range(4)]


@pytest.fixture
def kind(request, store_env) -> str | None:
    """Return "mongod"/"ferretdb" on the MongoDB store, None on SQLite (without starting FerretDB)."""
    return request.getfixturevalue("mongodb_kind") if store_env.get("MONGODB_URI") else None


@pytest.mark.slow
def test_clients_of_a_killed_worker_reconnect_and_get_every_message_once_in_order(start_server, store_env, kind):
    server = start_server(HEARTBEAT_SECONDS="1", RETRY_MS="300", **store_env)
    stored_ids = stored_ids_reader(store_env)
    # On FerretDB: one write at a time and a document at least every 0.25 s (tests/support/stores.py).
    ferretdb = FerretDBWorkarounds.for_store(store_env, kind).start()
    clients = [EventSourceClient("127.0.0.1", server.port, ROOMS[n % len(ROOMS)]) for n in range(STREAMS)]
    publisher = RecordingPublisher(server.url, ROOMS, writes=ferretdb.writes, threads=2, pause=0.005,
                                   settle_after_no_reply=0.2 if ferretdb.enabled else 0.0)
    old_workers = set(server.worker_pids())
    victim = min(old_workers)
    timings: dict[str, float] = {}

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 60)
        publisher.start()
        await asyncio.sleep(1.5)  # publishing runs a while before the kill
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # The master forks a replacement; the victim's clients come back after `retry`.
        await asyncio.to_thread(wait_until, lambda: len(set(server.worker_pids()) - old_workers) == 1, 15)
        await asyncio.sleep(1.5)  # publishing goes on across the reconnects
        publisher.stop()
        stored = {room: stored_ids(room) for room in ROOMS}
        await asyncio.to_thread(
            wait_until, lambda: all(len(c.messages) >= len(stored[c.room]) for c in clients), 30)
        timings["caught_up_after_kill"] = time.monotonic() - killed_at
        await asyncio.sleep(0.5)  # a quiet period: a duplicate, if any, would arrive now
        # The dead worker's live gauges were dropped (child_exit): the open streams add up.
        await asyncio.to_thread(wait_until, lambda: metric(server.url, "sse_open_streams") == STREAMS, 10)
        for client in clients:
            client.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    started = time.monotonic()
    try:
        asyncio.run(scenario())
    finally:
        ferretdb.stop()
    reconnected = [client for client in clients if len(client.connections) > 1]
    stored = {room: stored_ids(room) for room in ROOMS}
    print(f"\n[{kind or 'sqlite'}] kill -9 of 1 of 2 workers with {STREAMS} streams: {len(reconnected)} clients "
          f"reconnected; {sum(map(len, stored.values()))} messages stored, {len(publisher.acked)} acknowledged, "
          f"POST outcomes {publisher.statuses()}; every client caught up "
          f"{timings['caught_up_after_kill']:.1f}s after the kill; {time.monotonic() - started:.1f}s")

    assert reconnected, "no stream was on the killed worker"
    assert all(len(client.connections) == 1 for client in clients if client not in reconnected)
    for client in reconnected:
        assert client.connections[1].last_event_id_sent  # resumed, not started over
    for client in clients:
        assert [event.id for event in client.messages] == stored[client.room]
        assert not client.resets
    acked = {reply["id"] for reply in publisher.acked}
    assert acked <= {message_id for ids in stored.values() for message_id in ids}
    assert set(publisher.statuses()) <= {201, 0}  # a POST to the dying worker may get no answer
    for room in ROOMS:  # either worker's window answers history as the store does
        assert history_ids(server.url, room) == stored[room]
