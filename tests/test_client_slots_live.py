"""MAX_STREAMS_PER_CLIENT live: real gunicorn, 2 gevent workers, streams of one client on both of them.

Each test's clients are loopback addresses of their own (127.0.0.2, ...: all
of 127.0.0.0/8 is this machine), bound as the connection's source, so the
server sees separate clients. Streams are opened in concurrent bursts, which
wakes both workers: the limit is shown to hold across them, not within one.
The slots are read straight from the node's slots file (CLIENT_SLOTS_PATH).
"""
from __future__ import annotations

import http.client
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.support.client_slots import streams_held_in_file
from tests.support.faults import metric
from tests.support.live import LiveServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

LIMIT = 6
BURST = 24
HEARTBEAT = "1"  # the 429's Retry-After, and how soon a vanished client's stream is noticed


@dataclass
class Attempt:
    """One stream request from ``source``: its status, headers, body (when refused) and the worker that answered."""

    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    worker: int
    body: bytes = b""

    @property
    def status(self) -> int:
        return self.response.status

    def close(self) -> None:
        self.response.close()  # a stream's response holds the socket (it said "Connection: close")
        self.connection.close()


def open_stream(server: LiveServer, source: str, room: str = "slots") -> Attempt:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10, source_address=(source, 0))
    connection.request("GET", f"/messages?room={room}", headers={"Accept": "text/event-stream"})
    local_port = connection.sock.getsockname()[1]  # before the response: a stream's lets go of the connection
    response = connection.getresponse()
    attempt = Attempt(connection, response, server.worker_holding(local_port))
    if response.status != 200:
        attempt.body = response.read()
    return attempt


def burst(server: LiveServer, source: str, count: int) -> list[Attempt]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: open_stream(server, source), range(count)))


def held(server: LiveServer, source: str) -> int:
    """Return the streams the node counts for this client, from its slots file."""
    return streams_held_in_file(server.env["CLIENT_SLOTS_PATH"], f"ip:{source}")


def admitted_on_both_workers(server: LiveServer, source: str, tries: int = 10) -> list[Attempt]:
    """Burst BURST stream requests until the LIMIT admitted ones sit on both workers; return them.

    Every burst must admit exactly LIMIT and refuse the rest with the JSON 429.
    """
    for _ in range(tries):
        attempts = burst(server, source, BURST)
        admitted = [attempt for attempt in attempts if attempt.status == 200]
        refused = [attempt for attempt in attempts if attempt.status != 200]
        assert len(admitted) == LIMIT, [attempt.status for attempt in attempts]
        for attempt in refused:
            assert_refused(attempt)
            attempt.close()
        if len({attempt.worker for attempt in admitted}) == 2:
            return admitted
        for attempt in admitted:
            attempt.close()
        wait_until(lambda: held(server, source) == 0, 10)
    raise AssertionError(f"{tries} bursts of {BURST} never admitted streams on both workers")


def assert_refused(attempt: Attempt) -> None:
    assert attempt.status == 429, (attempt.status, attempt.body)
    assert attempt.response.getheader("Retry-After") == HEARTBEAT
    assert attempt.response.getheader("Content-Type") == "application/json"
    assert json.loads(attempt.body) == {
        "code": 429, "status": "Too Many Requests", "errors": {},
        "message": f"this client holds its maximum of {LIMIT} streams on this server; close one first"}


def test_one_clients_streams_are_bounded_across_both_workers_and_freed_when_it_leaves(start_server, store_env):
    server = start_server(**store_env, MAX_STREAMS_PER_CLIENT=str(LIMIT), HEARTBEAT_SECONDS=HEARTBEAT)
    streams = admitted_on_both_workers(server, "127.0.0.2")
    try:
        assert held(server, "127.0.0.2") == LIMIT
        # Full on this node, whichever worker is asked; another client is not affected.
        for attempt in burst(server, "127.0.0.2", 8):
            assert_refused(attempt)
            attempt.close()
        other = open_stream(server, "127.0.0.3")
        assert other.status == 200
        streams.append(other)
        assert metric(server.url, "sse_streams_dropped_total", reason="client_limit") >= BURST - LIMIT + 8

        # The client leaves with one stream on each worker: both slots come back.
        leaving = [next(s for s in streams if s.worker == pid) for pid in server.worker_pids()]
        for attempt in leaving:
            streams.remove(attempt)
            attempt.close()
        wait_until(lambda: held(server, "127.0.0.2") == LIMIT - 2, 10)
        again = burst(server, "127.0.0.2", 6)
        assert sorted(attempt.status for attempt in again) == [200, 200, 429, 429, 429, 429]
        streams += [attempt for attempt in again if attempt.status == 200]
        for attempt in again:
            if attempt.status != 200:
                attempt.close()
    finally:
        for attempt in streams:
            attempt.close()
    wait_until(lambda: held(server, "127.0.0.2") == held(server, "127.0.0.3") == 0, 10)
    wait_until(lambda: metric(server.url, "sse_open_streams") == 0, 10)


def test_a_killed_workers_slots_come_back_and_a_stopped_workers_are_given_back_by_itself(start_server):
    """Slots live in the node's own file, not in the store: SQLite store only."""
    server = start_server(MAX_STREAMS_PER_CLIENT=str(LIMIT), HEARTBEAT_SECONDS=HEARTBEAT)
    streams = admitted_on_both_workers(server, "127.0.0.2")
    try:
        # kill -9: the worker gives nothing back; the master drops its rows when it reaps it.
        victim = streams[0].worker
        on_victim = sum(attempt.worker == victim for attempt in streams)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: held(server, "127.0.0.2") == LIMIT - on_victim, 10,
                   lambda: f"held {held(server, '127.0.0.2')}, expected {LIMIT} - {on_victim} on the victim "
                           f"{victim}; workers {[a.worker for a in streams]}; log tail {server.log()[-1500:]}")
        assert f"worker {victim} died holding {on_victim} client stream slots" in server.log()
        for attempt in [attempt for attempt in streams if attempt.worker == victim]:
            streams.remove(attempt)  # cut when their worker died
            attempt.close()
        wait_until(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(), 20)
        refill = [open_stream(server, "127.0.0.2") for _ in range(on_victim + 1)]
        streams += [attempt for attempt in refill if attempt.status == 200]
        assert [attempt.status for attempt in refill] == [200] * on_victim + [429]
        refill[-1].close()

        # SIGTERM: the worker ends its streams and gives their slots back itself.
        survivor = next(pid for pid in server.worker_pids() if any(a.worker == pid for a in streams))
        on_survivor = sum(attempt.worker == survivor for attempt in streams)
        os.kill(survivor, signal.SIGTERM)
        wait_until(lambda: held(server, "127.0.0.2") == LIMIT - on_survivor, 10)
        wait_until(lambda: survivor not in server.worker_pids(), 20)
        assert f"worker {survivor} died holding" not in server.log()
    finally:
        for attempt in streams:
            attempt.close()
    wait_until(lambda: held(server, "127.0.0.2") == 0, 10)

