"""Fault 7: beyond MAX_STREAMS_PER_WORKER new streams get 503, and publishing still works."""
from __future__ import annotations

import asyncio
import time

import pytest
import requests

from tests.support.eventsource import EventSourceClient
from tests.support.faults import metric
from tests.support.waiting import wait_until

LIMIT = 50
ATTEMPTS = 80


@pytest.mark.slow
def test_streams_beyond_the_limit_get_503_while_posts_stay_fast(start_server):
    # One worker, so every stream and every POST meets the same limit.
    server = start_server(WEB_CONCURRENCY="1", MAX_STREAMS_PER_WORKER=str(LIMIT), HEARTBEAT_SECONDS="1")
    clients = [EventSourceClient("127.0.0.1", server.port, "full", reconnect=False) for _ in range(ATTEMPTS)]

    async def open_all_at_once() -> list[asyncio.Task]:
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        await asyncio.to_thread(wait_until, lambda: all(client.connections for client in clients), 30)
        return tasks

    async def scenario() -> list[float]:
        tasks = await open_all_at_once()
        post_times = await asyncio.to_thread(_timed_posts, server.url, 20)
        assert metric(server.url, "sse_open_streams") == LIMIT
        for client in clients:
            client.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return post_times

    post_times = asyncio.run(scenario())
    statuses = [client.connections[0].status for client in clients]
    refused = [client.connections[0] for client in clients if client.connections[0].status == 503]
    print(f"\n{ATTEMPTS} concurrent streams against a limit of {LIMIT}: {statuses.count(200)} admitted, "
          f"{len(refused)} refused; 20 POSTs meanwhile: max {max(post_times) * 1000:.1f} ms")
    assert statuses.count(200) == LIMIT
    assert len(refused) == ATTEMPTS - LIMIT
    for connection in refused:
        assert connection.headers["retry-after"] == "2"
        assert connection.headers["content-type"] == "application/json"
        assert b'"code":503' in connection.tail
    assert max(post_times) < 0.5
    assert metric(server.url, "sse_streams_dropped_total", reason="limit") == ATTEMPTS - LIMIT
    # Slots are given back: a new stream is admitted once the others closed.
    wait_until(lambda: metric(server.url, "sse_open_streams") == 0, 10)
    reply = requests.get(server.url + "/messages?room=full", stream=True, timeout=5)
    assert reply.status_code == 200
    reply.close()


def _timed_posts(url: str, count: int) -> list[float]:
    durations = []
    for number in range(count):
        started = time.monotonic()
        reply = requests.post(url + "/messages", json={"room": "full", "text": f"while full {number}"}, timeout=5)
        durations.append(time.monotonic() - started)
        assert reply.status_code == 201
    return durations
