"""Who is here, live (issue 16): real gunicorn (2 gevent workers) on each store, one node and two.

Identities come from JWTs (``sub``) with private rooms on. *Watchers* --
``presence=1`` streams -- sit on chosen workers; *users* open and close
streams elsewhere, one at a time at a random moment, and each watcher's
``join``/``leave`` is timed from the user's open or close. ``GET
/rooms/R/subscribers`` is asked of every worker on a connection pinned to it.
Run with ``-s`` to see the figures (docs/scaling-out.md#who-is-here quotes them).
"""
from __future__ import annotations

import http.client
import json
import os
import random
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from tests.support.live import LiveServer
from tests.support.sse_client import StreamReader
from tests.support.tokens import SECRET, claims, mint
from tests.support.waiting import quiet_period, wait_until
from tests.test_live import worker_of

pytestmark = pytest.mark.slow

ROOM = "team-who"
AUTH = {"AUTH_JWT_SECRET": SECRET}
# The bounds held here: a join within 2 s (as GET /rooms/R is right within 2 s); a leave within that plus
# the leave grace (1.5 s: app/delivery/announcer.py); a killed worker's within its entry's expiry (3 s after
# its last refresh, up to 1 s before the kill), a reader's cache (0.5 s) and the grace.
JOIN_WITHIN = 2.0
LEAVE_WITHIN = 4.0
KILLED_LEAVE_WITHIN = 6.0
# FERRETDB: a leave crosses one presence write and one read, each 0.44-0.58 s at p99 on FerretDB under load
# (docs/testing.md); a CI run met 4.08 s with nothing refused. There a leave may take this much longer.
FERRETDB_LEAVE_SLACK = 1.0


def leave_within(kind: str) -> float:
    return LEAVE_WITHIN + (FERRETDB_LEAVE_SLACK if kind == "ferretdb" else 0.0)


@pytest.fixture
def kind(request, store_env: dict[str, str]) -> str:
    """Return "sqlite", or the MongoDB server's kind: "mongod" or "ferretdb"."""
    return request.getfixturevalue("mongodb_kind") if store_env.get("MONGODB_URI") else "sqlite"


def token(sub: str | None) -> str:
    payload = claims(subscribe=["team-*"], expires_in=3600)
    if sub is None:
        del payload["sub"]  # a token without sub: an anonymous stream
    else:
        payload["sub"] = sub
    return mint(payload)


def stream_url(server: LiveServer, sub: str | None, notices: bool = False) -> str:
    return (f"{server.url}/messages?room={ROOM}&backlog=0&access_token={token(sub)}"
            + ("&presence=1" if notices else ""))


class Pinned:
    """A keep-alive connection one worker accepted: every request on it is answered by that worker."""

    def __init__(self, server: LiveServer) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        self.path = f"/rooms/{ROOM}/subscribers?access_token={token('asker')}"
        self.get()
        self.worker = worker_of(server, SimpleNamespace(sock=self.connection.sock))

    def get(self) -> dict:
        self.connection.request("GET", self.path)
        reply = self.connection.getresponse()
        body = reply.read()
        assert reply.status == 200, body
        return json.loads(body)

    def subs(self) -> dict[str, int]:
        return {entry["sub"]: entry["streams"] for entry in self.get()["subscribers"]}

    def close(self) -> None:
        self.connection.close()


def on_every_worker(server: LiveServer, make, tries: int = 15, burst: int = 4) -> dict:
    """Return one ``make(server)`` per worker: made a few at once until each worker holds one (the rest closed)."""
    held: dict = {}
    for _ in range(tries):
        with ThreadPoolExecutor(burst) as pool:
            made = list(pool.map(lambda _: make(server), range(burst)))
        for thing in made:
            worker = thing.worker
            if worker in held:
                thing.close()
            else:
                held[worker] = thing
        if set(held) == set(server.worker_pids()):
            return held
    raise AssertionError(f"could not reach every worker of {server.url}: {sorted(held)}")


class Watcher:
    """A presence=1 stream with an identity of its own; ``worker`` is the worker holding it."""

    count = 0

    def __init__(self, server: LiveServer) -> None:
        Watcher.count += 1
        self.reader = StreamReader(stream_url(server, f"watcher-{Watcher.count}", notices=True))
        self.worker = worker_of(server, self.reader)

    def about(self, sub: str) -> list[tuple[str, dict, float]]:
        """Return the join and leave events about ``sub``: (kind, data, received at)."""
        return [(event.event, json.loads(event.data), at)
                for event, at in zip(list(self.reader.events), list(self.reader.received_at), strict=False)
                if event.event in ("join", "leave") and json.loads(event.data)["sub"] == sub]

    def wait_for(self, kind: str, sub: str, timeout: float) -> float | None:
        """Return when the ``kind`` event about ``sub`` arrived (monotonic), or None if not within ``timeout``."""
        found = self.reader.wait_for(lambda _: any(k == kind for k, _, _ in self.about(sub)), timeout)
        return next(at for k, _, at in self.about(sub) if k == kind) if found else None

    def close(self) -> None:
        self.reader.close()


