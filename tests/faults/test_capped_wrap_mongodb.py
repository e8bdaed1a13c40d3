"""Fault 6 (MongoDB): a burst overwrites a tailer's place in the capped collection while streams are open.

One of the two workers is frozen (SIGSTOP) while a burst three times
CAPPED_MAX_MESSAGES goes into the capped collection, so its tailer's place --
and the last event of every stream it serves -- is overwritten; the other
worker keeps pace. Unfrozen, the frozen worker's tailer finds its place gone,
warms its window again and every one of its streams re-joins. Then each stream
must end exact:

* on the worker that kept pace: every message of its room, once, in order, no reset;
* on the frozen worker, a stream that had been sent messages (its resume point
  left the window): one ``reset``, then exactly the room's window, then live;
* on the frozen worker, a stream that had been sent nothing yet (no resume point):
  no reset, exactly the room's window, then live.

Which worker holds which stream is read from the kernel (``ss``), not guessed.
Other publishers go on all along (a document every 0.25 s), as they would in
production.

Regression: a tailer that reopened its cursor after its place was overwritten
noticed the loss only when an awaitData getMore came back empty, i.e. after a
whole second without any insert. While anything was inserted at least once a
second it re-read the collection looking for its place forever, and every
stream of that worker received nothing. The store now gives up the walk to its
place after CAPPED_MAX_MESSAGES documents: a place still there lies within them.

FerretDB differences met here (see also tests/support/stores.py): it evicts
from a capped collection on a background ticker (500 ms in these tests) or on
``compact``, never on insert as MongoDB does, so after the burst the test runs
``compact`` and waits until the collection is back within its bound; and a
getMore whose place was evicted fails with error code 1, not
CappedPositionLost (136) -- which the app takes as "store unavailable" and
then, reopening its cursor, as a lost place.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime

import pytest
from bson import ObjectId
from pymongo import MongoClient

from tests.conftest import prefill_capped
from tests.support.eventsource import EventSourceClient
from tests.support.faults import metric
from tests.support.stores import (
    FILLER_ROOM,
    FerretDBWorkarounds,
    RecordingPublisher,
    mongo_stored_ids,
    server_connections,
)
from tests.support.waiting import wait_until

CAPPED = 200
SEEN, FRESH = "wrap-seen", "wrap-fresh"  # streams of SEEN get messages before the burst, FRESH none
CHUNK = 50  # the burst goes in chunks; the worker that keeps pace reads each before the next
CHUNKS = 3 * CAPPED // CHUNK
PER_WORKER_AND_ROOM = 3
THAW_PATIENCE = 10.0


class TailerPlaceNeverNoticed(AssertionError):
    """The thawed worker's tailer went on looking for its overwritten place."""


def _doc(room: str, text: str) -> dict:
    return {"_id": ObjectId(), "room": room, "text": text, "event": "message",
            "createdAt": datetime.now(UTC).replace(microsecond=0)}


async def _open_streams(server, rooms: list[str]) -> tuple[list[EventSourceClient], dict[int, int], list]:
    """Open streams, a few at once, until each worker holds PER_WORKER_AND_ROOM of each room.

    Opened one at a time they mostly land on whichever worker is back in
    accept() first; a few at once wake both. Returns the clients,
    {id(client): worker pid}, and their tasks.
    """
    clients: list[EventSourceClient] = []
    worker_of: dict[int, int] = {}
    tasks = []
    workers = set(server.worker_pids())
    for number in range(0, 60 * len(rooms), 6):
        counts = {(pid, room): 0 for pid in workers for room in rooms}
        for client in clients:
            counts[worker_of[id(client)], client.room] += 1
        if min(counts.values()) >= PER_WORKER_AND_ROOM:
            return clients, worker_of, tasks
        batch = [EventSourceClient("127.0.0.1", server.port, rooms[(number + n) % len(rooms)]) for n in range(6)]
        tasks.extend(asyncio.ensure_future(client.run()) for client in batch)
        await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in batch)), 10)
        owners = server_connections(server.port)
        for client in batch:
            worker_of[id(client)] = owners[client.local_port]
        clients.extend(batch)
    raise AssertionError(f"the kernel gave one worker nearly every stream: {counts}")


