"""``backlog=N`` on the stream: a join without a usable id starts with the rooms' newest N (issue 15, part 1)."""
from __future__ import annotations

import json

import gevent
import pytest
import sseclient

from app.delivery.hub import Hub
from app.delivery.reading import window_has_everything
from app.delivery.streaming import StreamSettings, message_stream
from app.delivery.tailer import Tailer
from app.delivery.window import Window
from app.stores.base import UNKNOWN_ID_REASON, StoreUnavailable
from app.stores.sqlite import SQLiteStore
from tests.test_window import feed


def pending_ids(cursor) -> list[str]:
    return [entry.id for entry in cursor.pending()]


@pytest.mark.parametrize("newest", [0, 1, 3, 9, 10, 11, 500])
def test_a_join_without_an_id_gets_the_rooms_newest_n_oldest_first(newest):
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [(room, f"m{n}") for n, room in enumerate("abcabcabcabcab")])
    followed = [m.id for m in sent if m.room in "ab"]  # 10 of them
    cursor = window.cursor(("b", "a"), None, newest)
    assert pending_ids(cursor) == (followed[-newest:] if newest else [])
    assert cursor.reset_reason is None


def test_the_cursor_starts_after_the_one_just_before_the_newest_n_as_if_the_client_had_read_it():
    """So a re-join of the same stream (the tailer lost its place) resumes from there, not the whole window."""
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [("a", f"m{n}") for n in range(6)])
    assert window.cursor(("a",), None, 2).last_id == sent[3].id
    assert window.cursor(("a",), None, 0).last_id == sent[5].id
    assert window.cursor(("a",), None, 6).last_id is None  # all of them: it starts at the oldest
    assert window.cursor(("empty",), None, 0).last_id is None


def test_a_held_id_resumes_exactly_whatever_the_backlog():
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [("a", f"m{n}") for n in range(8)])
    for newest in (0, 1, 100):
        cursor = window.cursor(("a",), sent[2].id, newest)
        assert cursor.reset_reason is None and pending_ids(cursor) == [m.id for m in sent[3:]]


@pytest.mark.parametrize("last_id", ["nowhere", "id1"], ids=["unknown-id", "id-of-another-room"])
def test_an_id_it_does_not_hold_gives_reset_then_the_newest_n(last_id):
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [("other", "x")] + [("r", f"m{n}") for n in range(5)])
    cursor = window.cursor(("r",), last_id, 2)
    assert cursor.reset_reason == UNKNOWN_ID_REASON
    assert pending_ids(cursor) == [sent[4].id, sent[5].id]
    assert pending_ids(window.cursor(("r",), last_id, 0)) == []


def test_eviction_older_than_the_newest_n_does_not_end_the_backlog():
    """The cursor starts inside the window: what the window drops before it is none of its loss."""
    window = Window(max_messages=5, max_bytes=10**6)
    feed(window, [("a", f"m{n}") for n in range(5)])
    cursor = window.cursor(("a",), None, 2)
    feed(window, [("a", "m5"), ("a", "m6")], start=6)  # evicts m0 and m1
    assert [entry.id for entry in cursor.take(10**6)] == ["id4", "id5"]


def test_a_stream_with_backlog_sends_the_newest_n_then_live_ones(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**7, max_messages=1000, poll_interval=0.002)
    before = [store.append(room, f"m{n}", "message").id for n, room in enumerate("ababab")]
    window, hub = Window(1000, 10**7), Hub(queue_limit=100, heartbeat_seconds=5)
    tailer = Tailer(store, window, hub)
    tailer.ensure_running()
    stream = message_stream(("a",), None, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000), backlog=2)
    received = b""
    try:
        assert window.ready.wait(5)
        received += next(stream)  # retry:
        received += next(stream)  # the backlog
        live = store.append("a", "live", "message").id
        tailer.poke()
        with gevent.Timeout(5):
            while live.encode() not in received:
                received += next(stream)
    finally:
        stream.close()
        tailer.stop()
        gevent.sleep(0)
        store.close()
    assert [line[4:].decode() for line in received.split(b"\n") if line.startswith(b"id: ")] == [
        before[2], before[4], live]


# -- through the HTTP edge ------------------------------------------------------

def post(client, room, text, event="message"):
    return client.post("/messages", json={"room": room, "text": text, "event": event}).get_json()


def stream_events(client, url, headers=None, chunks=2) -> list:
    reply = client.get(url, headers=headers or {})
    assert reply.status_code == 200
    body = b"".join(next(reply.response) for _ in range(chunks))
    reply.close()
    return list(sseclient.SSEClient([body]).events())


def test_the_stream_takes_backlog_and_ignores_it_on_an_exact_resume(client):
    sent = [post(client, "r", f"m{n}") for n in range(6)]
    events = stream_events(client, "/messages?room=r&backlog=2")
    assert [json.loads(e.data)["text"] for e in events] == ["m4", "m5"]
    events = stream_events(client, "/messages?room=r&backlog=2", {"Last-Event-ID": sent[0]["id"]})
    assert [json.loads(e.data)["text"] for e in events] == ["m1", "m2", "m3", "m4", "m5"]
    events = stream_events(client, f"/messages?room=r&backlog=1&lastEventId={sent[3]['id']}")
    assert [json.loads(e.data)["text"] for e in events] == ["m4", "m5"]