class User:
    """A plain stream (no events) of one identity; ``worker`` is the worker holding it."""

    def __init__(self, server: LiveServer, sub: str | None) -> None:
        for tries in range(3):
            self.reader = StreamReader(stream_url(server, sub))
            try:
                self.worker = worker_of(server, self.reader)
                return
            except OSError:
                # The stream's socket was gone before its worker was looked up (seen once in 5 runs on
                # FerretDB, at the session's first server; cause not pinned down -- most likely a join
                # that found the store unavailable, which the server ends for EventSource to reconnect).
                self.reader.close()
                if tries == 2:
                    raise

    def close(self) -> None:
        self.reader.close()


def open_user_on(server: LiveServer, sub: str, worker: int, tries: int = 15) -> User:
    """Open a stream of ``sub`` on the given worker (a few at once until one lands there; the rest closed)."""
    for _ in range(tries):
        with ThreadPoolExecutor(4) as pool:
            users = list(pool.map(lambda _: User(server, sub), range(4)))
        keep = next((user for user in users if user.worker == worker), None)
        for user in users:
            if user is not keep:
                user.close()
        if keep is not None:
            return keep
    raise AssertionError(f"no stream landed on worker {worker}")


def millis(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"p50 {statistics.median(ordered) * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms "
            f"({len(ordered)} samples)")


def no_event_about(watchers, sub: str) -> str:
    return "; ".join(f"worker {w.worker}: {[(k, d) for k, d, _ in w.about(sub)]}" for w in watchers)


# -- one node: two workers -----------------------------------------------------------------------

def test_joins_and_leaves_reach_presence_streams_on_every_worker(start_server, store_env, kind):
    server = start_server(**store_env, **AUTH)
    watchers = on_every_worker(server, Watcher)
    pinned = on_every_worker(server, Pinned)
    pause = random.Random(16)
    joined: dict[str, list[float]] = {"same worker": [], "other worker": []}
    left: dict[str, list[float]] = {"same worker": [], "other worker": []}
    users: list[tuple[str, User]] = []
    try:
        time.sleep(2.0)  # the watchers' own joins and the extras' leaves are over
        for n in range(6):
            sub = f"user-{n}"
            time.sleep(pause.uniform(0, 0.6))  # at a random moment of the readers' 0.5 s cache
            started = time.monotonic()
            user = User(server, sub)
            users.append((sub, user))
            for watcher in watchers.values():
                at = watcher.wait_for("join", sub, JOIN_WITHIN + 1)
                assert at is not None, f"no join of {sub} (on {user.worker}) at {watcher.worker}: " \
                                       f"{no_event_about(watchers.values(), sub)}"
                where = "same worker" if watcher.worker == user.worker else "other worker"
                joined[where].append(at - started)
                assert at - started <= JOIN_WITHIN, f"{sub}'s join took {at - started:.2f} s ({where})"
            # Every worker lists it, with its one stream.
            for client in pinned.values():
                wait_until(lambda c=client, s=sub: c.subs().get(s) == 1, JOIN_WITHIN,
                           f"worker {client.worker} does not list {sub}")
        # An anonymous stream is counted, never announced.
        anonymous = User(server, None)
        for client in pinned.values():
            wait_until(lambda c=client: c.get()["anonymous"] == 1, JOIN_WITHIN, "the anonymous stream is not counted")
        anonymous.close()
        while users:
            sub, user = users.pop(pause.randrange(len(users)))
            time.sleep(pause.uniform(0, 0.6))
            started = time.monotonic()
            user.close()
            for watcher in watchers.values():
                at = watcher.wait_for("leave", sub, leave_within(kind) + 1)
                assert at is not None, \
                    f"no leave of {sub} at {watcher.worker}: {no_event_about(watchers.values(), sub)}"
                where = "same worker" if watcher.worker == user.worker else "other worker"
                left[where].append(at - started)
                assert at - started <= leave_within(kind), f"{sub}'s leave took {at - started:.2f} s ({where})"
                kinds = [(k, data) for k, data, _ in watcher.about(sub)]
                # Exactly one of each, the leave saying how many streams the room has left (the watchers, the rest).
                assert [k for k, _ in kinds] == ["join", "leave"], kinds
                assert kinds[1][1] == {"room": ROOM, "sub": sub, "subscribers": len(watchers) + len(users)}
        for watcher in watchers.values():
            events = [event for event in watcher.reader.events if event.event in ("join", "leave")]
            assert all(event.id is None for event in events), "a join or leave carried an id"
            assert not any(json.loads(event.data)["sub"] is None for event in events)
        for client in pinned.values():
            assert not [sub for sub in client.subs() if sub.startswith("user-")]
    finally:
        for _, user in users:
            user.close()
        for thing in [*watchers.values(), *pinned.values()]:
            thing.close()
    print(f"\n[{kind}] join/leave across workers (6 identities, a presence=1 stream on each of 2 workers): "
          f"join: same worker {millis(joined['same worker'])}, other worker {millis(joined['other worker'])}; "
          f"leave (1.5 s grace included): same worker {millis(left['same worker'])}, "
          f"other worker {millis(left['other worker'])}")


