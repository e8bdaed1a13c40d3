"""A join's backlog goes out of the shared window in bounded slices, and never skips what it has not sent.

Regression (issue 18): each joining stream joined its whole backlog into one
bytes object; with a window of JSON-expensive text, 60 sockets that never
read held 3.4 GB.
"""
from __future__ import annotations

import logging
import random
import re
from datetime import UTC, datetime

import gevent
import pytest

from app.delivery.ending import EndReason
from app.delivery.hub import Hub, ReaderStalled
from app.delivery.streaming import BACKLOG_CONTINUE_RETRY_MS, StreamSettings, message_stream
from app.delivery.window import BacklogEvicted, Window
from app.stores.base import Message
from app.stores.sqlite import SQLiteStore

NOW = datetime(2026, 12, 1, tzinfo=UTC)
_ID_LINE = re.compile(rb"^id: (.*)$", re.MULTILINE)


def feed(window: Window, specs: list[tuple[str, str]], start: int = 1) -> list[Message]:
    """Extend the window with (room, text) messages at consecutive positions; return them."""
    messages = [Message(id=f"id{start + n}", room=room, text=text, event="message", created_at=NOW)
                for n, (room, text) in enumerate(specs)]
    window.extend([(start + n, message) for n, message in enumerate(messages)])
    return messages


def drain(cursor, max_bytes: int) -> list[list]:
    slices = []
    while batch := cursor.take(max_bytes):
        slices.append(batch)
    return slices


def ids_in(data: bytes) -> list[str]:
    return [match.decode() for match in _ID_LINE.findall(data) if match]


def test_slices_are_bounded_in_bytes_and_together_are_the_backlog_in_store_order():
    window = Window(max_messages=1000, max_bytes=10**7)
    rng = random.Random(5)
    sent = feed(window, [(rng.choice("abc"), "x" * rng.randrange(0, 3000)) for _ in range(300)])
    for rooms in [("a",), ("a", "b"), ("c", "b", "a")]:
        wanted = [m.id for m in sent if m.room in rooms]
        for resume in (None, wanted[40]):
            slices = drain(window.cursor(rooms, resume), 4096)
            assert [entry.id for batch in slices for entry in batch] == wanted[wanted.index(resume) + 1 if resume
                                                                               else 0:]
            for batch in slices:
                assert len(batch) == 1 or sum(len(entry.payload) for entry in batch) <= 4096


def test_an_event_larger_than_a_slice_goes_alone_as_the_windows_own_bytes():
    window = Window(max_messages=100, max_bytes=10**7)
    feed(window, [("r", "small"), ("r", "y" * 10_000), ("r", "small")])
    slices = drain(window.cursor(("r",), None), 4096)
    assert [len(batch) for batch in slices] == [1, 1, 1]
    assert slices[1][0].payload is window.backlog(("r",), None).entries[1].payload


def test_a_cursor_stops_at_what_the_rooms_held_at_the_join():
    """Later entries reach the stream through its subscription: the cursor must not send them too."""
    window = Window(max_messages=100, max_bytes=10**7)
    before = feed(window, [("r", f"m{n}") for n in range(5)])
    cursor = window.cursor(("r", "s"), None)
    feed(window, [("r", "later"), ("s", "later")], start=6)
    assert [entry.id for batch in drain(cursor, 10**6) for entry in batch] == [m.id for m in before]


def test_eviction_of_unsent_entries_is_reported_not_skipped():
    window = Window(max_messages=10, max_bytes=10**7)
    sent = feed(window, [("r", f"m{n}") for n in range(10)])
    cursor = window.cursor(("r",), None)
    assert [entry.id for entry in cursor.take(1)] == [sent[0].id]
    feed(window, [("other", "x")], start=11)  # evicts m0: sent already, so nothing is lost
    assert [entry.id for entry in cursor.take(1)] == [sent[1].id]
    feed(window, [("other", "x"), ("other", "y")], start=12)  # evicts m1 (sent) and m2 (not sent)
    with pytest.raises(BacklogEvicted):
        cursor.take(1)


