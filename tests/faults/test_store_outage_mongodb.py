"""Fault 2 (MongoDB): the database process is killed under live streams and publishers, then restarted.

A private FerretDB (always FerretDB, even where MONGODB_URI names a real
mongod: a test cannot kill someone else's server) is SIGKILLed while two
publisher threads post and 20 streams follow two rooms. While it is down a
POST must answer 503 JSON with Retry-After (never hang, never 500), /readyz
must say 503, and the streams must stay open with heartbeats (or be told to
come back). After the restart on the same port and data, every message that
got a 201 reaches every subscriber of its room exactly once, in store order,
and nothing that got a plain 503 is stored. A POST whose insert FerretDB
committed just before it died cannot know it landed: it gets a 503 that says
the write is unconfirmed and names its id (pinned deterministically on the
wire by the last test of this file).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import prefill_capped
from tests.support.eventsource import EventSourceClient
from tests.support.mongo_live import stored_ids as fake_stored_ids
from tests.support.stores import (
    FerretDBWorkarounds,
    RecordingPublisher,
    history_ids,
    mongo_stored_ids,
    mongo_stored_texts,
)
from tests.support.waiting import wait_until
from tests.support.wire_capped import FakeCappedCollection, Fault

ROOMS = ["outage-a", "outage-b"]
STREAMS = 20
DATABASE = "sse_outage"
HEARTBEAT_SECONDS = 0.5
DOWN_SECONDS = 4.0  # long enough for two server-selection timeouts (2 s) in a row


@pytest.mark.slow
@pytest.mark.mongodb
def test_database_killed_and_restarted_answers_503_then_delivers_every_acknowledged_message_once(
        start_ferretdb, start_server):
    database = start_ferretdb()
    prefill_capped(database.uri, DATABASE)
    server = start_server(MONGODB_URI=database.uri, MONGODB_DATABASE=DATABASE,
                          HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS), RETRY_MS="300")
    workers = set(server.worker_pids())
    # One write at a time and a document at least every 0.25 s: FerretDB's tailing (tests/support/stores.py).
    ferretdb = FerretDBWorkarounds(database.uri, DATABASE, enabled=True).start()
    publisher = RecordingPublisher(server.url, ROOMS, writes=ferretdb.writes, threads=2, pause=0.02,
                                   settle_after_no_reply=0.2)
    # Posts fired together while the database is down: the lock is not needed, nothing can be inserted.
    burst = RecordingPublisher(server.url, ROOMS)
    clients = [EventSourceClient("127.0.0.1", server.port, ROOMS[n % len(ROOMS)]) for n in range(STREAMS)]
    seen: dict = {}

    def take_it_down() -> None:
        time.sleep(1.0)  # publishing while up
        seen["comments_before"] = [client.parser.comments for client in clients]
        database.kill()
        seen["killed_at"] = time.monotonic()
        with ThreadPoolExecutor(17) as pool:
            posts = [pool.submit(burst.post, ROOMS[n % 2], f"burst while down {n}") for n in range(16)]
            seen["readyz"] = pool.submit(requests.get, server.url + "/readyz", timeout=10).result()
            for post in posts:
                post.result()
        time.sleep(max(0.0, seen["killed_at"] + DOWN_SECONDS - time.monotonic()))
        seen["comments_down"] = [client.parser.comments - before
                                 for client, before in zip(clients, seen["comments_before"], strict=True)]
        seen["restarting_at"] = time.monotonic()
        database.restart()
        seen["restarted_at"] = time.monotonic()
        wait_until(lambda: any(a.status == 201 and a.started > seen["restarted_at"] for a in publisher.attempts), 15)
        time.sleep(2.0)  # publishing while up again

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 30)
        publisher.start()
        try:
            await asyncio.to_thread(take_it_down)
        finally:
            await asyncio.to_thread(publisher.stop)
        stored = {room: mongo_stored_ids(database.uri, DATABASE, room) for room in ROOMS}
        await asyncio.to_thread(
            wait_until, lambda: all(len(c.messages) >= len(stored[c.room]) for c in clients), 20)
        await asyncio.sleep(0.5)  # a quiet period: a duplicate, if any, would arrive now
        for client in clients:
            client.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    started = time.monotonic()
    try:
        asyncio.run(scenario())
    finally:
        ferretdb.stop()
    stored = {room: mongo_stored_ids(database.uri, DATABASE, room) for room in ROOMS}
    stored_texts = mongo_stored_texts(database.uri, DATABASE)
    attempts = publisher.attempts + burst.attempts
    killed_at, restarted_at = seen["killed_at"], seen["restarted_at"]
    # Posts that began and ended while the database was down: each must be a 503.
    down = [a for a in attempts if a.started > killed_at and a.started + a.duration < seen["restarting_at"]]
    refused = [a for a in attempts if a.status == 503]
    # A POST in flight when the database died can be inserted with its reply lost; the app's
    # retry then fails and it answers an "unconfirmed" 503 naming the id (the test below pins it).
    stored_503 = [a for a in refused if a.text in stored_texts]
    # Recovery: the first 201 after the restart began, and the first message acknowledged after
    # it on the slowest stream (the tailers retry with a back-off of up to 2 s).
    first_201 = min(a.started + a.duration for a in attempts
                    if a.status == 201 and a.started + a.duration > seen["restarting_at"])
    after_restart = {a.body["id"] for a in attempts if a.status == 201 and a.started > restarted_at}
    delivered_again = max(min(at for event, at in zip(client.events, client.arrivals, strict=True)
                              if event.id in after_restart) for client in clients)
    durations = sorted(a.duration for a in down)
    print(f"\nFerretDB SIGKILLed for {restarted_at - killed_at:.1f}s (restart took "
          f"{restarted_at - seen['restarting_at']:.2f}s) under {STREAMS} streams: POST outcomes "
          f"{publisher.statuses()} + {burst.statuses()} from 16 concurrent while down; {len(down)} POSTs "
          f"entirely in the outage answered in {durations[0]:.2f}..{durations[-1]:.2f}s; first 201 "
          f"{first_201 - seen['restarting_at']:.2f}s after the restart began, and live on every stream "
          f"{delivered_again - seen['restarting_at']:.2f}s after it; heartbeats per stream while down "
          f"{min(seen['comments_down'])}..{max(seen['comments_down'])}; "
          f"{sum(map(len, stored.values()))} messages stored ({len(stored_503)} of them answered 503: "
          f"in flight at the kill); {time.monotonic() - started:.1f}s")

    assert len(down) >= 16
    for attempt in down:
        assert attempt.status == 503, attempt
        assert attempt.retry_after == "2"
        assert attempt.body["code"] == 503 and set(attempt.body) == {"code", "status", "message", "errors"}
    assert durations[-1] < 5.0  # about the 2 s server selection, never a hang
    assert seen["readyz"].status_code == 503 and seen["readyz"].headers["Retry-After"] == "2"
    assert set(server.worker_pids()) == workers  # no crash, no respawn
    for client, heartbeats in zip(clients, seen["comments_down"], strict=True):
        if len(client.connections) == 1:
            assert heartbeats >= 2, "a stream stayed open through the outage without heartbeats"
        else:  # told to come back: each stream it had ended cleanly, and it resumed where it was
            assert all(c.last_event_id_sent for c in client.connections[1:])
    assert not [a for a in stored_503 if a.started > killed_at], "a POST made during the outage was stored"
    assert len(stored_503) <= 1  # only one POST at a time can be in flight (writes are serialised)
    for attempt in stored_503:  # never a plain 503 for a stored message
        assert "did not confirm" in attempt.body["message"], attempt
    acked = {a.body["id"] for a in attempts if a.status == 201}
    assert acked <= {message_id for ids in stored.values() for message_id in ids}
    for client in clients:
        assert not client.resets
        assert [event.id for event in client.messages] == stored[client.room]
    for room in ROOMS:
        assert history_ids(server.url, room) == stored[room]


@pytest.mark.slow
@pytest.mark.mongodb
def test_an_insert_that_may_have_landed_is_answered_as_unconfirmed_with_its_id(start_server):
    """What the outage above can hit by timing, made certain on the wire (MockupDB, real PyMongo).

    The first insert is applied and its reply lost (the server died after its
    commit); every retry -- PyMongo's own retryable write and the app's retry
    with the same _id -- finds no server. The app cannot know whether the first
    attempt landed. It used to answer a plain 503, which a client reads as "not
    stored" (docs/operations.md, Guarantees); now the 503 says the write is unconfirmed and
    names the id to look for.
    """
    fake = FakeCappedCollection(max_messages=1000)
    fake.start()
    try:
        server = start_server(MONGODB_URI=fake.uri(), HEARTBEAT_SECONDS="1")
        fake.inject(Fault("insert", "hangup", apply_first=True))
        for _ in range(3):
            fake.inject(Fault("insert", "hangup"))
        reply = requests.post(server.url + "/messages", json={"room": "landed", "text": "landed"}, timeout=15)
        stored = fake_stored_ids(fake, "landed")
        assert not fake.faults  # every attempt met its fault
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"
        assert stored == reply.json()["errors"]["id"]  # the one it landed as
        assert "did not confirm" in reply.json()["message"]
    finally:
        fake.stop()