def test_moving_from_one_worker_to_the_other_is_neither_a_leave_nor_a_second_join(start_server, store_env, kind):
    """Her new stream opens on the other worker, then her old one closes: watchers see no change of who is here."""
    server = start_server(**store_env, **AUTH)
    watchers = on_every_worker(server, Watcher)
    first, second = sorted(watchers)
    moves = []
    try:
        time.sleep(2.0)
        user = open_user_on(server, "mover", first)
        for watcher in watchers.values():
            assert watcher.wait_for("join", "mover", JOIN_WITHIN + 1) is not None
        for _ in range(4):  # there and back, twice
            target = second if user.worker == first else first
            moved = open_user_on(server, "mover", target)
            user.close()
            user = moved
            moves.append(target)
            time.sleep(0.3)
        # Long enough for any leave (the grace, a write, a read) to have been told.
        quiet_period(LEAVE_WITHIN)  # no leave or join while she moves
        for watcher in watchers.values():
            assert [k for k, _, _ in watcher.about("mover")] == ["join"], no_event_about(watchers.values(), "mover")
        user.close()
        for watcher in watchers.values():
            assert watcher.wait_for("leave", "mover", leave_within(kind) + 1) is not None
            assert [k for k, _, _ in watcher.about("mover")] == ["join", "leave"]
    finally:
        for watcher in watchers.values():
            watcher.close()
    print(f"\n[{kind}] an identity moved between workers 4 times (0.3 s apart): one join, one leave at each watcher")


def test_a_killed_workers_identities_leave_when_its_entry_expires(start_server, store_env, kind):
    server = start_server(**store_env, **AUTH)
    watchers = on_every_worker(server, Watcher)
    victim, survivor = sorted(watchers)
    watcher = watchers[survivor]
    try:
        time.sleep(2.0)
        user = open_user_on(server, "doomed", victim)
        assert watcher.wait_for("join", "doomed", JOIN_WITHIN + 1) is not None
        time.sleep(random.Random(3).uniform(0, 1.0))  # a random moment of the victim's refresh second
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)  # no withdrawal: its entry can only expire
        at = watcher.wait_for("leave", "doomed", KILLED_LEAVE_WITHIN + 2)
        assert at is not None, "a killed worker's identity never left"
        took = at - killed
        assert 1.5 < took <= KILLED_LEAVE_WITHIN, f"left {took:.2f} s after the kill"
        assert [k for k, _, _ in watcher.about("doomed")] == ["join", "leave"]
        user.close()
    finally:
        for w in watchers.values():
            w.close()
    print(f"\n[{kind}] a SIGKILLed worker's identity: leave told {took * 1000:.0f} ms after the kill "
          f"(entry expiry 3 s after its last refresh + cache 0.5 s + grace 1.5 s)")


# -- two nodes on one store ----------------------------------------------------------------------

