"""Presence in one process: the per-worker loop (app/delivery/presence.py) and GET /rooms, /rooms/<room>.

The loop runs against a recording store here; the stores' side (expiry,
sums, withdrawal, the database clock) is in tests/test_store_contract.py, and
real workers and nodes are in tests/test_presence_live.py.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import gevent
import pytest

from app.delivery.hub import Hub
from app.delivery.presence import Presence, busiest_rooms
from app.stores.base import PresenceReport, StoreUnavailable
from tests.support.waiting import quiet_period, wait_until


class RecordingStore:
    """Presence calls, in order; ``others`` is what the other workers hold; ``fail`` makes every call fail."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.others: dict[str, int] = {}
        self.reads = 0
        self.fail = False
        self.held = False  # whether the store holds this worker's entry (what refresh answers)

    def _maybe_fail(self) -> None:
        if self.fail:
            raise StoreUnavailable("down")

    def publish_presence(self, worker_id, report, ttl):
        self._maybe_fail()
        self.held = True
        if report.other_rooms:
            self.calls.append(("publish", dict(report.rooms), ttl, report.other_rooms, report.other_streams))
        else:
            self.calls.append(("publish", dict(report.rooms), ttl))

    def refresh_presence(self, worker_id, ttl):
        self._maybe_fail()
        self.calls.append(("refresh", ttl))
        return self.held

    def withdraw_presence(self, worker_id):
        self._maybe_fail()
        self.held = False
        self.calls.append(("withdraw",))

    def presence_counts(self, exclude=None):
        self._maybe_fail()
        self.reads += 1
        return PresenceReport(dict(self.others))


@pytest.fixture
def hub() -> Hub:
    return Hub(queue_limit=10)


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def presence(store, hub):
    presence = Presence(store, hub, check_interval=0.01, write_interval=0.05, refresh_interval=0.2, ttl=0.6,
                        cache_seconds=0.1)
    yield presence
    presence.stop()


def written(store: RecordingStore, calls: int = 1) -> None:
    """Wait until the presence loop has made ``calls`` store calls in all."""
    wait_until(lambda: len(store.calls) >= calls, 5, f"the presence loop made fewer than {calls} store calls",
               interval=0.01, sleep=gevent.sleep)


def test_worker_id_names_host_and_pid_and_differs_per_start(store, hub):
    import os
    import socket

    first, second = Presence(store, hub).worker_id, Presence(store, hub).worker_id
    assert first.startswith(f"{socket.gethostname()}:{os.getpid()}:") and first != second


def test_an_idle_worker_writes_nothing(presence, store):
    presence.start()
    quiet_period(0.3, sleep=gevent.sleep)
    assert store.calls == []


def test_a_change_is_written_at_once_then_only_the_expiry_refreshed_while_streams_are_open(presence, store, hub):
    presence.start()
    hub.subscribe(("lobby", "dev"))
    hub.subscribe(("lobby",))
    gevent.sleep(0.03)
    assert store.calls == [("publish", {"lobby": 2, "dev": 1}, 0.6)]
    started = time.monotonic()
    while len(store.calls) < 3 and time.monotonic() - started < 5:  # refresh_interval 0.2: two refreshes
        gevent.sleep(0.02)
    took = time.monotonic() - started
    assert len(store.calls) >= 3
    assert store.calls[1:] == [("refresh", 0.6)] * (len(store.calls) - 1)  # the expiry, nothing else
    assert took >= 0.3  # and not sooner than refresh_interval allows


def test_an_entry_gone_from_the_store_is_written_whole_at_the_next_refresh(presence, store, hub):
    """Swept after the worker stalled, or the store emptied: a refresh finds nothing to move on."""
    presence.start()
    hub.subscribe(("lobby",))
    written(store)
    store.held = False
    written(store, 3)
    assert store.calls[:3] == [("publish", {"lobby": 1}, 0.6), ("refresh", 0.6), ("publish", {"lobby": 1}, 0.6)]


