"""The worker's in-memory window: the store's bound, exact resumes, resets, and joins without store reads."""
from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import gevent
import pytest

from app.delivery.hub import Hub
from app.delivery.streaming import StreamSettings, message_stream
from app.delivery.tailer import Tailer
from app.delivery.window import Window
from app.stores.base import UNKNOWN_ID_REASON, Message
from app.stores.sqlite import SQLiteStore

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def feed(window: Window, specs: list[tuple[str, str]], start: int = 1) -> list[Message]:
    """Extend the window with (room, text) messages at consecutive positions; return them."""
    messages = [Message(id=f"id{start + n}", room=room, text=text, event="message", created_at=NOW)
                for n, (room, text) in enumerate(specs)]
    window.extend([(start + n, message) for n, message in enumerate(messages)])
    return messages


def ids(backlog) -> list[str]:
    return [entry.id for entry in backlog.entries]


def test_backlog_after_an_id_is_exactly_the_rest_of_that_room():
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [("a" if n % 3 else "b", f"m{n}") for n in range(30)])
    room_a = [m.id for m in sent if m.room == "a"]
    for cut in range(len(room_a)):
        backlog = window.backlog(("a",), room_a[cut])
        assert backlog.reset_reason is None
        assert ids(backlog) == room_a[cut + 1:]
    assert ids(window.backlog(("a",), None)) == room_a
    assert ids(window.backlog(("a",), room_a[2], limit=3)) == room_a[3:6]
    assert window.backlog(("empty",), None).entries == []


@pytest.mark.parametrize("last_id", ["nowhere", "id1"], ids=["unknown-id", "id-of-another-room"])
def test_an_id_it_does_not_hold_for_the_room_gives_reset_and_the_whole_room(last_id):
    """One reason for both: a different one for another room's id let clients probe private rooms' ids."""
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [("other", "x"), ("r", "m0"), ("r", "m1")])
    backlog = window.backlog(("r",), last_id)
    assert backlog.reset_reason == UNKNOWN_ID_REASON
    assert ids(backlog) == [sent[1].id, sent[2].id]


def test_it_evicts_exactly_as_the_sqlite_store_does(tmp_path):
    """Same bound, same rule: the window holds the store's window, message for message."""
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=6000, max_messages=40)
    window = Window(max_messages=40, max_bytes=6000)
    rng = random.Random(3)
    for n in range(300):
        message = store.append(rng.choice("abc"), "x" * rng.randrange(0, 400), "message")
        window.extend([(n, message)])
    for room in "abc":
        assert [m.id for m in store.read_room(room).messages] == [e.id for e in window.backlog((room,), None).entries]
    assert len(window) == sum(len(store.read_room(room).messages) for room in "abc")


def test_a_room_emptied_by_eviction_is_forgotten_and_its_log_compacts():
    window = Window(max_messages=10, max_bytes=10**6)
    feed(window, [("gone", "x")])
    feed(window, [("busy", f"m{n}") for n in range(1000)], start=2)
    assert window.backlog(("gone",), None).entries == []
    assert "gone" not in window._rooms
    log = window._rooms["busy"]
    assert len(log) == 10 and len(log.entries) < 200  # dropped from the front, not kept forever
    assert [e.to_json()['text'] for e in window.backlog(("busy",), None).entries] == [f"m{n}" for n in range(990, 1000)]


class CountingStore(SQLiteStore):
    """The real store, counting the reads a join could make."""

    reads = 0

    def read_room(self, *args, **kwargs):
        self.reads += 1
        return super().read_room(*args, **kwargs)


def test_joins_and_resumes_read_the_window_not_the_store(tmp_path):
    store = CountingStore(str(tmp_path / "s.sqlite3"), max_bytes=10**7, max_messages=5000, poll_interval=0.002)
    sent = [store.append(f"room{n % 50}", f"m{n}", "message") for n in range(5000)]
    window, hub = Window(5000, 10**7), Hub(queue_limit=100, heartbeat_seconds=5)
    tailer = Tailer(store, window, hub)
    tailer.ensure_running()
    try:
        assert window.ready.wait(10)
        room7 = [m.id for m in sent if m.room == "room7"]
        for cut in (0, 50, 98):
            stream = message_stream(("room7",), room7[cut], window=window, hub=hub, store=store,
                                    settings=StreamSettings(retry_ms=1000))
            next(stream)  # retry:
            backlog = next(stream)
            assert backlog.count(b"\nid: ") + backlog.startswith(b"id: ") == len(room7) - cut - 1
            stream.close()
        assert store.reads == 0
    finally:
        tailer.stop()
        gevent.sleep(0)
        store.close()


def test_a_join_waits_for_the_window_and_then_gets_everything(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**7, max_messages=1000, poll_interval=0.002)
    before = [store.append("r", f"m{n}", "message").id for n in range(5)]
    window, hub = Window(1000, 10**7), Hub(queue_limit=100, heartbeat_seconds=0.2)
    stream = message_stream(("r",), None, window=window, hub=hub, store=store, settings=StreamSettings(retry_ms=1000))
    received = b""
    tailer = Tailer(store, window, hub)
    try:
        received += next(stream)  # retry:
        gevent.spawn_later(0.5, tailer.ensure_running)  # the worker warms its window late
        after = None
        with gevent.Timeout(5):
            while after is None or after.encode() not in received:
                received += next(stream)
                if after is None and before[-1].encode() in received:
                    after = store.append("r", "live", "message").id
                    tailer.poke()
        assert [received.count(f"id: {message_id}\n".encode()) for message_id in [*before, after]] == [1] * 6
        assert b": keep-alive" in received  # heartbeats while it waited
    finally:
        stream.close()
        tailer.stop()
        gevent.sleep(0)
        store.close()