def test_an_unknown_id_with_backlog_sends_reset_then_the_newest_n(client):
    for n in range(4):
        post(client, "r", f"m{n}")
    events = stream_events(client, "/messages?room=r&backlog=1", {"Last-Event-ID": "gone"}, chunks=3)
    assert [e.event for e in events] == ["reset", "message"]
    assert json.loads(events[1].data)["text"] == "m3"


def test_backlog_0_is_live_only(client):
    post(client, "r", "old")
    reply = client.get("/messages?room=r&backlog=0")
    assert next(reply.response).startswith(b"retry: ")
    assert next(reply.response) == b": keep-alive\n\n"  # nothing stored is sent (HEARTBEAT_SECONDS=1)
    reply.close()


@pytest.mark.parametrize("value", ["-1", "10001", "x", "", "+5", " 5", "1_0", "١٠", "1.5", "9" * 40])
def test_a_bad_backlog_is_400_json_not_a_stream(client, value):
    reply = client.get("/messages", query_string={"room": "r", "backlog": value})
    assert reply.status_code == 400 and reply.mimetype == "application/json"
    assert reply.get_json()["errors"] == {"backlog": ["invalid"]}


@pytest.mark.parametrize("value", ["0", "10000", "007"])
def test_backlog_takes_0_to_10000(client, value):
    reply = client.get("/messages", query_string={"room": "r", "backlog": value})
    assert reply.status_code == 200
    reply.close()


def test_a_backlog_join_takes_the_stores_newest_not_those_of_a_tailer_behind(tmp_path):
    """Found live on FerretDB: a worker's tailer a moment behind gave its newest 5, then 8 more live."""
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**7, max_messages=1000, poll_interval=0.5)
    [store.append("a", f"m{n}", "message") for n in range(3)]
    window, hub = Window(1000, 10**7), Hub(queue_limit=100, heartbeat_seconds=5)
    tailer = Tailer(store, window, hub)
    tailer.ensure_running()
    try:
        assert window.ready.wait(5)
        newer = [store.append("a", f"newer {n}", "message").id for n in range(3)]  # no poke: read at the next poll
        assert not window.holds(newer[-1])
        stream = message_stream(("a",), None, window=window, hub=hub, store=store,
                                settings=StreamSettings(retry_ms=1000), backlog=2)
        next(stream)  # retry:
        with gevent.Timeout(5):
            backlog = next(stream)
        stream.close()
    finally:
        tailer.stop()
        gevent.sleep(0)
        store.close()
    assert [line[4:].decode() for line in backlog.split(b"\n") if line.startswith(b"id: ")] == newer[1:]


class SlowNewestStore:
    """A store whose newest-id query takes a while (FerretDB's reverse scan); it counts them."""

    def __init__(self, newest: str, seconds: float = 0.05) -> None:
        self.newest, self.seconds, self.queries = newest, seconds, 0

    def newest_id(self) -> str:
        self.queries += 1
        answer = self.newest  # read when the query starts: a commit during it is not seen
        gevent.sleep(self.seconds)
        return answer


def test_joins_arriving_together_share_the_newest_id_query():
    """Found on FerretDB: 300 backlog joins were 300 reverse scans, and publishers timed out behind them."""
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [("a", f"m{n}") for n in range(3)])
    window.ready.set()
    store = SlowNewestStore(sent[-1].id)
    callers = [gevent.spawn(window_has_everything, window, store) for _ in range(200)]
    gevent.joinall(callers, timeout=10)
    assert [caller.value for caller in callers] == [True] * 200
    assert store.queries <= 2


def test_a_caller_arriving_during_a_query_gets_the_answer_of_a_later_one(monkeypatch):
    """Read-your-writes: a query that started before the caller arrived may miss what it just published."""
    monkeypatch.setattr("app.delivery.reading.HISTORY_TAILER_WAIT_SECONDS", 0.1)
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [("a", f"m{n}") for n in range(3)])
    window.ready.set()
    store = SlowNewestStore(sent[1].id, seconds=0.2)
    first = gevent.spawn(window_has_everything, window, store)
    gevent.sleep(0.05)  # the first query is running
    store.newest = "id-not-read-yet"  # committed now, through another worker: not held by this window
    late = gevent.spawn(window_has_everything, window, store)
    gevent.joinall([first, late], timeout=10)
    assert first.value is True
    assert late.value is False  # it asked again, and waited (in vain) for the tailer to read the new newest
    assert store.queries == 2


def test_a_failed_newest_id_query_raises_for_everyone_who_shared_it():
    window = Window(max_messages=100, max_bytes=10**6)
    window.ready.set()

    class Down:
        def newest_id(self):
            gevent.sleep(0.05)
            raise StoreUnavailable("down")

    store = Down()
    callers = [gevent.spawn(window_has_everything, window, store) for _ in range(5)]
    gevent.joinall(callers, timeout=10)
    assert all(isinstance(caller.exception, StoreUnavailable) for caller in callers)