@pytest.mark.slow
@pytest.mark.mongodb
def test_burst_overwriting_a_frozen_workers_place_resets_exactly_the_streams_whose_point_left(
        start_server, mongodb_uri, mongodb_database, mongodb_kind):
    uri, database = mongodb_uri, mongodb_database
    prefill_capped(uri, database, max_messages=CAPPED)
    server = start_server(MONGODB_URI=uri, MONGODB_DATABASE=database, CAPPED_MAX_MESSAGES=str(CAPPED),
                          HEARTBEAT_SECONDS="1", RETRY_MS="300")
    # Other publishers go on all along: a filler document every 0.25 s, on any server (on
    # FerretDB that also keeps its tailable cursors from rewinding, tests/support/stores.py).
    background = FerretDBWorkarounds(uri, database, enabled=mongodb_kind == "ferretdb", steady=True).start()
    publisher = RecordingPublisher(server.url, [SEEN, FRESH], writes=background.writes)
    mongo = MongoClient(uri, serverSelectionTimeoutMS=5000)
    collection = mongo[database].messages
    sent: dict[str, list[str]] = {SEEN: [], FRESH: []}  # every message of the room, in insertion order
    seen: dict = {}

    def ids(client: EventSourceClient) -> list[str]:
        return [event.id for event in client.messages]

    async def scenario() -> list[EventSourceClient]:
        clients, worker_of, tasks = await _open_streams(server, [SEEN, FRESH])
        victim = min(set(worker_of.values()))
        seen["victim"] = victim
        seen["worker_of"] = worker_of
        pacing = [c for c in clients if worker_of[id(c)] != victim]
        for number in range(3):
            sent[SEEN].append(publisher.post(SEEN, f"before {number}").body["id"])
        await asyncio.to_thread(wait_until, lambda: all(ids(c) == sent[c.room] for c in clients), 10)

        os.kill(victim, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()

            def burst() -> None:
                # First filler only: a getMore the frozen worker had waiting is answered
                # with these, so nothing it reads after thawing belongs to a followed room.
                with background.writes():
                    collection.insert_many([_doc(FILLER_ROOM, "burst") for _ in range(CHUNK)])
                time.sleep(0.3)
                for chunk in range(1, CHUNKS):
                    docs = [_doc(FILLER_ROOM, "burst") for _ in range(CHUNK - 2)]
                    docs += [_doc(SEEN, f"burst {chunk}"), _doc(FRESH, f"burst {chunk}")]
                    with background.writes():
                        collection.insert_many(docs)  # ordered: natural order is list order
                    sent[SEEN].append(str(docs[-2]["_id"]))
                    sent[FRESH].append(str(docs[-1]["_id"]))
                    # The worker that keeps pace has read this chunk: its tailer stays in the window.
                    wait_until(lambda: all(ids(c) == sent[c.room] for c in pacing), 10)
                if mongodb_kind == "ferretdb":
                    # FerretDB evicts on a ticker or on compact, not on insert as MongoDB does.
                    mongo[database].command("compact", "messages")
                wait_until(lambda: collection.count_documents({}) <= CAPPED, 10)

            await asyncio.to_thread(burst)
            seen["window"] = {room: mongo_stored_ids(uri, database, room) for room in (SEEN, FRESH)}
            seen["burst_seconds"] = time.monotonic() - frozen_at
        finally:
            os.kill(victim, signal.SIGCONT)
        thawed_at = time.monotonic()
        for room in (SEEN, FRESH):
            sent[room].append(publisher.post(room, "live after the wrap").body["id"])
        seen["live"] = {room: sent[room][-1] for room in (SEEN, FRESH)}
        await asyncio.to_thread(wait_until, lambda: all(seen["live"][c.room] in ids(c) for c in pacing), 10)
        frozen = [c for c in clients if worker_of[id(c)] == victim]
        try:
            await asyncio.to_thread(
                wait_until, lambda: all(seen["live"][c.room] in ids(c) for c in frozen), THAW_PATIENCE)
        except AssertionError:
            if "lost its place" not in server.log_path.read_text(errors="replace"):
                raise TailerPlaceNeverNoticed(
                    f"{THAW_PATIENCE:.0f}s after the thaw the thawed worker's tailer has not noticed that its "
                    f"place was overwritten, while a document came every 0.25 s; "
                    f"{sum(seen['live'][c.room] not in ids(c) for c in frozen)} of its {len(frozen)} streams "
                    f"still lack the live message the other worker's streams got at once") from None
            raise
        seen["settled_after"] = time.monotonic() - thawed_at
        await asyncio.sleep(0.5)  # a quiet period: a duplicate, if any, would arrive now
        for client in clients:
            client.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return clients

    try:
        clients = asyncio.run(scenario())
    finally:
        background.stop()
        mongo.close()
    victim, worker_of, window = seen["victim"], seen["worker_of"], seen["window"]
    frozen = [c for c in clients if worker_of[id(c)] == victim]
    pacing = [c for c in clients if worker_of[id(c)] != victim]
    log = server.log_path.read_text(errors="replace")
    print(f"\n[{mongodb_kind}] {len(clients)} streams ({len(frozen)} on the frozen worker); burst of "
          f"{CHUNKS * CHUNK} into a capped collection of {CAPPED} in {seen['burst_seconds']:.1f}s; every "
          f"stream had the live message {seen['settled_after']:.2f}s after the thaw; resets sent: "
          f"{metric(server.url, 'sse_resets_sent_total'):.0f}")

    lost = [line for line in log.splitlines() if "tailer lost its place" in line]
    assert any(f"[{victim}]" in line for line in lost)
    assert all(f"[{victim}]" in line for line in lost), \
        "the worker that kept pace lost its place too: the burst outran it (test pacing), see the log"
    assert sent[SEEN][0] not in mongo_stored_ids(uri, database, SEEN)  # the resume points really left
    for room in (SEEN, FRESH):
        assert mongo_stored_ids(uri, database, room) == window[room] + [seen["live"][room]]
    for client in pacing:  # kept pace: everything, once, in order
        assert not client.resets
        assert ids(client) == sent[client.room]
    for client in frozen:
        if client.room == SEEN:  # its last event was overwritten: one reset, then the window
            assert len(client.resets) == 1
            reset_at = client.events.index(client.resets[0])
            assert [e.id for e in client.events[:reset_at]] == sent[SEEN][:3]
            assert [e.id for e in client.events[reset_at + 1:]] == window[SEEN] + [seen["live"][SEEN]]
        else:  # it had nothing yet: no resume point to lose, so no reset
            assert not client.resets
            assert ids(client) == window[FRESH] + [seen["live"][FRESH]]
    assert metric(server.url, "sse_resets_sent_total") == sum(c.room == SEEN for c in frozen)