def test_changes_are_written_at_most_once_per_write_interval(store, hub):
    """A client opening and closing streams all the time cannot make the worker write more often."""
    presence = Presence(store, hub, check_interval=0.01, write_interval=0.2, refresh_interval=10, ttl=30)
    presence.start()
    try:
        started = time.monotonic()
        for n in range(50):  # a change every 10 ms for 0.5 s (longer on a loaded machine)
            subscription = hub.subscribe((f"churn-{n}",))
            gevent.sleep(0.01)
            hub.unsubscribe(subscription)
        took = time.monotonic() - started
        writes = [call for call in store.calls if call[0] in ("publish", "withdraw")]
        # One per 0.2 s of what the churn took, not 50 (idle: 0.5 s, 2-4 writes; at load 20 the
        # fixed bound of 4 failed with 6 writes: the 50 sleeps of 10 ms took over a second).
        assert 2 <= len(writes) <= took / 0.2 + 2, (round(took, 2), writes)
    finally:
        presence.stop()


def test_a_worker_names_its_busiest_rooms_and_counts_the_rest(store, hub):
    presence = Presence(store, hub, max_rooms=2, check_interval=0.01, write_interval=0.01)
    hub.subscribe(("lobby", "dev", "made-up-1"))
    hub.subscribe(("lobby", "dev", "made-up-2"))
    hub.subscribe(("lobby", "made-up-3"))
    presence.start()
    try:
        written(store)
        # Named: lobby 3, dev 2; counted: three rooms, one stream each.
        assert store.calls[0] == ("publish", {"lobby": 3, "dev": 2}, presence.ttl, 3, 3)
    finally:
        presence.stop()


def test_the_rooms_are_worked_out_again_only_when_a_stream_joined_or_left(presence, store, hub, monkeypatch):
    """Working them out costs O(rooms followed): a hostile worker follows hundreds of thousands."""
    worked_out = []
    room_counts = hub.room_counts
    monkeypatch.setattr(hub, "room_counts", lambda: worked_out.append(1) or room_counts())
    hub.subscribe(("lobby",))
    presence.start()
    quiet_period(0.3, sleep=gevent.sleep)  # 30 looks, refreshes, and readers: nothing changed after the first
    for _ in range(10):
        presence.report()
    assert len(worked_out) == 1
    hub.subscribe(("dev",))
    wait_until(lambda: len(worked_out) >= 2, 5, "the rooms were not worked out again", sleep=gevent.sleep)
    assert len(worked_out) == 2 and presence.report() == PresenceReport({"lobby": 1, "dev": 1},
                                                                       anonymous={"lobby": 1, "dev": 1})


@pytest.mark.parametrize(("counts", "max_rooms", "expected"), [
    ({}, 3, PresenceReport()),
    ({"a": 1, "b": 2}, 2, PresenceReport({"a": 1, "b": 2})),
    ({"a": 1, "b": 2, "c": 3}, 2, PresenceReport({"c": 3, "b": 2}, 1, 1)),
    # Ties go by name: the same counts always name the same rooms.
    ({"z": 1, "y": 1, "x": 1, "w": 5}, 2, PresenceReport({"w": 5, "x": 1}, 2, 2)),
    ({f"r{n}": 1 for n in range(1000)}, 1, PresenceReport({"r0": 1}, 999, 999)),
    ({"a": 3, "b": 2, "c": 2, "d": 2, "e": 1}, 3, PresenceReport({"a": 3, "b": 2, "c": 2}, 2, 3)),
    ({"a": 3, "b": 3, "c": 2}, 2, PresenceReport({"a": 3, "b": 3}, 1, 2)),
], ids=["empty", "within", "busiest", "ties-by-name", "many", "ties-at-the-cut", "cut-between-counts"])
def test_busiest_rooms(counts, max_rooms, expected):
    assert busiest_rooms(counts, max_rooms) == expected


def test_a_hostile_worker_entry_stays_bounded(store, hub):
    """1,000 streams, each naming 32 made-up rooms: the entry names 50 rooms and counts the other 31,950."""
    import random

    pick = random.Random(18)
    for _ in range(1000):
        hub.subscribe(tuple(f"x{pick.getrandbits(64):x}" for _ in range(32)))
    report = busiest_rooms(hub.room_counts(), 50)
    assert len(report.rooms) == 50
    assert report.other_rooms == 32_000 - 50 and report.other_streams + sum(report.rooms.values()) == 32_000


