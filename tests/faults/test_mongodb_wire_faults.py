"""MongoDB faults: capped wrap (6), failover during getMore and insert (8), outage and recovery (2).

Real gunicorn with gevent workers and real PyMongo talk over the wire to a
capped collection served by MockupDB (tests/support/wire_capped.py), which
injects each fault: a hang-up (connection reset) or an error reply such as
NotWritablePrimary, before or after applying the command. No MongoDB server
runs here; these prove the client-side behaviour against MongoDB's wire
protocol and documented replies, not a real server's internals.
"""
from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
import requests
from bson import ObjectId

from tests.support.capped_wrap import assert_reset_then_window, resume_after_wrap
from tests.support.eventsource import EventSourceClient
from tests.support.faults import metric
from tests.support.mongo_live import follow_while, has_everything_stored, stored_ids
from tests.support.waiting import wait_until
from tests.support.wire_capped import NOT_WRITABLE_PRIMARY, FakeCappedCollection, Fault

ROOMS = ["mongo-a", "mongo-b"]


@pytest.fixture
def fake_mongo():
    fake = FakeCappedCollection(max_messages=10_000)
    fake.start()
    yield fake
    fake.stop()


def _texts(fake: FakeCappedCollection, text: str) -> int:
    with fake.lock:
        return sum(1 for _, doc in fake.docs if doc["text"] == text)


# -- 6: capped wrap ------------------------------------------------------------
@pytest.mark.slow
def test_resume_point_evicted_from_mongodb_capped_collection_gets_reset_and_backlog(start_server):
    fake = FakeCappedCollection(max_messages=5)
    fake.start()
    try:
        server = start_server(MONGODB_URI=fake.uri(), CAPPED_MAX_MESSAGES="5", HEARTBEAT_SECONDS="1")
        client, expected, exact = resume_after_wrap(server, 5, lambda room: stored_ids(fake, room))
        assert_reset_then_window(client, expected, exact)
        assert metric(server.url, "sse_resets_sent_total") == len(client.resets)
    finally:
        fake.stop()


@pytest.mark.slow
def test_streams_whose_position_was_overwritten_while_connected_get_reset_and_window(start_server):
    """A burst evicts the tailer's place: CappedPositionLost, resync, and each stream gets reset + the window."""
    capped = 6
    fake = FakeCappedCollection(max_messages=capped)
    fake.start()
    try:
        server = start_server(MONGODB_URI=fake.uri(), CAPPED_MAX_MESSAGES=str(capped), HEARTBEAT_SECONDS="1")
        seen: dict[str, list[str]] = {}

        def overwrite_while_following(clients: list[EventSourceClient]) -> None:
            for number in range(2):
                server.publish(ROOMS[number % 2], f"before {number}")
            seen["before"] = [stored_ids(fake, room) for room in ROOMS]
            wait_until(lambda: all(client.messages for client in clients), 10)  # every stream is live
            now = datetime.now(UTC).replace(microsecond=0)
            fake.insert_directly([{"_id": ObjectId(), "room": ROOMS[n % 2], "text": f"burst {n}", "event": "message",
                                   "createdAt": now} for n in range(3 * capped)])
            seen["window"] = [stored_ids(fake, room) for room in ROOMS]
            wait_until(lambda: "tailer lost its place" in server.log_path.read_text(), 10)
            seen["live"] = [server.publish(ROOMS[n], "live after the wrap")["id"] for n in range(2)]

        def has_live(client: EventSourceClient) -> bool:
            return "live" in seen and seen["live"][ROOMS.index(client.room)] in {e.id for e in client.messages}

        clients = follow_while(server, ROOMS, 6, overwrite_while_following, has_live)
        order = {str(message_id): n for n, message_id in enumerate(fake.inserted)}
        for client in clients:
            index = ROOMS.index(client.room)
            types = [event.type for event in client.events]
            assert types.count("reset") == 1
            before, after = client.events[:types.index("reset")], client.events[types.index("reset") + 1:]
            assert [event.id for event in before] == seen["before"][index]
            # After the reset: a run of the room's messages in store order, no repeats, ending with
            # what the store holds now (older ones may have been evicted since they were sent).
            after_ids = [event.id for event in after]
            assert [order[i] for i in after_ids] == sorted({order[i] for i in after_ids})
            assert after_ids[-len(stored_ids(fake, client.room)):] == stored_ids(fake, client.room)
            assert seen["live"][index] in after_ids
        assert metric(server.url, "sse_resets_sent_total") == len(clients)
        assert metric(server.url, "sse_tailer_restarts_total") >= 1
    finally:
        fake.stop()


# -- 8: failover ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fault", [Fault("getMore", "hangup"), Fault("getMore", "error", NOT_WRITABLE_PRIMARY)],
                         ids=["connection-reset", "not-writable-primary"])
def test_tailer_reselects_and_resumes_exactly_after_getmore_failure(start_server, fake_mongo, fault):
    server = start_server(MONGODB_URI=fake_mongo.uri(), HEARTBEAT_SECONDS="1", RETRY_MS="300")

    def publish_around_the_fault(_: list[EventSourceClient]) -> None:
        for number in range(4):
            server.publish(ROOMS[number % 2], f"before {number}")
        for _ in server.worker_pids():
            fake_mongo.inject(Fault(fault.command, fault.action, fault.code))
        wait_until(lambda: not fake_mongo.faults, 10)
        for number in range(4):
            server.publish(ROOMS[number % 2], f"after {number}")

    clients = follow_while(server, ROOMS, 10, publish_around_the_fault, has_everything_stored(fake_mongo))
    for client in clients:
        assert [event.id for event in client.messages] == stored_ids(fake_mongo, client.room)
        assert len(client.connections) == 1 and not client.resets  # streams never noticed
    assert metric(server.url, "sse_tailer_restarts_total") >= 2
    assert metric(server.url, "sse_store_errors_total", operation="tailer") >= 2