def test_eviction_that_empties_a_room_is_still_reported():
    window = Window(max_messages=3, max_bytes=10**7)
    feed(window, [("r", "m0"), ("r", "m1")])
    cursor = window.cursor(("r",), None)
    cursor.take(1)
    feed(window, [("other", f"x{n}") for n in range(3)], start=3)  # the room's log is dropped
    assert "r" not in window._rooms
    with pytest.raises(BacklogEvicted):
        cursor.take(1)


def test_evictions_before_the_join_or_in_rooms_done_are_no_loss():
    window = Window(max_messages=4, max_bytes=10**7)
    feed(window, [("r", f"m{n}") for n in range(6)])  # m0 and m1 evicted before the join
    cursor = window.cursor(("r", "s"), None)
    assert [entry.to_json()["text"] for batch in drain(cursor, 10**6) for entry in batch] == ["m2", "m3", "m4", "m5"]
    done = window.cursor(("r",), None)
    drain(done, 10**6)
    feed(window, [("r", f"n{n}") for n in range(8)], start=7)  # everything it sent is evicted later
    assert done.take(10**6) == []


def test_a_cleared_window_ends_a_cursor_that_has_more_to_send():
    window = Window(max_messages=100, max_bytes=10**7)
    feed(window, [("r", f"m{n}") for n in range(5)])
    cursor = window.cursor(("r",), None)
    cursor.take(1)
    window.clear()  # the tailer lost its place
    with pytest.raises(BacklogEvicted):
        cursor.take(1)


def test_a_queue_is_taken_in_bounded_chunks_of_at_least_one_event():
    window = Window(max_messages=100, max_bytes=10**7)
    hub = Hub(queue_limit=100)
    subscription = hub.subscribe(("r",))
    hub.publish(window.extend([(n, Message(id=f"i{n}", room="r", text="z" * 900, event="message",
                                           created_at=NOW)) for n in range(10)]))
    sizes = []
    while taken := subscription.take(2500):
        sizes.append(len(taken))
        if sum(sizes) == 10:
            break
    assert sizes == [2, 2, 2, 2, 2]
    hub.publish(window.extend([(20, Message(id="big", room="r", text="z" * 5000, event="message",
                                            created_at=NOW))]))
    assert [entry.id for entry in subscription.take(2500)] == ["big"]


# -- The stream ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**7, max_messages=10**4)
    yield store
    store.close()


def warm_window(window: Window, messages: list[Message]) -> None:
    window.extend([(n + 1, message) for n, message in enumerate(messages)])
    window.ready.set()


def test_a_join_sends_its_backlog_in_chunks_and_then_goes_live(store):
    sent = [store.append("r", f"m{n} " + "\x01" * 200, "message") for n in range(40)]
    window, hub = Window(10**4, 10**7), Hub(queue_limit=100, heartbeat_seconds=30)
    warm_window(window, sent)
    stream = message_stream(("r",), None, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000, chunk_bytes=4096))
    try:
        next(stream)  # retry:
        chunks = [next(stream) for _ in range(6)]  # ~1.3 KB events (escaped 6x), three per chunk
        assert all(len(chunk) <= 4096 for chunk in chunks)
        assert ids_in(b"".join(chunks)) == [m.id for m in sent[:18]]
        while len(ids_in(b"".join(chunks))) < 40:
            chunks.append(next(stream))
        assert ids_in(b"".join(chunks)) == [m.id for m in sent]
        live = store.append("r", "live", "message")
        window.extend([(41, live)])
        hub.publish(window.backlog(("r",), sent[-1].id).entries)
        with gevent.Timeout(2):
            assert ids_in(next(stream)) == [live.id]
    finally:
        stream.close()