def test_the_last_stream_ending_withdraws_the_entry_once(presence, store, hub):
    presence.start()
    subscription = hub.subscribe(("lobby",))
    written(store)
    hub.unsubscribe(subscription)
    written(store, 2)
    quiet_period(0.3, sleep=gevent.sleep)  # a second withdraw would come now
    assert store.calls == [("publish", {"lobby": 1}, 0.6), ("withdraw",)]


def test_stop_withdraws_and_writes_no_more(presence, store, hub):
    presence.start()
    hub.subscribe(("lobby",))
    written(store)
    presence.stop()
    assert store.calls[-1] == ("withdraw",)
    writes = len(store.calls)
    quiet_period(0.3, sleep=gevent.sleep)
    assert len(store.calls) == writes


def test_two_stops_at_once_both_finish_and_withdraw(presence, store, hub):
    """Regression: a worker SIGTERMed twice (the process group's signal) ran two stops; one crashed on None.kill."""
    presence.start()
    hub.subscribe(("lobby",))
    written(store)
    stops = [gevent.spawn(presence.stop) for _ in range(2)]
    gevent.joinall(stops, raise_error=True)
    assert all(stop.successful() for stop in stops)
    assert store.calls[-2:] == [("withdraw",), ("withdraw",)]


def test_a_second_sigterm_even_inside_the_first_handler_ends_the_streams_once(store, hub, monkeypatch):
    """Regression: systemd signals the whole group, so the master's SIGTERM can land inside the worker's own."""
    import signal

    from app.operations import lifecycle

    ended = []
    services = SimpleNamespace(slots=SimpleNamespace(open=1), hub=SimpleNamespace(close_all=lambda: ended.append(1)),
                               presence=Presence(store, hub), admission=SimpleNamespace(close=lambda: None))
    real_spawn, nested = gevent.spawn, []

    def spawn_with_a_signal_arriving(*args):
        # Python runs a handler between bytecodes, so a second SIGTERM can run it
        # again inside the first, e.g. while the first hands the work to a greenlet.
        if not nested:
            nested.append(1)
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        return real_spawn(*args)

    monkeypatch.setattr(lifecycle.gevent, "spawn", spawn_with_a_signal_arriving)
    before = signal.getsignal(signal.SIGTERM)
    try:
        lifecycle.end_streams_on_sigterm(SimpleNamespace(wsgi=SimpleNamespace(extensions={"sse": services}),
                                                         handle_exit=lambda signum, frame: None))
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        handler(signal.SIGTERM, None)  # and a third, later
        gevent.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert nested and ended == [1]
    assert store.calls == [("withdraw",)]


def test_a_store_outage_is_retried_within_the_refresh_interval_and_the_loop_survives(presence, store, hub):
    presence.start()
    store.fail = True
    hub.subscribe(("lobby",))
    gevent.sleep(0.3)
    assert store.calls == []
    store.fail = False
    gevent.sleep(0.25)
    assert store.calls and store.calls[0] == ("publish", {"lobby": 1}, 0.6)


def test_one_failed_write_costs_about_a_check_not_a_refresh_interval(store, hub):
    """Regression: a failed write waited a whole refresh interval (1 s) for its retry, so one refusal
    from the store (FerretDB's "database is locked" when two workers upsert at once) held a new
    stream back past the 2 s promised."""
    presence = Presence(store, hub, check_interval=0.05, write_interval=0.05, refresh_interval=2.0, ttl=6.0)
    real, tries = store.publish_presence, []

    def refused_once(*args):
        tries.append(time.monotonic())
        if len(tries) == 1:
            raise StoreUnavailable("database is locked")
        real(*args)

    store.publish_presence = refused_once
    hub.subscribe(("lobby",))
    presence.start()
    try:
        written(store)
        assert store.calls == [("publish", {"lobby": 1}, 6.0)]
        # A check (0.05 s) and room for a loaded machine; the refresh interval is 2 s.
        assert tries[1] - tries[0] < 0.5, f"retried {tries[1] - tries[0]:.2f} s after one failure"
    finally:
        presence.stop()


def test_while_writes_keep_failing_the_retries_back_off_to_the_refresh_interval_jittered(store, hub):
    presence = Presence(store, hub, check_interval=0.25, refresh_interval=1.0)
    for failures, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 1.0), (1000, 1.0)]:
        delays = {presence.retry_delay(failures) for _ in range(50)}
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), (failures, sorted(delays))
        assert len(delays) > 1, "not jittered: workers that failed together would retry together"