@pytest.mark.slow
@pytest.mark.parametrize("faults, status, stored", [
    ([Fault("insert", "error", NOT_WRITABLE_PRIMARY)], 201, 1),
    ([Fault("insert", "hangup", apply_first=True)], 201, 1),
    ([Fault("insert", "hangup", apply_first=True), Fault("insert", "hangup")], 201, 1),
    ([Fault("insert", "hangup")] * 4, 503, 0),
], ids=["not-writable-primary-retried", "reply-lost-retried-same-txn", "retries-exhausted-after-apply-dedup-by-id",
        "every-attempt-fails-503"])
def test_insert_during_failover_is_stored_once_or_answered_503(start_server, fake_mongo, faults, status, stored):
    server = start_server(MONGODB_URI=fake_mongo.uri(), HEARTBEAT_SECONDS="1")
    text = "written during a failover"
    clients = [EventSourceClient("127.0.0.1", server.port, ROOMS[0]) for _ in range(4)]

    async def scenario() -> requests.Response:
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 20)
        for fault in faults:
            fake_mongo.inject(Fault(fault.command, fault.action, fault.code, fault.apply_first))
        reply = await asyncio.to_thread(requests.post, server.url + "/messages",
                                        json={"room": ROOMS[0], "text": text}, timeout=15)
        if stored:
            await asyncio.to_thread(wait_until, lambda: all(client.messages for client in clients), 10)
        await asyncio.sleep(0.5)  # a quiet period: a duplicate, if any, would arrive now
        for client in clients:
            client.stop()
        await asyncio.gather(*tasks)
        return reply

    reply = asyncio.run(scenario())
    assert reply.status_code == status
    assert _texts(fake_mongo, text) == stored
    assert not fake_mongo.faults  # every injected fault was met
    if status == 201:
        assert reply.json()["id"] == stored_ids(fake_mongo, ROOMS[0])[0]
        for client in clients:
            assert [event.id for event in client.messages] == [reply.json()["id"]]
    else:
        assert reply.headers["Retry-After"] == "2"
        assert reply.json()["code"] == 503
        assert all(not client.messages for client in clients)


# -- 2: outage and recovery ------------------------------------------------------
@pytest.mark.slow
def test_mongodb_outage_answers_503_keeps_heartbeats_and_resumes_without_loss(start_server, fake_mongo):
    # Monitor the server often, so that recovery is noticed in well under a second.
    server = start_server(MONGODB_URI=fake_mongo.uri(heartbeatFrequencyMS="500"), HEARTBEAT_SECONDS="0.5",
                          RETRY_MS="300")
    workers = set(server.worker_pids())
    clients = [EventSourceClient("127.0.0.1", server.port, ROOMS[n % 2]) for n in range(10)]
    observed: dict = {}

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 20)
        for number in range(4):
            await asyncio.to_thread(server.publish, ROOMS[number % 2], f"before {number}")
        port = fake_mongo.server.port
        fake_mongo.stop()  # the server goes away: listening socket and every connection
        heartbeats = [client.parser.comments for client in clients]
        observed["posts"] = await asyncio.to_thread(_timed_posts, server.url, 4)
        observed["ready"] = await asyncio.to_thread(requests.get, server.url + "/readyz", timeout=10)
        observed["health"] = await asyncio.to_thread(requests.get, server.url + "/healthz", timeout=10)
        await asyncio.sleep(1.0)  # the outage lasts a second: heartbeats must go on (counted next)
        observed["heartbeats"] = [client.parser.comments - before
                                  for client, before in zip(clients, heartbeats, strict=True)]
        fake_mongo.start(port)  # back, same address, same data
        await asyncio.to_thread(
            wait_until, lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 200, 15)
        for number in range(4):
            await asyncio.to_thread(server.publish, ROOMS[number % 2], f"after {number}")
        await asyncio.to_thread(
            wait_until, lambda: all(len(c.messages) >= len(stored_ids(fake_mongo, c.room)) for c in clients), 20)
        await asyncio.sleep(0.5)  # a quiet period: a duplicate, if any, would arrive now
        for client in clients:
            client.stop()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    posts = observed["posts"]
    print(f"\nMongoDB down: {len(posts)} POSTs -> {sorted({s for s, _, _ in posts})} in "
          f"{min(d for _, d, _ in posts):.2f}..{max(d for _, d, _ in posts):.2f}s; "
          f"/readyz {observed['ready'].status_code}; "
          f"heartbeats per stream meanwhile >= {min(observed['heartbeats'])}; "
          f"tailer restarts {metric(server.url, 'sse_tailer_restarts_total'):g}")
    for status, duration, reply in posts:
        assert status == 503 and reply.headers["Retry-After"] == "2" and reply.json()["code"] == 503
        assert duration < 5.0  # server selection gives up after 2 s: never a hang
    assert observed["ready"].status_code == 503 and observed["ready"].headers["Retry-After"] == "2"
    assert observed["health"].status_code == 200
    assert min(observed["heartbeats"]) >= 2
    assert set(server.worker_pids()) == workers
    assert metric(server.url, "sse_tailer_restarts_total") >= 1
    for client in clients:
        assert [event.id for event in client.messages] == stored_ids(fake_mongo, client.room)
        assert len(stored_ids(fake_mongo, client.room)) == 4


def _timed_posts(url: str, count: int) -> list[tuple[int, float, requests.Response]]:
    results = []
    for number in range(count):
        started = time.monotonic()
        reply = requests.post(url + "/messages", json={"room": ROOMS[0], "text": f"during {number}"}, timeout=30)
        results.append((reply.status_code, time.monotonic() - started, reply))
    return results
