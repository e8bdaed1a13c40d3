"""Fault 1: a worker killed with SIGKILL under load loses no message for any client."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.support.eventsource import EventSourceClient
from tests.support.faults import Publisher, metric, stored_ids, wait_until

STREAMS = 200
ROOMS = [f"kill-{n}" for n in range(4)]


@pytest.mark.slow
def test_clients_of_a_killed_worker_reconnect_and_get_every_message_once_in_order(start_server, sqlite_path):
    server = start_server(HEARTBEAT_SECONDS="1", RETRY_MS="300")
    clients = [EventSourceClient("127.0.0.1", server.port, ROOMS[n % len(ROOMS)]) for n in range(STREAMS)]
    publisher = Publisher(server.url, ROOMS, threads=2, pause=0.005)
    old_workers = set(server.worker_pids())
    victim = min(old_workers)

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 60)
        publisher.start()
        await asyncio.sleep(1.5)
        os.kill(victim, signal.SIGKILL)
        # The master forks a replacement; the victim's clients come back after `retry`.
        await asyncio.to_thread(wait_until, lambda: len(set(server.worker_pids()) - old_workers) == 1, 15)
        await asyncio.sleep(1.5)  # publishing goes on across the reconnects
        publisher.stop()
        stored = {room: stored_ids(sqlite_path, room) for room in ROOMS}
        await asyncio.to_thread(
            wait_until, lambda: all(len(c.messages) >= len(stored[c.room]) for c in clients), 30)
        await asyncio.sleep(0.5)  # a duplicate, if any, would arrive now
        # The dead worker's live gauges were dropped (child_exit): the open streams add up.
        await asyncio.to_thread(wait_until, lambda: metric(server.url, "sse_open_streams") == STREAMS, 10)
        for client in clients:
            client.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    started = time.monotonic()
    asyncio.run(scenario())
    reconnected = [client for client in clients if len(client.connections) > 1]
    stored = {room: stored_ids(sqlite_path, room) for room in ROOMS}
    print(f"\nkill -9 of 1 of 2 workers with {STREAMS} streams: {len(reconnected)} clients reconnected; "
          f"{sum(map(len, stored.values()))} messages stored, {len(publisher.acked)} acknowledged, "
          f"POST outcomes {publisher.statuses}; per client received == stored for its room; "
          f"{time.monotonic() - started:.1f}s")

    assert reconnected, "no stream was on the killed worker"
    assert all(len(client.connections) == 1 for client in clients if client not in reconnected)
    for client in reconnected:
        assert client.connections[1].last_event_id_sent  # resumed, not started over
    for client in clients:
        assert [event.id for event in client.messages] == stored[client.room]
        assert not client.resets
    acked = {reply["id"] for reply in publisher.acked}
    assert acked <= {message_id for ids in stored.values() for message_id in ids}