def test_joins_and_leaves_on_one_node_reach_presence_streams_on_the_other(start_server, store_env, kind):
    node_a, node_b = start_server(**store_env, **AUTH), start_server(**store_env, **AUTH)
    watchers = on_every_worker(node_b, Watcher)
    pinned = on_every_worker(node_b, Pinned)
    pause = random.Random(17)
    joined, left = [], []
    try:
        time.sleep(2.0)
        for n in range(5):
            sub = f"far-{n}"
            time.sleep(pause.uniform(0, 0.6))
            started = time.monotonic()
            user = User(node_a, sub)
            for watcher in watchers.values():
                at = watcher.wait_for("join", sub, JOIN_WITHIN + 1)
                assert at is not None and at - started <= JOIN_WITHIN, \
                    f"{sub}: {no_event_about(watchers.values(), sub)}"
                joined.append(at - started)
            for client in pinned.values():
                wait_until(lambda c=client, s=sub: c.subs().get(s) == 1, JOIN_WITHIN, f"node B does not list {sub}")
            time.sleep(pause.uniform(0, 0.6))
            started = time.monotonic()
            user.close()
            for watcher in watchers.values():
                at = watcher.wait_for("leave", sub, leave_within(kind) + 1)
                assert at is not None and at - started <= leave_within(kind), \
                    f"{sub}: {no_event_about(watchers.values(), sub)}"
                left.append(at - started)
                assert [k for k, _, _ in watcher.about(sub)] == ["join", "leave"]
    finally:
        for thing in [*watchers.values(), *pinned.values()]:
            thing.close()
    print(f"\n[{kind}] join/leave across nodes (5 identities on node A, a presence=1 stream on each worker of "
          f"node B): join {millis(joined)}; leave (1.5 s grace included) {millis(left)}")


# -- bounded, whatever identities clients bring --------------------------------------------------

HOSTILE_IDENTITIES = 60
NAMED_PAIRS = 20


def identity_entries(store_env: dict[str, str]) -> list[tuple[int, int]]:
    """Return each unexpired presence entry's named (room, identity) pairs and their stored bytes, from the store."""
    if store_env.get("MONGODB_URI"):
        import bson
        from pymongo import MongoClient

        with MongoClient(store_env["MONGODB_URI"], serverSelectionTimeoutMS=5000) as client:
            docs = client[store_env["MONGODB_DATABASE"]].presence.find({})
            return [(len(doc.get("subs", [])), len(bson.encode({"subs": doc.get("subs", [])}))) for doc in docs]
    import sqlite3

    with sqlite3.connect(store_env["SQLITE_PATH"]) as conn:
        rows = conn.execute("SELECT subs FROM presence WHERE expires_ms > strftime('%s', 'now') * 1000").fetchall()
    return [(len(json.loads(subs)), len(subs)) for (subs,) in rows]


def test_many_identities_keep_every_presence_entry_bounded_and_the_rest_counted(start_server, store_env, kind):
    """A hook that names a new sub per request, or tokens for made-up names: each entry names at most the bound."""
    server = start_server(**store_env, **AUTH, PRESENCE_MAX_IDENTITIES=str(NAMED_PAIRS))
    long_name = "n" * 200  # long, to make the bound show in bytes
    with ThreadPoolExecutor(8) as pool:
        users = list(pool.map(lambda n: User(server, f"{long_name}-{n:03d}"), range(HOSTILE_IDENTITIES)))
    pinned = on_every_worker(server, Pinned)
    held = {pid: sum(1 for user in users if user.worker == pid) for pid in pinned}
    try:
        def counted_everywhere() -> bool:
            for client in pinned.values():
                body = client.get()
                if len(body["subscribers"]) + body["unnamed"] != HOSTILE_IDENTITIES:
                    return False
            return True

        assert time_until(counted_everywhere, JOIN_WITHIN + 2) is not None, \
            {pid: {key: value for key, value in client.get().items() if key != "subscribers"}
             for pid, client in pinned.items()}
        for pid, client in pinned.items():
            body = client.get()
            # Its own streams exactly, named or not; the other worker's as its entry names them.
            other = HOSTILE_IDENTITIES - held[pid]
            assert len(body["subscribers"]) == held[pid] + min(other, NAMED_PAIRS), (pid, held)
            assert body["unnamed"] == other - min(other, NAMED_PAIRS) and body["anonymous"] == 0
        entries = identity_entries(store_env)
        assert len(entries) == 2 and all(named == min(NAMED_PAIRS, count) for (named, _), count
                                         in zip(sorted(entries), sorted(held.values()), strict=True)), (entries, held)
        # 20 identities of 204 bytes in a 8-byte room: a bounded entry, whatever the streams bring.
        assert all(stored < NAMED_PAIRS * 300 for _, stored in entries), entries
    finally:
        for user in users:
            user.close()
        for client in pinned.values():
            client.close()
    print(f"\n[{kind}] {HOSTILE_IDENTITIES} identities of 204 bytes on 2 workers ({sorted(held.values())}), "
          f"PRESENCE_MAX_IDENTITIES={NAMED_PAIRS}: entries " + ", ".join(
              f"{named} named in {stored:,} bytes" for named, stored in entries))


def time_until(predicate, timeout: float) -> float | None:
    try:
        return wait_until(predicate, timeout, interval=0.05)
    except AssertionError:
        return None
