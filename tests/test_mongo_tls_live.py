"""The MongoDB store over TLS, live: real gunicorn (2 gevent workers) against a server that speaks only TLS.

Hosted MongoDB requires TLS. Before issue 18 the server never connected over it:
the gunicorn master had imported ssl (through the app) before the gevent worker
patched it, every handshake failed (``TLSV1_ALERT_PROTOCOL_VERSION``) and every
publish answered 503. Here FerretDB (a stand-in, not MongoDB: docs/testing.md)
listens with a certificate made on the spot and no plain listener; messages go
both ways through it (publish -> store, store -> streams on both workers), a
worker is killed with SIGKILL (its replacement is forked from the master and
must reach the store over TLS too), and FerretDB restarts under the streams.

``MONGODB_TLS_URI`` (e.g. a hosted cluster, or a mongod with ``--tlsMode
requireTLS``) runs the same traffic and worker kill against a real server; a
server that is not ours is never restarted.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import prefill_capped
from tests.support.eventsource import EventSourceClient
from tests.support.ferretdb_tls import TLSFerretDB
from tests.support.live import LiveServer
from tests.support.stores import FerretDBWorkarounds, RecordingPublisher, mongo_stored_ids, server_connections
from tests.support.waiting import wait_until

ROOMS = ["tls-a", "tls-b"]
MAX_STREAMS = 60  # opened one by one until both workers hold some; a bound, not a target


@pytest.fixture
def tls_ferretdb(ferretdb_binary: str, tmp_path_factory) -> Iterator[TLSFerretDB]:
    """Start a private FerretDB whose only listener is TLS (its own CA, port and data)."""
    instance = TLSFerretDB(ferretdb_binary, tmp_path_factory.mktemp("ferretdb-tls"))
    try:
        yield instance.start()
    finally:
        instance.kill()


async def open_streams_on(server: LiveServer, workers: set[int], clients: list[EventSourceClient],
                          tasks: list[asyncio.Task]) -> None:
    """Open streams (alternating rooms) one at a time until each of ``workers`` holds at least one."""
    while not workers <= _holders(server, clients):
        assert len(clients) < MAX_STREAMS, f"{MAX_STREAMS} streams and still not on every worker of {workers}"
        client = EventSourceClient("127.0.0.1", server.port, ROOMS[len(clients) % len(ROOMS)])
        clients.append(client)
        tasks.append(asyncio.ensure_future(client.run()))
        await asyncio.wait_for(client.connected.wait(), 30)


def _holders(server: LiveServer, clients: list[EventSourceClient]) -> set[int]:
    """Return the pids of the workers holding the clients' current connections."""
    owners = server_connections(server.port)
    return {owners[client.local_port] for client in clients if client.local_port in owners}


