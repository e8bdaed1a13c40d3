"""Fault 5: SIGTERM with 1,000 open streams ends them at once, with jittered retry lines."""
from __future__ import annotations

import asyncio

import pytest

from tests.support.eventsource import EventSourceClient
from tests.support.faults import Publisher, metric, stored_ids
from tests.support.waiting import wait_until

STREAMS = 1000
ROOMS = [f"shutdown-{n}" for n in range(10)]
RETRY_MS = 1000


@pytest.mark.slow
def test_sigterm_ends_1000_streams_quickly_and_keeps_every_acknowledged_message(start_server, sqlite_path):
    server = start_server(HEARTBEAT_SECONDS="5", RETRY_MS=str(RETRY_MS))
    clients = [EventSourceClient("127.0.0.1", server.port, ROOMS[n % len(ROOMS)], reconnect=False)
               for n in range(STREAMS)]
    publisher = Publisher(server.url, ROOMS, threads=2)

    async def scenario() -> float:
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 60)
        await asyncio.to_thread(wait_until, lambda: metric(server.url, "sse_open_streams") == STREAMS, 30)
        publisher.start()
        await asyncio.sleep(1.0)  # messages flow to the open streams
        shutdown_took = await asyncio.to_thread(server.stop)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return shutdown_took

    shutdown_took = asyncio.run(scenario())
    publisher.stop()

    ended = [client.connections[0] for client in clients]
    last_retry = [client.parser.retry_lines[-1] for client in clients]
    print(f"\nSIGTERM with {STREAMS} streams: master exited after {shutdown_took:.2f}s; "
          f"{len(publisher.acked)} messages acknowledged; final retry lines {min(last_retry)}..{max(last_retry)} ms, "
          f"{len(set(last_retry))} distinct")
    assert shutdown_took <= 5.0, server.log()
    assert "graceful timeout" not in server.log().lower()
    assert all(connection.closed_at is not None for connection in ended)
    # Each stream ended with a second, jittered retry line in [retry, 2 x retry).
    assert all(len(client.parser.retry_lines) == 2 for client in clients)
    assert all(RETRY_MS <= value < 2 * RETRY_MS for value in last_retry)
    assert len(set(last_retry)) > STREAMS // 4
    # Nothing that was acknowledged is missing from the store.
    assert publisher.acked
    for room in ROOMS:
        acked = [reply["id"] for reply in publisher.acked if reply["room"] == room]
        assert set(acked) <= set(stored_ids(sqlite_path, room))