def test_failing_writes_log_one_line_when_they_start_and_end_never_a_traceback_per_try(store, hub, caplog):
    """A write that fails every time (e.g. a document MongoDB refuses) once logged a traceback a second."""
    presence = Presence(store, hub, check_interval=0.01, write_interval=0.01, refresh_interval=0.02, ttl=0.1)
    tries = []

    def refused(*args):
        tries.append(args)
        raise ValueError("BSON document too large\n(16793600 bytes)")

    real = store.publish_presence
    store.publish_presence = refused
    hub.subscribe(("lobby",))
    with caplog.at_level("INFO", logger="app.delivery.presence"):
        presence.start()
        gevent.sleep(0.5)
        store.publish_presence = real
        gevent.sleep(0.1)
        presence.stop()
    lines = [record for record in caplog.records if record.name == "app.delivery.presence"]
    assert len(tries) >= 10
    assert [record.levelname for record in lines] == ["ERROR", "INFO"], [r.getMessage() for r in lines]
    failed, recovered = (record.getMessage() for record in lines)
    assert "ValueError: BSON document too large (16793600 bytes)" in failed and "\n" not in failed
    assert f"after {len(tries)} failures" in recovered
    assert all(record.exc_info is None for record in lines)


def test_a_long_outage_is_logged_again_at_most_once_per_period(store, hub, caplog):
    presence = Presence(store, hub, check_interval=0.01, write_interval=0.01, refresh_interval=0.02, ttl=0.1)
    presence.writes.every = 0.2
    store.fail = True
    hub.subscribe(("lobby",))
    with caplog.at_level("WARNING", logger="app.delivery.presence"):
        presence.start()
        gevent.sleep(0.5)
        presence.stop()
    lines = [record.getMessage() for record in caplog.records if "entry to the store failed" in record.getMessage()]
    assert 2 <= len(lines) <= 3, lines  # at 0, 0.2 and 0.4 s: not the ~25 tries


def test_a_bug_in_a_write_does_not_end_the_loop(presence, store, hub, monkeypatch):
    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("bug")

    monkeypatch.setattr(store, "publish_presence", broken)
    presence.start()
    hub.subscribe(("lobby",))
    gevent.sleep(0.5)
    assert len(calls) >= 2  # it tried again at the refresh interval


def test_a_bug_working_out_the_entry_does_not_end_the_loop(presence, store, hub, monkeypatch):
    """Regression (hostile, live): an identity that would not encode ended the loop; the entry expired for good."""
    real, failures = hub.room_identities, []

    def broken_once():
        if not failures:
            failures.append(1)
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return real()

    monkeypatch.setattr(hub, "room_identities", broken_once)
    hub.subscribe(("lobby",), subject="alice")
    presence.start()
    wait_until(lambda: store.held, 5, "the entry written after the failure", sleep=gevent.sleep)
    assert failures and not presence._greenlet.dead


def test_counts_add_this_workers_live_streams_to_the_others_in_the_store(presence, store, hub):
    store.others = {"lobby": 3, "dev": 1}
    hub.subscribe(("lobby", "ops"))
    assert presence.report() == PresenceReport({"lobby": 4, "dev": 1, "ops": 1}, anonymous={"lobby": 1, "ops": 1})
    assert [presence.subscribers(room) for room in ("lobby", "dev", "ops", "none")] == [4, 1, 1, 0]


def test_the_others_are_read_at_most_once_per_cache_period(presence, store, hub):
    store.others = {"lobby": 3}
    for _ in range(20):
        assert presence.subscribers("lobby") == 3
    assert store.reads == 1
    store.others = {"lobby": 5}
    hub.subscribe(("lobby",))
    assert presence.subscribers("lobby") == 4  # this worker's own streams are never cached here
    gevent.sleep(0.15)
    assert presence.subscribers("lobby") == 6
    assert store.reads == 2


def test_one_room_counts_this_workers_streams_exactly_even_beyond_the_rooms_it_names(store, hub):
    presence = Presence(store, hub, max_rooms=1)
    hub.subscribe(("lobby",))
    hub.subscribe(("lobby", "quiet"))
    assert presence.subscribers("quiet") == 1
    assert presence.report() == PresenceReport({"lobby": 2}, other_rooms=1, other_streams=1, anonymous={"lobby": 2})


