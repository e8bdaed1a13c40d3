"""A message committed while a worker's tailer starts reaches the stream whose join started it.

A worker's tailer starts lazily, at its first stream: the tailer warms the
worker's window from the oldest message and joins wait for it. This test
lands a write just as the tailer's feed starts. (Once, the tailer followed
the store from the newest message at the moment its greenlet ran, so a message
committed between the join's backlog read and that moment was lost: about one
run in four of the MongoDB live test lost its first message.)
"""
from __future__ import annotations

import time

import gevent

from app.delivery.hub import Hub
from app.delivery.streaming import StreamSettings, message_stream
from app.delivery.tailer import Tailer
from app.delivery.window import Window
from app.stores.sqlite import SQLiteStore


class WriteLandsAsTheTailerStarts(SQLiteStore):
    """The real store, with another worker's write landing just before the tailer fixes its start."""

    landed: str | None = None

    def follow(self, after_id, wakeup):
        if self.landed is None:
            self.landed = self.append("race", "committed by another worker", "message").id
        return super().follow(after_id, wakeup)


def test_message_committed_while_the_tailer_starts_reaches_the_joining_stream(sqlite_path):
    store = WriteLandsAsTheTailerStarts(sqlite_path, max_bytes=10**6, max_messages=100)
    hub = Hub(queue_limit=100, heartbeat_seconds=0.2)
    window = Window(100, 10**6)
    tailer = Tailer(store, window, hub)
    tailer.ensure_running()  # as the worker does at start
    stream = message_stream(("race",), None, window=window, hub=hub, store=store,
                            settings=StreamSettings(retry_ms=1000))
    try:
        received = b""
        deadline = time.monotonic() + 3
        while store.landed is None or store.landed.encode() not in received:
            assert time.monotonic() < deadline, f"{store.landed} never reached the stream: {received!r}"
            received += next(stream)
    finally:
        stream.close()
        tailer.stop()
        gevent.sleep(0)
        store.close()
    assert received.count(f"id: {store.landed}\n".encode()) == 1