def _run_traffic(server: LiveServer, uri: str, database: str, *, ferretdb: TLSFerretDB | None) -> str:
    """Publish while streams on both workers follow; kill a worker; restart ``ferretdb`` if given; check it all."""
    workarounds = FerretDBWorkarounds(uri, database, enabled=ferretdb is not None).start()
    publisher = RecordingPublisher(server.url, ROOMS, writes=workarounds.writes, threads=2, pause=0.01,
                                   settle_after_no_reply=0.2 if ferretdb else 0.0)
    clients: list[EventSourceClient] = []
    tasks: list[asyncio.Task] = []
    seen: dict = {}

    async def published_after(moment: float) -> None:
        await asyncio.to_thread(wait_until, lambda: any(
            a.status == 201 and a.started > moment for a in publisher.attempts), 20)

    async def scenario() -> None:
        first = set(server.worker_pids())
        await open_streams_on(server, first, clients, tasks)
        publisher.start()
        await published_after(time.monotonic())
        await asyncio.sleep(1.0)  # publishing while both workers follow

        victim = min(_holders(server, clients))
        os.kill(victim, signal.SIGKILL)
        seen["killed_at"] = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: len(set(server.worker_pids()) - first) == 1, 20)
        replacement = (set(server.worker_pids()) - first).pop()
        # The replacement was forked from the master: it must reach the store over TLS as well.
        await open_streams_on(server, {replacement}, clients, tasks)
        await published_after(time.monotonic())
        await asyncio.sleep(1.0)  # publishing while the replacement follows too

        # Up to here the store never went away: not one TLS error may have been logged.
        seen["log_before_restart"] = server.log_path.read_text(errors="replace")
        if ferretdb is not None:
            seen["restarting_at"] = time.monotonic()
            await asyncio.to_thread(ferretdb.restart)
            seen["restarted_at"] = time.monotonic()
            await published_after(seen["restarted_at"])
            await asyncio.sleep(1.0)  # publishing while up again
        publisher.stop()
        workarounds.stop()

        seen["stored"] = {room: mongo_stored_ids(uri, database, room) for room in ROOMS}
        await asyncio.to_thread(wait_until, lambda: all(
            len(c.messages) >= len(seen["stored"][c.room]) for c in clients), 30)
        await asyncio.sleep(0.5)  # a quiet period: a duplicate, if any, would arrive now
        for client in clients:
            client.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    started = time.monotonic()
    asyncio.run(scenario())
    stored = seen["stored"]
    acked = {reply["id"] for reply in publisher.acked}
    summary = (f"{len(clients)} streams, {len(acked)} messages acknowledged, POST outcomes "
               f"{publisher.statuses()}, {sum(len(c.connections) > 1 for c in clients)} streams reconnected; "
               f"{time.monotonic() - started:.1f}s")

    assert acked and acked <= {message_id for ids in stored.values() for message_id in ids}
    for client in clients:
        # Every stream starts with the room's stored backlog: each stored message once, in store order.
        got = [event.id for event in client.messages]
        assert got == stored[client.room], _difference(got, stored[client.room], publisher, started, seen)
        assert not client.resets
    # The killed worker's streams came back with the id they had reached (a stream that had
    # none yet comes back without one, and the backlog is then the whole room again).
    assert any(connection.last_event_id_sent for client in clients for connection in client.connections[1:]), \
        "no stream resumed from an id"
    assert "SSL" not in seen["log_before_restart"], seen["log_before_restart"][-3000:]
    return summary


def _difference(got: list[str], stored: list[str], publisher: RecordingPublisher, started: float, seen: dict) -> str:
    """Say where a stream's ids part from the store's, with when each id's POST began and ended."""
    at = next((n for n, (a, b) in enumerate(zip(got, stored, strict=False)) if a != b), min(len(got), len(stored)))
    posted = {a.body["id"]: (round(a.started - started, 2), round(a.started + a.duration - started, 2))
              for a in publisher.attempts if a.status == 201}
    times = {key: round(value - started, 2) for key, value in seen.items() if key.endswith("_at")}
    return (f"first difference at {at}: got {[(i, posted.get(i)) for i in got[at - 2:at + 3]]}, "
            f"stored {[(i, posted.get(i)) for i in stored[at - 2:at + 3]]}; missing "
            f"{sorted(set(stored) - set(got))}, unexpected {sorted(set(got) - set(stored))}; {times}")


def _assert_clean_log(server: LiveServer) -> None:
    log = server.log_path.read_text(errors="replace")
    assert "MonkeyPatchWarning" not in log
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.mongodb
def test_mongodb_store_over_tls_delivers_both_ways_across_a_worker_kill_and_a_restart(tls_ferretdb, start_server):
    database = f"sse_tls_{uuid.uuid4().hex[:8]}"
    prefill_capped(tls_ferretdb.uri, database)  # FerretDB's tailing needs a full first batch (tests/conftest.py)
    server = start_server(MONGODB_URI=tls_ferretdb.uri, MONGODB_DATABASE=database,
                          HEARTBEAT_SECONDS="1", RETRY_MS="300")
    summary = _run_traffic(server, tls_ferretdb.uri, database, ferretdb=tls_ferretdb)
    print(f"\n[ferretdb over TLS] {summary}")
    _assert_clean_log(server)


@pytest.mark.slow
@pytest.mark.mongodb
def test_mongodb_store_over_tls_on_a_real_server(start_server):
    uri = os.environ.get("MONGODB_TLS_URI")
    if not uri:
        pytest.skip("MONGODB_TLS_URI is not set: no real MongoDB over TLS to try (FerretDB's TLS test runs instead)")
    database = f"sse_tls_{uuid.uuid4().hex[:8]}"
    server = start_server(MONGODB_URI=uri, MONGODB_DATABASE=database, HEARTBEAT_SECONDS="1", RETRY_MS="300")
    try:
        summary = _run_traffic(server, uri, database, ferretdb=None)
    finally:
        from pymongo import MongoClient

        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            client.drop_database(database)
    print(f"\n[MONGODB_TLS_URI] {summary}")
    _assert_clean_log(server)