def test_a_join_gives_up_when_the_window_never_warms(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**6, max_messages=10)
    window, hub = Window(10, 10**6), Hub(queue_limit=10, heartbeat_seconds=0.1)
    stream = message_stream(("r",), None, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000, window_wait_seconds=0.3))
    chunks = list(stream)
    assert chunks[-1].startswith(b": store unavailable")


def test_a_join_that_waits_past_its_tokens_expiry_sends_no_message(tmp_path):
    """The store down at the join: the window warms after the token's exp, and the stream ends at exp.

    It used to wait the whole window_wait_seconds, then send the backlog the
    token no longer allowed before the sweeper ended it (issue 19's hostile pass).
    """
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**6, max_messages=10)
    sent = [store.append("r", f"m{n}", "message") for n in range(3)]
    window, hub = Window(10, 10**6), Hub(queue_limit=10, heartbeat_seconds=0.1)
    gevent.spawn_later(0.6, lambda: (window.extend([(n + 1, m) for n, m in enumerate(sent)]), window.ready.set()))
    started = time.monotonic()
    stream = message_stream(("r",), None, window=window, hub=hub, store=store, expires_at=time.time() + 0.3,
                            settings=StreamSettings(retry_ms=1000, window_wait_seconds=5))
    try:
        with gevent.Timeout(5):
            received = b"".join(stream)
    finally:
        stream.close()
        store.close()
    assert b"id: " not in received
    assert received.endswith(b": token expired\n\n")
    assert time.monotonic() - started < 0.6  # at exp, not after the window_wait_seconds


def test_a_resume_ahead_of_this_workers_window_waits_for_its_tailer_instead_of_resetting(tmp_path):
    """Regression: a client that read m7 through another worker resumed here before this tailer read m7.

    Its id looked unknown, so it got ``reset`` and the whole room again: duplicates.
    """
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**6, max_messages=100)
    sent = [store.append("r", f"m{n}", "message") for n in range(10)]
    window, hub = Window(100, 10**6), Hub(queue_limit=100, heartbeat_seconds=5)
    window.extend([(n + 1, message) for n, message in enumerate(sent[:5])])  # this worker's tailer lags
    window.ready.set()
    gevent.spawn_later(0.2, window.extend, [(n + 6, message) for n, message in enumerate(sent[5:])])
    stream = message_stream(("r",), sent[7].id, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000))
    try:
        next(stream)  # retry:
        with gevent.Timeout(5):
            backlog = next(stream)
    finally:
        stream.close()
        store.close()
    assert b"event: reset" not in backlog
    assert [line for line in backlog.split(b"\n") if line.startswith(b"id: ")] == [
        f"id: {message.id}".encode() for message in sent[8:]]


def test_an_id_the_store_does_not_hold_either_resets_at_once(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**6, max_messages=3)
    sent = [store.append("r", f"m{n}", "message") for n in range(5)]  # m0, m1 evicted
    window, hub = Window(3, 10**6), Hub(queue_limit=100, heartbeat_seconds=5)
    window.extend([(n + 1, message) for n, message in enumerate(sent)])
    window.ready.set()
    stream = message_stream(("r",), sent[0].id, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000, window_wait_seconds=5))
    try:
        next(stream)  # retry:
        with gevent.Timeout(1):
            reset = next(stream)
            backlog = next(stream)
    finally:
        stream.close()
        store.close()
    assert b"\nevent: reset\n" in reset
    assert backlog.count(b"\nid: ") + backlog.startswith(b"id: ") == 3


def test_a_message_the_store_sends_again_is_not_delivered_again():
    """FerretDB 1.24 re-sends documents on a tailable cursor; the window must not pass them on twice."""
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [("r", f"m{n}") for n in range(5)])
    again = window.extend([(10 + n, message) for n, message in enumerate(sent[2:])])
    assert again == []
    assert ids(window.backlog(("r",), None)) == [m.id for m in sent]


def test_one_id_resumes_several_rooms_in_store_order():
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [(room, f"m{n}") for n, room in enumerate("abcabcabca")])
    followed = [m.id for m in sent if m.room in "ab"]
    assert ids(window.backlog(("a", "b"), None)) == followed
    for cut, message_id in enumerate(followed):
        backlog = window.backlog(("b", "a"), message_id)
        assert backlog.reset_reason is None
        assert ids(backlog) == followed[cut + 1:]
    assert ids(window.backlog(("a", "b"), followed[0], limit=2)) == followed[1:3]
    backlog = window.backlog(("a", "b"), sent[2].id)  # room c: not one of these
    assert backlog.reset_reason == UNKNOWN_ID_REASON and ids(backlog) == followed


def test_a_stream_of_several_rooms_gets_them_live_in_store_order(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**7, max_messages=1000, poll_interval=0.002)
    window, hub = Window(1000, 10**7), Hub(queue_limit=100, heartbeat_seconds=5)
    tailer = Tailer(store, window, hub)
    tailer.ensure_running()
    stream = message_stream(("a", "b"), None, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000))
    received = b""
    try:
        assert window.ready.wait(5)
        next(stream)  # retry:
        sent = [store.append(room, room, "message").id for room in "abcba"]
        tailer.poke()
        wanted = [message_id for message_id, room in zip(sent, "abcba", strict=True) if room != "c"]
        with gevent.Timeout(5):
            while received.count(b"id: ") < len(wanted):
                received += next(stream)
    finally:
        stream.close()
        tailer.stop()
        gevent.sleep(0)
        store.close()
    assert [line[4:].decode() for line in received.split(b"\n") if line.startswith(b"id: ")] == wanted
    assert hub.room_counts() == {} and hub.subscribers("a") == 0
