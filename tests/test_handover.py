"""Joining a stream while messages flow: no gap and no duplicate between backlog and live.

Streams join at random moments while a publisher writes; each must end with
every message of the room exactly once, in store order. Run twice: with the
SQLite follower as it is, and with a *lagging* follower (the window is filled
well after each commit, as over a slow MongoDB link), so joins read a window
that is behind the store.
"""
from __future__ import annotations

import json
import random
import sys

import gevent
import pytest

from app.delivery.hub import Hub
from app.delivery.streaming import StreamSettings, message_stream
from app.delivery.tailer import Tailer
from app.delivery.window import Window
from app.stores.sqlite import SQLiteStore
from tests.support.waiting import quiet_period, wait_until


class LaggingFollowerStore(SQLiteStore):
    """SQLite, read by a follower that lags behind the commits."""

    def follow(self, after_id, wakeup):
        for batch in super().follow(after_id, wakeup):
            gevent.sleep(random.uniform(0, 0.03))  # the follower lags behind commits
            yield batch


def collect(stream, received: list[str], stop_after: int) -> None:
    for chunk in stream:
        for block in chunk.split(b"\n\n"):
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    received.append(json.loads(line[6:])["id"])
        if len(received) >= stop_after:
            stream.close()
            return


@pytest.mark.parametrize("chunk_bytes", [16_384, 100], ids=["whole-backlog-chunks", "one-event-chunks"])
@pytest.mark.parametrize("store_class", [SQLiteStore, LaggingFollowerStore], ids=["sqlite", "lagging-follower"])
def test_streams_joining_during_publishing_get_everything_exactly_once(tmp_path, store_class, chunk_bytes):
    """With one-event chunks each join writes its backlog over many yields while publishing goes on."""
    random.seed(7)
    store = store_class(str(tmp_path / "s.sqlite3"), max_bytes=10**8, max_messages=10**5, poll_interval=0.002)
    hub = Hub(queue_limit=10_000, heartbeat_seconds=0.5)
    window = Window(10**5, 10**8)
    tailer = Tailer(store, window, hub)
    tailer.ensure_running()
    settings = StreamSettings(retry_ms=1000, chunk_bytes=chunk_bytes)
    total = 200
    published: list[str] = []

    def publish() -> None:
        for i in range(total):
            published.append(store.append("room", f"m{i}", "message").id)
            tailer.poke()
            if i % 7 == 0:
                gevent.sleep(random.uniform(0, 0.01))

    streams: list[list[str]] = []
    readers = []

    def join_later(delay: float) -> None:
        gevent.sleep(delay)
        received: list[str] = []
        streams.append(received)
        stream = message_stream(("room",), None, window=window, hub=hub, store=store, settings=settings)
        collect(stream, received, total)

    publisher = gevent.spawn(publish)
    for _ in range(20):
        readers.append(gevent.spawn(join_later, random.uniform(0, 0.5)))
    publisher.join(30)
    gevent.joinall(readers, timeout=30)
    tailer.stop()

    assert len(published) == total
    assert len(streams) == 20
    for received in streams:
        assert received == published  # all, once each, in store order
    assert hub.room_counts() == {}  # every stream released its subscription


def test_resume_mid_stream_with_lagging_follower_never_repeats(tmp_path):
    store = LaggingFollowerStore(str(tmp_path / "s.sqlite3"), max_bytes=10**8, max_messages=10**5,
                                 poll_interval=0.002)
    hub = Hub(queue_limit=10_000, heartbeat_seconds=0.5)
    window = Window(10**5, 10**8)
    tailer = Tailer(store, window, hub)
    tailer.ensure_running()
    first = [store.append("room", f"m{i}", "message").id for i in range(10)]
    wait_until(lambda: window.holds(first[-1]), 5, "the follower did not read all ten", sleep=gevent.sleep)
    # The client already has m0..m4; the follower has read all ten.
    received: list[str] = []
    stream = message_stream(("room",), first[4], window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000))
    reader = gevent.spawn(collect, stream, received, 15)
    wait_until(lambda: len(received) >= 5, 5, "the stream did not send its backlog", sleep=gevent.sleep)
    later = [store.append("room", f"n{i}", "message").id for i in range(10)]
    tailer.poke()
    reader.join(10)
    tailer.stop()
    assert received == first[5:] + later


def test_a_parked_stream_keeps_no_backlog_bytes_alive(tmp_path):
    """A stream that sent its backlog and waits holds no reference to those bytes.

    A backlog can be a whole window of a room (megabytes); thousands of
    streams parked right after joining must not keep one copy each until
    their next write.
    """
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**8, max_messages=10**5, poll_interval=0.002)
    hub = Hub(queue_limit=10_000, heartbeat_seconds=30)
    window = Window(10**5, 10**8)
    tailer = Tailer(store, window, hub)
    for i in range(50):
        store.append("room", f"m{i} " + "x" * 1000, "message")
    tailer.ensure_running()
    assert window.ready.wait(5)
    gevent.sleep(0.1)
    stream = message_stream(("room",), None, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000, chunk_bytes=3000))
    next(stream)  # the retry line
    chunks = [next(stream)]
    while sum(chunk.count(b"\n\n") for chunk in chunks) < 50:
        chunks.append(next(stream))
    assert sum(chunk.count(b"\n\n") for chunk in chunks) == 50
    assert len(chunks) == 25  # two events of ~1 KB per chunk of at most 3,000 bytes
    parked = gevent.spawn(next, stream)  # parks until the next live event
    quiet_period(0.1, sleep=gevent.sleep)
    assert not parked.ready() and hub.room_counts() == {"room": 1}
    # Only this test's references are left: the list, the loop's name and
    # getrefcount's argument. A suspended generator's locals are not visible
    # to gc.get_referrers, hence the count.
    assert [sys.getrefcount(chunk) for chunk in chunks] == [3] * len(chunks)
    parked.kill()
    stream.close()
    tailer.stop()
