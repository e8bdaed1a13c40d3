"""Presence in one process: the per-worker loop (app/delivery/presence.py) and GET /rooms, /rooms/<room>.

The loop runs against a recording store here; the stores' side (expiry,
sums, withdrawal, the database clock) is in tests/test_store_contract.py, and
real workers and nodes are in tests/test_presence_live.py.
"""
from __future__ import annotations

import gevent
import pytest

from app.delivery.hub import Hub
from app.delivery.presence import Presence
from app.stores.base import StoreUnavailable


class RecordingStore:
    """Presence calls, in order; ``others`` is what the other workers hold; ``fail`` makes every call fail."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.others: dict[str, int] = {}
        self.reads = 0
        self.fail = False

    def _maybe_fail(self) -> None:
        if self.fail:
            raise StoreUnavailable("down")

    def publish_presence(self, worker_id, counts, ttl):
        self._maybe_fail()
        self.calls.append(("publish", dict(counts), ttl))

    def withdraw_presence(self, worker_id):
        self._maybe_fail()
        self.calls.append(("withdraw",))

    def presence_counts(self, exclude=None):
        self._maybe_fail()
        self.reads += 1
        return dict(self.others)


@pytest.fixture
def hub() -> Hub:
    return Hub(queue_limit=10)


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def presence(store, hub):
    presence = Presence(store, hub, check_interval=0.01, refresh_interval=0.2, ttl=0.6, cache_seconds=0.1)
    yield presence
    presence.stop()


def test_worker_id_names_host_and_pid_and_differs_per_start(store, hub):
    import os
    import socket

    first, second = Presence(store, hub).worker_id, Presence(store, hub).worker_id
    assert first.startswith(f"{socket.gethostname()}:{os.getpid()}:") and first != second


def test_an_idle_worker_writes_nothing(presence, store):
    presence.start()
    gevent.sleep(0.3)
    assert store.calls == []


def test_a_change_is_written_at_once_then_refreshed_while_streams_are_open(presence, store, hub):
    presence.start()
    hub.subscribe(("lobby", "dev"))
    hub.subscribe(("lobby",))
    gevent.sleep(0.05)
    assert store.calls == [("publish", {"lobby": 2, "dev": 1}, 0.6)]
    gevent.sleep(0.5)  # refresh_interval 0.2: two or three refreshes, nothing else
    assert 3 <= len(store.calls) <= 4
    assert all(call == ("publish", {"lobby": 2, "dev": 1}, 0.6) for call in store.calls)


def test_the_last_stream_ending_withdraws_the_entry_once(presence, store, hub):
    presence.start()
    subscription = hub.subscribe(("lobby",))
    gevent.sleep(0.05)
    hub.unsubscribe(subscription)
    gevent.sleep(0.5)
    assert store.calls == [("publish", {"lobby": 1}, 0.6), ("withdraw",)]


def test_stop_withdraws_and_writes_no_more(presence, store, hub):
    presence.start()
    hub.subscribe(("lobby",))
    gevent.sleep(0.05)
    presence.stop()
    assert store.calls[-1] == ("withdraw",)
    written = len(store.calls)
    gevent.sleep(0.3)
    assert len(store.calls) == written


def test_two_stops_at_once_both_finish_and_withdraw(presence, store, hub):
    """Regression: a worker SIGTERMed twice (the process group's signal) ran two stops; one crashed on None.kill."""
    presence.start()
    hub.subscribe(("lobby",))
    gevent.sleep(0.05)
    stops = [gevent.spawn(presence.stop) for _ in range(2)]
    gevent.joinall(stops, raise_error=True)
    assert all(stop.successful() for stop in stops)
    assert store.calls[-2:] == [("withdraw",), ("withdraw",)]


def test_a_store_outage_is_retried_at_the_refresh_interval_and_the_loop_survives(presence, store, hub):
    presence.start()
    store.fail = True
    hub.subscribe(("lobby",))
    gevent.sleep(0.3)
    assert store.calls == []
    store.fail = False
    gevent.sleep(0.25)
    assert store.calls and store.calls[0] == ("publish", {"lobby": 1}, 0.6)


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


def test_counts_add_this_workers_live_streams_to_the_others_in_the_store(presence, store, hub):
    store.others = {"lobby": 3, "dev": 1}
    hub.subscribe(("lobby", "ops"))
    assert presence.counts() == {"lobby": 4, "dev": 1, "ops": 1}


def test_the_others_are_read_at_most_once_per_cache_period(presence, store, hub):
    store.others = {"lobby": 3}
    for _ in range(20):
        assert presence.counts() == {"lobby": 3}
    assert store.reads == 1
    store.others = {"lobby": 5}
    hub.subscribe(("lobby",))
    assert presence.counts() == {"lobby": 4}  # this worker's own streams are never cached
    gevent.sleep(0.15)
    assert presence.counts() == {"lobby": 6}
    assert store.reads == 2


def test_a_failed_read_answers_with_recent_counts_then_fails(presence, store):
    store.others = {"lobby": 3}
    assert presence.counts() == {"lobby": 3}
    store.fail = True
    gevent.sleep(0.15)  # past cache_seconds (0.1), within stale_seconds (1.5)
    assert presence.counts() == {"lobby": 3}
    presence.stale_seconds = 0.1
    with pytest.raises(StoreUnavailable):
        presence.counts()


def test_concurrent_readers_share_one_store_read(presence, store):
    def slow_read(exclude=None):
        store.reads += 1
        gevent.sleep(0.05)
        return {"lobby": 1}

    store.presence_counts = slow_read
    results = [job.value for job in gevent.joinall([gevent.spawn(presence.counts) for _ in range(10)])]
    assert results == [{"lobby": 1}] * 10 and store.reads == 1


# -- the views, through Flask's test client (SQLite store) --------------------------------------

def until_the_window_holds(client, room, count):
    """Let this worker's tailer read what was just posted (its window is a few ms behind the store)."""
    for _ in range(200):
        if client.get(f"/rooms/{room}").get_json()["messages"] >= count:
            return
        gevent.sleep(0.01)
    raise AssertionError(f"the window did not get {count} messages of {room}")


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
    assert schemas["RoomsOut"]["required"] == ["rooms"]


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


def test_presence_is_503_with_retry_after_when_the_store_cannot_be_read(app, client, monkeypatch):
    def down(exclude=None):
        raise StoreUnavailable("down")

    monkeypatch.setattr(app.extensions["sse"].store, "presence_counts", down)
    for path in ("/rooms", "/rooms/lobby"):
        reply = client.get(path)
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"