def test_a_failed_read_answers_with_recent_counts_then_fails(presence, store):
    store.others = {"lobby": 3}
    assert presence.report() == PresenceReport({"lobby": 3})
    store.fail = True
    gevent.sleep(0.15)  # past cache_seconds (0.1), within stale_seconds (1.5)
    assert presence.report() == PresenceReport({"lobby": 3})
    presence.stale_seconds = 0.1
    with pytest.raises(StoreUnavailable):
        presence.report()


def test_concurrent_readers_share_one_store_read(presence, store):
    def slow_read(exclude=None):
        store.reads += 1
        gevent.sleep(0.05)
        return PresenceReport({"lobby": 1})

    store.presence_counts = slow_read
    results = [job.value for job in gevent.joinall([gevent.spawn(presence.subscribers, "lobby") for _ in range(10)])]
    assert results == [1] * 10 and store.reads == 1


# -- the views, through Flask's test client (SQLite store) --------------------------------------

def until_the_window_holds(client, room, count):
    """Let this worker's tailer read what was just posted (its window is a few ms behind the store)."""
    wait_until(lambda: client.get(f"/rooms/{room}").get_json()["messages"] >= count, 3,
               f"the window did not get {count} messages of {room}", interval=0.01, sleep=gevent.sleep)


def test_room_presence_of_an_unknown_room_is_zero(client):
    reply = client.get("/rooms/lobby")
    assert reply.status_code == 200
    assert reply.get_json() == {"room": "lobby", "subscribers": 0, "messages": 0, "lastMessageAt": None}


def test_room_presence_counts_the_windows_messages_and_the_newest_time(client):
    client.post("/messages", json={"room": "lobby", "text": "one"})
    newest = client.post("/messages", json={"room": "lobby", "text": "two"}).get_json()
    client.post("/messages", json={"room": "other", "text": "elsewhere"})
    until_the_window_holds(client, "lobby", 2)
    assert client.get("/rooms/lobby").get_json() == {
        "room": "lobby", "subscribers": 0, "messages": 2, "lastMessageAt": newest["createdAt"]}


def test_subscribers_count_streams_and_a_stream_of_several_rooms_counts_in_each(app, client):
    hub = app.extensions["sse"].hub
    hub.subscribe(("lobby",))
    hub.subscribe(("lobby", "dev"))
    assert client.get("/rooms/lobby").get_json()["subscribers"] == 2
    assert client.get("/rooms/dev").get_json()["subscribers"] == 1


def test_rooms_lists_rooms_with_subscribers_or_messages_by_name(app, client):
    client.post("/messages", json={"room": "zebra", "text": "hi"})
    until_the_window_holds(client, "zebra", 1)
    hub = app.extensions["sse"].hub
    hub.subscribe(("alpha",))
    gone = hub.subscribe(("gone",))
    hub.unsubscribe(gone)
    listed = client.get("/rooms").get_json()["rooms"]
    assert [room["room"] for room in listed] == ["alpha", "zebra"]
    assert listed[0] == {"room": "alpha", "subscribers": 1, "messages": 0, "lastMessageAt": None}
    assert listed[1]["messages"] == 1 and listed[1]["subscribers"] == 0


@pytest.mark.parametrize("room", ["a%20b", "r" * 65, "caf%C3%A9", "a%2Cb", "", "/lobby", "a/b", "lobby/", "a%0Ab"],
                         ids=["space", "too-long", "non-ascii", "comma", "empty", "leading-slash", "slash",
                              "trailing-slash", "newline"])
def test_invalid_room_is_400_in_the_one_error_shape(client, room):
    reply = client.get(f"/rooms/{room}")
    assert reply.status_code == 400
    assert set(reply.get_json()) == {"code", "status", "message", "errors"} and "room" in reply.get_json()["errors"]


def test_the_rooms_dot_and_dot_dot_are_reached_percent_encoded(client):
    """Regression (schemathesis): clients resolve a bare ../. segment, so these go as %2E."""
    assert client.get("/rooms/%2E%2E").get_json()["room"] == ".."
    assert client.get("/rooms/%2E").get_json()["room"] == "."