def test_a_join_that_sent_its_byte_bound_ends_and_the_resume_gets_the_rest_exactly(store, caplog):
    sent = [store.append("r", f"m{n} " + "w" * 500, "message") for n in range(60)]
    window, hub = Window(10**4, 10**7), Hub(queue_limit=100, heartbeat_seconds=30)
    warm_window(window, sent)
    settings = StreamSettings(retry_ms=1000, chunk_bytes=2048, backlog_max_bytes=10_000)
    received: list[str] = []
    responses = 0
    last_id = None
    caplog.set_level(logging.INFO, "app.delivery.streaming")
    while len(received) < 60 and responses < 20:
        responses += 1
        stream = message_stream(("r",), last_id, window=window, hub=hub, store=store, settings=settings)
        chunks = [next(stream)]  # retry:
        with gevent.Timeout(2):
            while len(received) + len(ids_in(b"".join(chunks))) < 60:
                chunks.append(next(stream))
                if chunks[-1].startswith(b"retry:"):
                    break
        body = b"".join(chunks)
        assert len(body) < 10_000 + 2048 + 100
        assert b"event: reset" not in body
        received += ids_in(body)
        last_id = received[-1]
        if len(received) < 60:
            assert chunks[-1] == f"retry: {BACKLOG_CONTINUE_RETRY_MS}\n\n".encode()  # come back at once
            with pytest.raises(StopIteration):
                next(stream)
            assert hub.room_counts() == {}
        else:
            assert hub.room_counts() == {"r": 1}  # the last one goes live
            stream.close()
    assert received == [m.id for m in sent]
    assert responses == 4  # ~37 KB of backlog, at most ~12 KB a response
    assert "ended_by=backlog bound" in caplog.text


def test_a_stream_whose_unsent_backlog_is_evicted_ends_and_its_resume_gets_reset(store, caplog):
    sent = [store.append("r", f"m{n}", "message") for n in range(20)]
    window, hub = Window(20, 10**7), Hub(queue_limit=100, heartbeat_seconds=30)
    warm_window(window, sent)
    caplog.set_level(logging.INFO, "app.delivery.streaming")
    stream = message_stream(("r",), None, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000, chunk_bytes=100))
    next(stream)  # retry:
    first = next(stream)
    assert ids_in(first) == [sent[0].id]
    more = [store.append("other", f"x{n}", "message") for n in range(5)]
    window.extend([(21 + n, message) for n, message in enumerate(more)])  # evicts m0..m4, m1..m4 unsent
    rest = list(stream)
    assert rest == [b"retry: 1000\n\n"]
    assert "ended_by=backlog evicted" in caplog.text
    assert hub.room_counts() == {}
    resumed = message_stream(("r",), sent[0].id, window=window, hub=hub, store=store,
                             settings=StreamSettings(retry_ms=1000, window_wait_seconds=0.1))
    try:
        next(resumed)  # retry:
        assert b"\nevent: reset\n" in next(resumed)
    finally:
        resumed.close()


def test_a_stream_that_has_not_taken_its_backlog_within_the_write_timeout_ends(store, caplog):
    sent = [store.append("r", f"m{n}", "message") for n in range(20)]
    window, hub = Window(10**4, 10**7), Hub(queue_limit=100, heartbeat_seconds=30, write_timeout_seconds=0.3)
    warm_window(window, sent)
    caplog.set_level(logging.INFO, "app.delivery.streaming")
    stream = message_stream(("r",), None, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000, chunk_bytes=100))
    next(stream)  # retry:
    taken = []
    for chunk in stream:  # a reader that takes each chunk, but slowly
        taken.append(chunk)
        gevent.sleep(0.1)
    assert taken[-1] == b"retry: 1000\n\n"
    assert 2 <= len(ids_in(b"".join(taken))) <= 4
    assert "ended_by=backlog too slow" in caplog.text


def test_the_sweeper_resets_a_backlog_write_still_blocked_at_the_backlog_deadline():
    """The write timeout alone would wait for each write; the backlog's own deadline comes first."""
    hub = Hub(queue_limit=10, heartbeat_seconds=30, write_timeout_seconds=30)
    caught = []

    def blocked_writer():
        subscription = hub.subscribe(("r",))
        subscription.backlog_until = 100.0
        subscription.writing_since = 95.0
        try:
            gevent.sleep(5)
        except ReaderStalled as exc:
            caught.append((subscription.ended_by is EndReason.STALLED, str(exc)))

    writer = gevent.spawn(blocked_writer)
    gevent.sleep(0)
    hub.sweep(99.0)
    gevent.sleep(0)
    assert caught == []
    hub.sweep(100.5)
    writer.join(1)
    assert caught and caught[0][0] is True
