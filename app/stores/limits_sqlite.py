"""A ``limits`` storage in one SQLite file, so every gunicorn worker counts against one limit.

``limits`` (behind Flask-Limiter) ships memory, Redis, Memcached and MongoDB
storages. Memory is per process: with N workers a client would get N times
its limit. The embedded deployment has no server to share through, but it
has SQLite in WAL mode, which several processes may write safely.

Only what the fixed-window strategy needs is here: one row per key holding a
count and the moment its window ends. ``incr`` is a single UPSERT, so a
read-modify-write race between workers cannot lose a hit. Every statement
runs on one native thread of its own (a gevent ThreadPool of size one, as the
message store's writes do): a busy file delays the publishers waiting on it,
not the other streams of the worker, and one thread serialises the use of the
connection without a lock (a threading.Lock is a gevent lock once the worker
is patched, and blocking on it from a native thread deadlocks).
"""
from __future__ import annotations

import sqlite3
import time
from urllib.parse import unquote, urlsplit

from gevent.threadpool import ThreadPool
from limits.storage import Storage

from .sqlite import use_wal

SCHEME = "sse-sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_limits (
    key        TEXT PRIMARY KEY,
    hits       INTEGER NOT NULL,
    expires_at REAL    NOT NULL
) WITHOUT ROWID
"""
# A new window starts when the old one has ended; every expression on the
# right of SET sees the row as it was before this statement.
_INCR = """
INSERT INTO rate_limits (key, hits, expires_at) VALUES (:key, :amount, :new_expiry)
ON CONFLICT (key) DO UPDATE SET
    hits       = CASE WHEN expires_at <= :now THEN :amount ELSE hits + :amount END,
    expires_at = CASE WHEN expires_at <= :now THEN :new_expiry ELSE expires_at END
RETURNING hits
"""
# Every this many increments a process sweeps ended windows, so the table
# holds roughly the clients of the last window, not every client ever seen.
_SWEEP_EVERY = 1000


def storage_uri(path: str) -> str:
    """Return the storage URI for a rate-limit database at ``path``."""
    return f"{SCHEME}:///{path}"


class SQLiteStorage(Storage):
    """Fixed-window counters shared by every process that opens the same file."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: float | str | bool) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.path = unquote(urlsplit(uri).path)[1:]  # sse-sqlite:///var/x -> var/x, :////abs -> /abs
        self._pool: ThreadPool | None = None  # made on first use: after the fork
        self._increments = 0
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 2000")
        use_wal(self._conn)
        self._conn.execute("PRAGMA synchronous = NORMAL")  # a counter may be lost on power failure, no more
        self._conn.execute(_SCHEMA)

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    def _run(self, sql: str, params: dict | tuple = ()) -> list[tuple]:
        if self._pool is None:
            self._pool = ThreadPool(1)
        return self._pool.apply(self._run_blocking, (sql, params))

    def _run_blocking(self, sql: str, params: dict | tuple) -> list[tuple]:
        return self._conn.execute(sql, params).fetchall()

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` hits to the key's window (a new one if it ended) and return its hits."""
        now = time.time()
        self._increments += 1
        if self._increments % _SWEEP_EVERY == 0:
            self._run("DELETE FROM rate_limits WHERE expires_at <= ?", (now,))
        [(hits,)] = self._run(_INCR, {"key": key, "amount": amount, "now": now, "new_expiry": now + expiry})
        return hits

    def get(self, key: str) -> int:
        """Return the hits in the key's current window (0 when it ended)."""
        rows = self._run("SELECT hits FROM rate_limits WHERE key = ? AND expires_at > ?", (key, time.time()))
        return rows[0][0] if rows else 0

    def get_expiry(self, key: str) -> float:
        """Return when the key's window ends (now when there is none)."""
        now = time.time()
        rows = self._run("SELECT expires_at FROM rate_limits WHERE key = ? AND expires_at > ?", (key, now))
        return rows[0][0] if rows else now

    def check(self) -> bool:
        """Tell whether the file answers."""
        try:
            self._run("SELECT 1")
        except sqlite3.Error:
            return False
        return True

    def reset(self) -> int | None:
        """Forget every counter."""
        if self._pool is None:
            self._pool = ThreadPool(1)
        return self._pool.apply(lambda: self._conn.execute("DELETE FROM rate_limits").rowcount)

    def clear(self, key: str) -> None:
        """Forget one key's counter."""
        self._run("DELETE FROM rate_limits WHERE key = ?", (key,))