def test_the_document_describes_both_paths_with_the_shapes_they_answer(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    room = paths["/rooms/{room}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    listing = paths["/rooms"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert room == {"$ref": "#/components/schemas/RoomOut"} and listing == {"$ref": "#/components/schemas/RoomsOut"}
    assert set(schemas["RoomOut"]["required"]) == set(client.get("/rooms/lobby").get_json())
    assert set(schemas["RoomsOut"]["required"]) == set(client.get("/rooms").get_json())
    assert [parameter["name"] for parameter in paths["/rooms"]["get"]["parameters"]] == ["limit", "after"]


def post_and_wait(client, room):
    client.post("/messages", json={"room": room, "text": "hi"})
    until_the_window_holds(client, room, 1)


def all_pages(client, limit, path="/rooms", **headers):
    """Follow ``next`` from the first page to the last; return every room listed, in order, and the pages."""
    rooms, pages, after = [], 0, None
    while True:
        query = f"?limit={limit}" + (f"&after={after}" if after else "")
        body = client.get(path + query, headers=headers).get_json()
        pages += 1
        assert len(body["rooms"]) <= limit and (body["next"] is not None) == body["hasMore"]
        rooms += [room["room"] for room in body["rooms"]]
        if not body["hasMore"]:
            return rooms, pages
        assert body["next"] == body["rooms"][-1]["room"] and len(body["rooms"]) == limit
        after = body["next"]
        assert pages < 100


def test_rooms_pages_by_name_with_no_room_twice_or_missing(app, client):
    hub = app.extensions["sse"].hub
    subscribed = {f"room-{n:03d}" for n in range(0, 57)}
    for room in subscribed:
        hub.subscribe((room,))
    for room in ("room-500", "a.first", "zz_last"):
        post_and_wait(client, room)
    expected = sorted(subscribed | {"room-500", "a.first", "zz_last"})
    for limit in (1, 7, 60, 1000):
        rooms, pages = all_pages(client, limit)
        assert rooms == expected, limit
        assert pages == -(-len(expected) // limit)  # a last page that is full says hasMore false


def test_rooms_answers_100_by_default_and_says_where_to_go_on(app, client):
    hub = app.extensions["sse"].hub
    for n in range(150):
        hub.subscribe((f"r{n:03d}",))
    body = client.get("/rooms").get_json()
    assert len(body["rooms"]) == 100 and body["hasMore"] is True and body["next"] == "r099"
    rest = client.get("/rooms?after=r099").get_json()
    assert [room["room"] for room in rest["rooms"]] == [f"r{n:03d}" for n in range(100, 150)]
    assert rest["hasMore"] is False and rest["next"] is None
    # After a room that is not (or no longer) listed: from the next name on.
    assert client.get("/rooms?after=r0995&limit=2").get_json()["rooms"][0]["room"] == "r100"


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=-1", "limit"), ("limit=abc", "limit"),
    ("limit=", "limit"), ("limit=%205", "limit"), ("limit=%2B5", "limit"), ("limit=1_0", "limit"),
    ("limit=%EF%BC%95", "limit"), ("limit=1.5", "limit"), ("limit=99999999999999999999", "limit"),
    ("after=", "after"), ("after=a%20b", "after"), ("after=" + "r" * 65, "after"), ("after=caf%C3%A9", "after"),
    ("after=a%0Ab", "after"), ("after=a/b", "after"),
], ids=["zero", "over-max", "negative", "word", "empty", "space", "plus", "underscore", "fullwidth-digit",
        "fraction", "huge", "after-empty", "after-space", "after-too-long", "after-non-ascii", "after-newline",
        "after-slash"])
def test_bad_paging_values_are_400_in_the_one_error_shape(client, query, field):
    reply = client.get(f"/rooms?{query}")
    assert reply.status_code == 400
    body = reply.get_json()
    assert set(body) == {"code", "status", "message", "errors"} and field in body["errors"]


def test_rooms_reports_the_rooms_counted_but_not_named(sqlite_path):
    from app import create_app

    app = create_app({"SQLITE_PATH": sqlite_path, "HEARTBEAT_SECONDS": "1", "PRESENCE_MAX_ROOMS": "2"})
    hub = app.extensions["sse"].hub
    hub.subscribe(("lobby", "dev", "x1"))
    hub.subscribe(("lobby", "dev", "x2"))
    hub.subscribe(("lobby", "x3"))
    body = app.test_client().get("/rooms").get_json()
    assert [room["room"] for room in body["rooms"]] == ["dev", "lobby"]
    assert body["otherRooms"] == {"rooms": 3, "subscribers": 3}
    # One room is still counted exactly by the worker that holds its streams.
    assert app.test_client().get("/rooms/x3").get_json()["subscribers"] == 1


@pytest.fixture
def private_client(sqlite_path):
    """Authorization on: the lobby is public, every other room private."""
    from app import create_app
    from tests.support.tokens import SECRET

    app = create_app({"SQLITE_PATH": sqlite_path, "HEARTBEAT_SECONDS": "1", "AUTH_JWT_SECRET": SECRET,
                      "PUBLIC_ROOMS": "lobby"})
    for room in ("lobby", "team-red", "team-blue", "secret"):
        app.extensions["sse"].hub.subscribe((room,))
    return app.test_client()


def bearer_for(*subscribe: str) -> dict[str, str]:
    from tests.support.tokens import claims, mint

    return {"Authorization": f"Bearer {mint(claims(subscribe=list(subscribe)))}"}


def test_a_private_rooms_presence_is_read_as_the_room_is(private_client):
    assert private_client.get("/rooms/lobby").status_code == 200
    assert private_client.get("/rooms/secret").status_code == 401
    assert private_client.get("/rooms/secret", headers=bearer_for("team-*")).status_code == 403
    reply = private_client.get("/rooms/team-red", headers=bearer_for("team-*"))
    assert reply.status_code == 200 and reply.get_json()["subscribers"] == 1


def test_rooms_lists_only_what_the_caller_may_read(private_client):
    def listed(headers=None):
        reply = private_client.get("/rooms", headers=headers or {})
        assert reply.status_code == 200
        return [room["room"] for room in reply.get_json()["rooms"]]

    assert listed() == ["lobby"]
    assert listed(bearer_for("team-*")) == ["lobby", "team-blue", "team-red"]
    assert listed(bearer_for("*")) == ["lobby", "secret", "team-blue", "team-red"]
    assert private_client.get("/rooms", headers={"Authorization": "Bearer not-a-token"}).status_code == 401


def test_pages_hold_only_readable_rooms_and_are_full(private_client):
    rooms, pages = all_pages(private_client, 1, **bearer_for("team-*"))
    assert rooms == ["lobby", "team-blue", "team-red"] and pages == 3
    assert all_pages(private_client, 2) == (["lobby"], 1)


def test_presence_is_503_with_retry_after_when_the_store_cannot_be_read(app, client, monkeypatch):
    def down(exclude=None):
        raise StoreUnavailable("down")

    monkeypatch.setattr(app.extensions["sse"].store, "presence_counts", down)
    for path in ("/rooms", "/rooms/lobby"):
        reply = client.get(path)
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"


# -- the bound: a setting, and MongoDB's 16 MB ------------------------------------------------------

def test_presence_max_rooms_is_a_setting_with_a_clear_error():
    from app.config import ConfigError, Settings

    assert Settings.from_env({}).presence_max_rooms == 1000
    assert Settings.from_env({"PRESENCE_MAX_ROOMS": "50"}).presence_max_rooms == 50
    for bad in ("0", "100001", "many"):
        with pytest.raises(ConfigError, match="PRESENCE_MAX_ROOMS"):
            Settings.from_env({"PRESENCE_MAX_ROOMS": bad})


def test_the_largest_presence_document_the_setting_allows_is_under_16_mb():
    """Worked out at start-up from BSON's encoding; checked here against a real worst-case document."""
    from datetime import UTC, datetime

    import bson

    from app.stores.base import MAX_ROOM_BYTES, MAX_SUBJECT_BYTES
    from app.stores.mongo import BSON_DOCUMENT_LIMIT, MAX_WORKER_ID_BYTES, presence_document_max_bytes

    most, most_subs = 100_000, 10_000  # the largest PRESENCE_MAX_ROOMS and PRESENCE_MAX_IDENTITIES accept
    worst = {"_id": "h" * MAX_WORKER_ID_BYTES,
             "rooms": [{"room": f"{n:0{MAX_ROOM_BYTES}d}", "streams": 2**63 - 1, "anonymous": 2**63 - 1}
                       for n in range(most)],
             "otherRooms": 2**63 - 1, "otherStreams": 2**63 - 1,
             "subs": [{"room": f"{n:0{MAX_ROOM_BYTES}d}", "sub": f"{n:0{MAX_SUBJECT_BYTES}d}", "streams": 2**63 - 1}
                      for n in range(most_subs)],
             "otherSubs": 2**63 - 1, "expiresAt": datetime.now(UTC)}
    size = len(bson.encode(worst))
    # An upper bound (it counts every array index as long as the last one), and a close one.
    assert size <= presence_document_max_bytes(most, most_subs) < BSON_DOCUMENT_LIMIT
    assert presence_document_max_bytes(most, most_subs) - size < (most + most_subs) * len(str(most))
    # The defaults: about 100 KB of rooms and 390 KB of identities at worst (256-byte subs in 64-byte rooms).
    assert presence_document_max_bytes(1000, 1000) < 500_000


def test_a_room_name_is_never_longer_than_the_worst_case_counts_on():
    from app.edge.schemas import valid_room
    from app.stores.base import MAX_ROOM_BYTES

    assert valid_room("r" * MAX_ROOM_BYTES) and not valid_room("r" * (MAX_ROOM_BYTES + 1))
    assert not valid_room("é" * (MAX_ROOM_BYTES // 2))  # ASCII only: characters are bytes


def test_a_worker_id_fits_the_worst_case(monkeypatch):
    import socket

    from app.delivery.presence import make_worker_id
    from app.stores.mongo import MAX_WORKER_ID_BYTES

    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 255)
    assert len(make_worker_id().encode()) <= MAX_WORKER_ID_BYTES


def test_the_mongodb_store_refuses_a_bound_whose_documents_could_pass_16_mb():
    from app.stores.base import StoreMisconfigured
    from app.stores.mongo import MongoStore

    MongoStore("mongodb://127.0.0.1:1", "x", max_bytes=4096, max_messages=1, presence_max_rooms=100_000)
    with pytest.raises(StoreMisconfigured, match="PRESENCE_MAX_ROOMS=170000"):
        MongoStore("mongodb://127.0.0.1:1", "x", max_bytes=4096, max_messages=1, presence_max_rooms=170_000)


def test_a_presence_table_from_before_the_other_columns_is_brought_up_to_date(sqlite_path):
    import sqlite3

    from app.stores.sqlite import SQLiteStore

    with sqlite3.connect(sqlite_path) as conn:
        conn.execute("CREATE TABLE presence (worker TEXT PRIMARY KEY, rooms TEXT NOT NULL, "
                     "expires_ms INTEGER NOT NULL)")
        conn.execute("INSERT INTO presence VALUES ('old', '{\"lobby\": 1}', 9999999999999)")
    store = SQLiteStore(sqlite_path, max_bytes=10**6, max_messages=100)
    store.publish_presence("new", PresenceReport({"lobby": 2}, other_rooms=5, other_streams=6), ttl=30)
    assert store.presence_counts() == PresenceReport({"lobby": 3}, other_rooms=5, other_streams=6)
    store.close()


def test_an_entry_costly_to_work_out_is_worked_out_again_no_sooner_than_its_cost_allows(store, monkeypatch):
    """Regression (hostile, live): 320,000 made-up rooms on one worker cost ~0.5 s a time, worked out twice a
    second under churn; the worker's other streams stalled behind it (publishes ~0.5 s, deliveries 1.4 s late)."""
    import app.delivery.presence as presence_module

    clock = [1000.0]
    monkeypatch.setattr(presence_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    calls = []

    def costly(*args, **kwargs):
        calls.append(clock[0])
        clock[0] += 0.5  # what this look cost
        return busiest_rooms(*args, **kwargs)

    monkeypatch.setattr(presence_module, "busiest_rooms", costly)
    hub = Hub(queue_limit=10)
    presence = Presence(store, hub)
    for n in range(3):
        hub.subscribe((f"room-{n}",))
        presence.own_report(max_age=0.5)
        clock[0] += 0.6  # past max_age, not past four times the cost
    assert calls == [1000.0]
    clock[0] = 1000.0 + 0.5 + presence_module.COST_FACTOR * 0.5
    assert presence.own_report(max_age=0.5).rooms == {"room-0": 1, "room-1": 1, "room-2": 1}
    assert len(calls) == 2
