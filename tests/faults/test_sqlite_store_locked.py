"""Writers queued behind a SQLite file another process has locked each fail within two busy timeouts.

With the file locked by another process, every write waits out the 2 s
busy timeout, and this worker's writes take turns (one writer thread), so a
write gives up once it has waited the busy timeout for its turn: each answers
within about twice it. (Before, the n-th concurrent publisher got its 503
after n x 2 s: over 30 s with 16 publishers in the live outage test.)
"""
from __future__ import annotations

import sqlite3
import time

import gevent

from app.stores.base import StoreUnavailable
from app.stores.sqlite import SQLiteStore

WRITERS = 6


def test_locked_file_fails_every_waiting_writer_within_two_busy_timeouts(sqlite_path):
    store = SQLiteStore(sqlite_path, max_bytes=10**6, max_messages=100)
    store.prepare()  # opened before the lock, as the app opens it at start-up
    holder = sqlite3.connect(sqlite_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")

    def timed_append(number: int) -> tuple[float, Exception | None]:
        started = time.monotonic()
        try:
            store.append("locked", f"message {number}", "message")
        except StoreUnavailable as exc:
            return time.monotonic() - started, exc
        return time.monotonic() - started, None

    try:
        greenlets = [gevent.spawn(timed_append, number) for number in range(WRITERS)]
        gevent.joinall(greenlets, timeout=30, raise_error=True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    results = [greenlet.value for greenlet in greenlets]
    assert all(isinstance(error, StoreUnavailable) for _, error in results)
    assert max(duration for duration, _ in results) < 4.5
    # The file is writable again: the next write goes through.
    assert store.append("locked", "after", "message").text == "after"
    store.close()


def test_a_store_opens_and_reads_while_another_process_holds_the_write_lock(sqlite_path):
    """A worker that boots (or is respawned) under a long outside transaction starts: it only reads."""
    first = SQLiteStore(sqlite_path, max_bytes=10**6, max_messages=100)
    stored = first.append("locked", "before the lock", "message")
    holder = sqlite3.connect(sqlite_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        booting = SQLiteStore(sqlite_path, max_bytes=10**6, max_messages=100)
        booting.prepare()  # what the app does at start-up: opens the file
        took = time.monotonic() - started
        assert took < 1.0  # not the 10 s busy timeout a set-up write would wait out, then fail
        assert booting.epoch == first.epoch
        assert [message.id for message in booting.read_room("locked").messages] == [stored.id]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    booting.close()
    first.close()
