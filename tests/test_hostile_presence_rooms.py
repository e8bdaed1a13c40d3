"""Made-up rooms past PRESENCE_MAX_ROOMS cannot make a real user "leave", nor keep her from being named.

Live, on real gunicorn (2 workers), once per store, with private rooms on
(``team-*`` needs a token; ``pub-*`` is public, so anyone may make up rooms
there without one) and ``PRESENCE_MAX_ROOMS`` small so that the bound is
reached with a few streams. A *watcher* (``presence=1``) sits on one worker;
real users open streams of the quiet room ``team-who`` on the other, whose
entry is full of anonymous made-up rooms each busier than the quiet room.

An entry names, first, the rooms in which it already names someone (commit
89163eb), then -- this file -- the rooms in which it has anyone to name, and
only then the busiest of the anonymous rest: before, a user whose stream
moved to the worker full of junk vanished from what the other worker read,
and its watchers were told she left (and one arriving there was never told).
"""
from __future__ import annotations

import time

import pytest

from tests.support.live import LiveServer
from tests.support.sse_client import StreamReader
from tests.support.waiting import quiet_period
from tests.test_live import worker_of
from tests.test_who_is_here_live import (
    AUTH,
    JOIN_WITHIN,
    LEAVE_WITHIN,
    Pinned,
    Watcher,
    no_event_about,
    on_every_worker,
    open_user_on,
)

pytestmark = pytest.mark.slow

MAX_ROOMS = 10
JUNK_ROOMS = [f"pub-junk-{n:02d}" for n in range(32)]  # 32: a stream's most, each past the bound on its own


def junk_stream(server: LiveServer) -> StreamReader:
    """An anonymous stream (no token) of 32 made-up public rooms."""
    rooms = "&".join(f"room={room}" for room in JUNK_ROOMS)
    return StreamReader(f"{server.url}/messages?{rooms}&backlog=0")


def fill_with_junk(server: LiveServer, worker: int, streams: int = 3, tries: int = 60) -> list[StreamReader]:
    """Open junk streams until ``worker`` holds ``streams`` of them: its 32 rooms each busier than a quiet room."""
    junk: list[StreamReader] = []
    held = 0
    for _ in range(tries):
        reader = junk_stream(server)
        junk.append(reader)
        try:
            held += worker_of(server, reader) == worker
        except (AssertionError, OSError):
            # Ended before its worker was looked up: on FerretDB a join that finds the store refusing
            # queries is ended for EventSource to reconnect (as User in test_who_is_here_live.py meets).
            reader.close()
        if held >= streams:
            return junk
    raise AssertionError(f"no {streams} junk streams landed on worker {worker}")


def test_a_user_moving_to_a_worker_full_of_made_up_rooms_does_not_leave(start_server, store_env):
    server = start_server(**store_env, **AUTH, PUBLIC_ROOMS="pub-*", PRESENCE_MAX_ROOMS=str(MAX_ROOMS))
    watcher = Watcher(server)
    here = watcher.worker
    there = next(pid for pid in server.worker_pids() if pid != here)
    pinned = on_every_worker(server, Pinned)
    junk: list[StreamReader] = []
    user = None
    arriving = None
    try:
        user = open_user_on(server, "mover", here)
        assert watcher.wait_for("join", "mover", JOIN_WITHIN) is not None
        junk = fill_with_junk(server, there)
        time.sleep(1.5)  # the junk written into the other worker's entry: its 32 rooms, 10 of them named
        moved = open_user_on(server, "mover", there)
        user.close()
        user = moved
        arriving = open_user_on(server, "newcomer", there)
        quiet_period(LEAVE_WITHIN)  # long enough for a leave (the grace, a write, a read) to be told
        assert [kind for kind, _, _ in watcher.about("mover")] == ["join"], no_event_about([watcher], "mover")
        # Named in the other worker's entry, both are listed everywhere, and the newcomer was announced.
        assert [kind for kind, _, _ in watcher.about("newcomer")] == ["join"], \
            no_event_about([watcher], "newcomer")
        for client in pinned.values():
            assert {"mover", "newcomer"} <= set(client.subs()), (client.worker, client.get())
    finally:
        for reader in [watcher, user, arriving, *junk, *pinned.values()]:
            if reader is not None:
                reader.close()
