"""The embedded store: one SQLite file in WAL mode, shared by every worker.

Order: ``seq`` is an AUTOINCREMENT rowid assigned inside a ``BEGIN IMMEDIATE``
transaction. SQLite lets one writer in at a time, so seq order *is* commit
order, and a rolled-back insert hands its seq back: the window is always a
gap-free run of seqs. A gap seen by a follower therefore means eviction.

Ids look like ``<epoch>-<seq>``. The epoch is made when the file is created,
so an id from a deleted and re-created database is recognised as unknown
instead of silently skipping everything up to its seq.

Bound: like a MongoDB capped collection, the oldest messages are evicted once
there are more than ``max_messages`` or their sizes add up past ``max_bytes``.
With ``MESSAGE_TTL_SECONDS`` each append also deletes the oldest rows that
have expired, up to the first that has not (``created_ms`` is this machine's
clock, which every worker sharing the file reads too). Readers never rely on
it (``app/delivery/expiry.py``): a quiet file keeps its expired rows until the
next append, and they are filtered out of every read.

Writes run on one native thread of their own (a gevent ThreadPool of size
one), so a locked or unwritable file delays the publishers waiting on it, never
the heartbeats of the worker's other streams; one thread also serialises them
without a lock (a threading.Lock is a gevent lock once the worker is patched,
and blocking on it from a native thread deadlocks). Reads are short indexed
queries and run in place.

Idempotency keys (``append_once``) live in the message's own row, in a
nullable column with a unique index over its non-NULL values: a key is
unique among the messages in the window, and leaves with its message when
that is evicted. Inside the ``BEGIN IMMEDIATE`` transaction the index refuses
a second row with the key, and the same transaction reads the first one
back; since workers and nodes take the write lock in turn, two concurrent
appends with one key store one row.

Presence (see ``base.py``) is a table of its own in the same file, one row per
worker: its streams per room as JSON (at most ``PRESENCE_MAX_ROOMS`` rooms
named, the rest counted in two columns), who follows the named rooms (at most
``PRESENCE_MAX_IDENTITIES`` (room, sub) pairs as JSON, the rest counted in
``other_subs``) and their anonymous streams, and when the row expires (this
machine's clock: every worker that shares the file runs on it). Rows are
written on the same writer thread, through a connection of their own whose
busy timeout is short, so a locked file holds this worker's publishers up by
at most ``_PRESENCE_BUSY_MS`` per presence write. Every presence write is a
commit, so it also wakes every worker's follower for one indexed query
(``PRAGMA data_version`` changes): one per writing worker per second.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import gevent.event
from gevent.threadpool import ThreadPool

from .base import (
    Backlog,
    FeedBatch,
    Message,
    PositionLost,
    PresenceReport,
    Publication,
    Store,
    StoreUnavailable,
    presence_expiry,
    presence_sweep_before,
    stored_size,
    sum_presence,
)
from .ids import parse_sqlite_id, sqlite_id

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    room       TEXT    NOT NULL,
    text       TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    idempotency_key TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_room ON messages (room, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE IF NOT EXISTS presence (
    worker        TEXT    PRIMARY KEY,
    rooms         TEXT    NOT NULL,
    expires_ms    INTEGER NOT NULL,
    other_rooms   INTEGER NOT NULL DEFAULT 0,
    other_streams INTEGER NOT NULL DEFAULT 0,
    subs          TEXT    NOT NULL DEFAULT '[]',
    anonymous     TEXT    NOT NULL DEFAULT '{}',
    other_subs    INTEGER NOT NULL DEFAULT 0
);
"""
# Added to a presence table made before they were (its rows expire in seconds), with their types.
_PRESENCE_COLUMNS_ADDED = {
    "other_rooms": "INTEGER NOT NULL DEFAULT 0",
    "other_streams": "INTEGER NOT NULL DEFAULT 0",
    # Issue 16: who follows each named room ([[room, sub, streams], ...]), its anonymous streams ({room: streams}).
    "subs": "TEXT NOT NULL DEFAULT '[]'",
    "anonymous": "TEXT NOT NULL DEFAULT '{}'",
    "other_subs": "INTEGER NOT NULL DEFAULT 0",
}
# Added to a messages table made before it was, with its unique index (made after the column).
_IDEMPOTENCY_COLUMN = "idempotency_key"
_IDEMPOTENCY_INDEX = (f"CREATE UNIQUE INDEX IF NOT EXISTS messages_by_idempotency_key ON messages "
                      f"({_IDEMPOTENCY_COLUMN}) WHERE {_IDEMPOTENCY_COLUMN} IS NOT NULL")
_COLUMNS = "seq, room, text, event, created_ms"
_FEED_BATCH = 1000
# How long a write may wait for the file's write lock (SQLite's busy
# timeout), and as long again for its turn on this worker's writer thread.
_WRITE_BUSY_MS = 2000
# Presence is refreshed every second: a write that cannot get the lock soon
# gives up rather than hold up the publishers queued behind it.
_PRESENCE_BUSY_MS = 250
# Free space below which the store is not ready: room for several of the
# largest messages at default settings (about 16 KB stored each) and the
# WAL frames that carry them.
_MIN_FREE_BYTES = 256 * 1024
# The readiness probe's wait for the write lock: a load balancer's check
# should hear "not ready" well within its own timeout.
_PROBE_BUSY_MS = 250


def use_wal(conn: sqlite3.Connection, timeout: float = 10.0) -> None:
    """Put the database file in WAL mode, waiting while another process holds it.

    Switching the journal mode needs the file to itself. Two processes
    opening a new file together can each hold what the other waits for, and
    one of them then fails with "database is locked" once its busy timeout
    runs out: in CI one of two app processes died that way at start-up, and
    two gunicorn workers on a fresh file could do the same. So the switch is
    tried with a short busy timeout, backing off (and letting the other
    finish) between tries.
    """
    (busy_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute("PRAGMA busy_timeout = 50")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {busy_ms}")


def _ready_epoch(conn: sqlite3.Connection) -> str | None:
    """Return the epoch of a file that is already set up, by reading only; None if it needs setting up.

    A worker that boots while another process holds the file's write lock
    (a long transaction, a backup) must still start: WAL lets it read. Were
    every boot a write, it would wait out its busy timeout and exit, and a
    worker that fails to boot makes gunicorn stop the whole server -- the
    workers that were serving too (a respawn under a locked file did that).
    """
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        return None
    names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    if not {"messages", "messages_by_room", "messages_by_idempotency_key", "meta", "presence"} <= names:
        return None
    present = {row[1] for row in conn.execute("PRAGMA table_info(presence)")}
    if not set(_PRESENCE_COLUMNS_ADDED) <= present:
        return None
    rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('epoch', 'bytes', 'count')").fetchall())
    return rows["epoch"] if len(rows) == 3 else None


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block as one write transaction: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # SQLite has already rolled back after some errors (a full disk at
        # COMMIT): a ROLLBACK then fails with "no transaction is active",
        # which would hide the error worth reporting.
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def _set_up(conn: sqlite3.Connection) -> str:
    """Put the file in WAL mode, create or complete the schema, and return its epoch (made now if new)."""
    use_wal(conn)
    with _immediate(conn):
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        present = {row[1] for row in conn.execute("PRAGMA table_info(presence)")}
        for column, definition in _PRESENCE_COLUMNS_ADDED.items():
            if column not in present:
                conn.execute(f"ALTER TABLE presence ADD COLUMN {column} {definition}")
        if _IDEMPOTENCY_COLUMN not in {row[1] for row in conn.execute("PRAGMA table_info(messages)")}:
            conn.execute(f"ALTER TABLE messages ADD COLUMN {_IDEMPOTENCY_COLUMN} TEXT")
        conn.execute(_IDEMPOTENCY_INDEX)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (secrets.token_hex(4),))
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('bytes', 0)")
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('count', 0)")
    (epoch,) = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    return epoch


def _free_bytes(path: str) -> int:
    """Return the bytes this process may still write on the filesystem holding ``path``."""
    stats = os.statvfs(os.path.dirname(os.path.abspath(path)))
    # Root may use the blocks the filesystem reserves for it; anyone else may not.
    blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    return blocks * stats.f_frsize


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _ms(moment: datetime) -> int:
    """Return a moment as the milliseconds since the epoch the presence table stores."""
    return int(moment.timestamp() * 1000)


def _close_quietly(conn: sqlite3.Connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except sqlite3.Error:
            pass


class SQLiteStore(Store):
    """A bounded, ordered message window in one SQLite file."""

    def __init__(self, path: str, *, max_bytes: int, max_messages: int, poll_interval: float = 0.01,
                 message_ttl_seconds: float | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.message_ttl_seconds = message_ttl_seconds
        self.poll_interval = poll_interval
        self._last_write_failed = False
        self._write_pool: ThreadPool | None = None  # made on first write: after the fork
        self._writer: sqlite3.Connection | None = None
        self._presence_writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # Known once the file is open (``prepare``); nothing touches the disk before.
        self._epoch: str | None = None

    # -- connections ---------------------------------------------------------
    def _connect(self, busy_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        # NORMAL is durable against a killed process in WAL mode; only an OS
        # crash or power cut can lose the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def prepare(self) -> None:
        """Open the file, creating and setting it up if needed; raise StoreUnavailable if it cannot be opened.

        Called by the app at start-up, as MongoDB's is (a failure there is a
        warning, not a crash: every use tries again), and again by each use
        until it succeeds. A file already set up is only read, so a worker
        that boots while another process holds the write lock still starts.
        """
        if self._epoch is None:
            self._epoch = self._initialise()

    @property
    def epoch(self) -> str:
        """The file's epoch, the first part of every id it issues (made with the file; read by ``prepare``)."""
        if self._epoch is None:
            self.prepare()
        return self._epoch

    def _initialise(self) -> str:
        """Return the file's epoch, setting the file up first unless it is set up already."""
        conn = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = self._connect(busy_ms=10_000)
            epoch = _ready_epoch(conn)
            return epoch if epoch is not None else _set_up(conn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        finally:
            _close_quietly(conn)  # a set-up cut short is rolled back with it

    @property
    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            self.prepare()  # never a connection to a file that is not set up: it would make an empty one
            self._reader = self._connect(busy_ms=200)
        return self._reader

    # -- ids -----------------------------------------------------------------
    def _make_id(self, seq: int) -> str:
        return sqlite_id(self.epoch, seq)

    def _seq_of(self, message_id: str) -> int | None:
        """Return the seq of one of this file's ids; None for a malformed id or another epoch's."""
        parsed = parse_sqlite_id(message_id)
        if parsed is None or parsed[0] != self.epoch:
            return None
        return parsed[1]

    def _message(self, row: tuple) -> Message:
        seq, room, text, event, created_ms = row
        created = datetime.fromtimestamp(created_ms / 1000, tz=UTC)
        return Message(id=self._make_id(seq), room=room, text=text, event=event, created_at=created)

    # -- writing -------------------------------------------------------------
    def _on_writer_thread(self, function, *args):
        """Run ``function`` on this worker's one writer thread (made on first use: after the fork)."""
        self.prepare()  # here, not on the writer thread: opening may wait and retry (use_wal)
        if self._write_pool is None:
            self._write_pool = ThreadPool(1)
        return self._write_pool.apply(function, args)

    def append(self, room: str, text: str, event: str) -> Message:
        """Store a message, evicting the oldest beyond the bound, and return it."""
        return self._append(room, text, event, None).message

    def append_once(self, room: str, text: str, event: str, idempotency_key: str) -> Publication:
        """Store a message under a key no row has, or return the row that has it (see the module docstring)."""
        return self._append(room, text, event, idempotency_key)

    def _append(self, room: str, text: str, event: str, key: str | None) -> Publication:
        outcome = self._on_writer_thread(self._append_or_failure, room, text, event, key, time.monotonic())
        if isinstance(outcome, StoreUnavailable):
            raise outcome  # raised here, not in the pool thread, where gevent would print a traceback
        return outcome

    def _append_or_failure(self, room: str, text: str, event: str, key: str | None,
                           queued_at: float) -> Publication | StoreUnavailable:
        # Writes take turns on one thread. While the file is locked each one
        # waits out the busy timeout, so without this check the n-th of n
        # concurrent publishers would get its 503 only after n busy timeouts.
        # It applies only while writes are failing: a long wait with no failure
        # means a busy worker held the GIL, and the store is fine.
        if self._last_write_failed and time.monotonic() - queued_at > _WRITE_BUSY_MS / 1000:
            return StoreUnavailable("SQLite write failed: waited too long for this worker's writer "
                                    "(is the file locked?)")
        try:
            publication = self._append_blocking(room, text, event, key)
        except StoreUnavailable as exc:
            self._last_write_failed = True
            return exc
        self._last_write_failed = False
        return publication

    def _append_blocking(self, room: str, text: str, event: str, key: str | None) -> Publication:
        # The key is not counted in the size: the window (app/delivery/window.py)
        # mirrors this bound from the messages alone.
        size = stored_size(room, text, event)
        created_ms = int(time.time() * 1000)
        try:
            if self._writer is None:
                self._writer = self._connect(busy_ms=_WRITE_BUSY_MS)
            with _immediate(self._writer) as conn:
                try:
                    seq = conn.execute(
                        "INSERT INTO messages (room, text, event, created_ms, size, idempotency_key) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (room, text, event, created_ms, size, key),
                    ).lastrowid
                except sqlite3.IntegrityError:
                    # Only the key's unique index can refuse a row; the insert
                    # alone is undone, and the row that holds the key is read
                    # in the same transaction (nobody can evict it meanwhile).
                    earlier = None if key is None else conn.execute(
                        f"SELECT {_COLUMNS} FROM messages WHERE idempotency_key = ?", (key,)).fetchone()
                    if earlier is None:
                        raise
                    return Publication(self._message(earlier), replayed=True)
                self._evict(conn, size)
                self._delete_expired(conn, created_ms)
        except sqlite3.Error as exc:
            self._drop_writer()
            raise StoreUnavailable(f"SQLite write failed: {exc}") from exc
        return Publication(self._message((seq, room, text, event, created_ms)), replayed=False)

    def _evict(self, conn: sqlite3.Connection, added_size: int) -> None:
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'bytes'", (added_size,))
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'count'")
        total, count = (
            row[0] for row in conn.execute("SELECT value FROM meta WHERE key IN ('bytes', 'count') ORDER BY key")
        )
        while count > self.max_messages or total > self.max_bytes:
            (freed,) = conn.execute(
                "DELETE FROM messages WHERE seq = (SELECT min(seq) FROM messages) RETURNING size"
            ).fetchone()
            total -= freed
            count -= 1
            conn.execute("UPDATE meta SET value = value - ? WHERE key = 'bytes'", (freed,))
            conn.execute("UPDATE meta SET value = value - 1 WHERE key = 'count'")

    def _delete_expired(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Delete the oldest rows up to the first one that has not expired (MESSAGE_TTL_SECONDS), if set."""
        if self.message_ttl_seconds is None:
            return
        cutoff_ms = now_ms - round(self.message_ttl_seconds * 1000)
        # By seq from the oldest, stopping at the first row to keep: it reads the
        # expired rows and one more (there is no index on created_ms, and none is needed).
        (first_kept,) = conn.execute("SELECT seq FROM messages WHERE created_ms >= ? ORDER BY seq LIMIT 1",
                                     (cutoff_ms,)).fetchone()  # the row just inserted at least
        freed = conn.execute("DELETE FROM messages WHERE seq < ? RETURNING size", (first_kept,)).fetchall()
        if freed:
            conn.execute("UPDATE meta SET value = value - ? WHERE key = 'bytes'", (sum(size for (size,) in freed),))
            conn.execute("UPDATE meta SET value = value - ? WHERE key = 'count'", (len(freed),))

    def store_time(self) -> float:
        """Return now on this machine's clock: the one ``created_ms`` is stamped with."""
        return time.time()

    # -- presence ------------------------------------------------------------
    def publish_presence(self, worker_id: str, report: PresenceReport, ttl: float) -> None:
        """Upsert this worker's row, and delete rows that expired long ago (workers that were killed)."""
        now = datetime.now(UTC)
        subs = [[room, sub, streams] for room, named in report.subs.items() for sub, streams in named.items()]
        self._write_presence(
            ("INSERT INTO presence (worker, rooms, expires_ms, other_rooms, other_streams, subs, anonymous, "
             "other_subs) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
             "ON CONFLICT (worker) DO UPDATE SET rooms = excluded.rooms, expires_ms = excluded.expires_ms, "
             "other_rooms = excluded.other_rooms, other_streams = excluded.other_streams, subs = excluded.subs, "
             "anonymous = excluded.anonymous, other_subs = excluded.other_subs",
             (worker_id, _compact(report.rooms), _ms(presence_expiry(now, ttl)), report.other_rooms,
              report.other_streams, _compact(subs), _compact(report.anonymous), report.other_subs)),
            ("DELETE FROM presence WHERE expires_ms < ?", (_ms(presence_sweep_before(now)),)),
        )

    def refresh_presence(self, worker_id: str, ttl: float) -> bool:
        """Move this worker's expiry on, not rewriting its rooms; False if its row is gone."""
        expires_ms = _ms(presence_expiry(datetime.now(UTC), ttl))
        changed = self._write_presence(("UPDATE presence SET expires_ms = ? WHERE worker = ?", (expires_ms, worker_id)))
        return changed > 0

    def withdraw_presence(self, worker_id: str) -> None:
        self._write_presence(("DELETE FROM presence WHERE worker = ?", (worker_id,)))

    def presence_counts(self, exclude: str | None = None) -> PresenceReport:
        rows = self._query("SELECT rooms, other_rooms, other_streams, subs, anonymous, other_subs FROM presence "
                           "WHERE expires_ms > ? AND worker IS NOT ?", (_ms(datetime.now(UTC)), exclude))
        return sum_presence((json.loads(rooms).items(), unnamed_rooms, unnamed_streams, json.loads(subs),
                             json.loads(anonymous).items(), unnamed_subs)
                            for rooms, unnamed_rooms, unnamed_streams, subs, anonymous, unnamed_subs in rows)

    def _write_presence(self, *statements: tuple[str, tuple]) -> int:
        """Run the statements as one transaction on the writer thread; return the first one's changed rows."""
        outcome = self._on_writer_thread(self._write_presence_or_failure, statements)
        if isinstance(outcome, StoreUnavailable):
            raise outcome  # here, not in the pool thread (see append)
        return outcome

    def _write_presence_or_failure(self, statements: tuple[tuple[str, tuple], ...]) -> int | StoreUnavailable:
        try:
            if self._presence_writer is None:
                self._presence_writer = self._connect(busy_ms=_PRESENCE_BUSY_MS)
            with _immediate(self._presence_writer) as conn:
                changed = [conn.execute(sql, params).rowcount for sql, params in statements]
        except sqlite3.Error as exc:
            _close_quietly(self._presence_writer)
            self._presence_writer = None
            return StoreUnavailable(f"SQLite presence write failed: {exc}")
        return changed[0]

    def _drop_writer(self) -> None:
        _close_quietly(self._writer)
        self._writer = None

    # -- reading -------------------------------------------------------------
    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self.reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._reader = None
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

    def read_rooms(self, rooms: Sequence[str], after_id: str | None = None, limit: int | None = None) -> Backlog:
        """Return the rooms' messages after ``after_id`` in seq order, or all with a reset reason."""
        after_seq = 0 if after_id is None else self._resume_point(rooms, after_id)
        rows = self._query(
            f"SELECT {_COLUMNS} FROM messages WHERE room IN ({', '.join('?' * len(rooms))}) AND seq > ? "
            f"ORDER BY seq LIMIT ?",
            (*rooms, after_seq or 0, -1 if limit is None else limit),
        )
        messages = [self._message(row) for row in rows]
        return Backlog.resume_point_not_found(messages) if after_seq is None else Backlog(messages)

    def read_rooms_before(self, rooms: Sequence[str], before_id: str, limit: int) -> Backlog:
        """Return up to ``limit`` of the rooms' messages just before ``before_id`` in seq order, or the newest."""
        before_seq = self._resume_point(rooms, before_id)
        rows = self._query(
            # Newest first through the (room, seq) index, then turned round.
            f"SELECT {_COLUMNS} FROM messages WHERE room IN ({', '.join('?' * len(rooms))}) AND seq < ? "
            f"ORDER BY seq DESC LIMIT ?",
            (*rooms, (2**63 - 1) if before_seq is None else before_seq, limit),
        )
        messages = [self._message(row) for row in reversed(rows)]
        return Backlog.resume_point_not_found(messages) if before_seq is None else Backlog(messages)

    def _resume_point(self, rooms: Sequence[str], after_id: str) -> int | None:
        """Return the seq to resume after; None if the id is not one of these rooms' in the window."""
        seq = self._seq_of(after_id)
        if seq is None:
            return None
        # One query whatever the answer: another room's id costs what an unknown one does.
        found = self._query("SELECT room FROM messages WHERE seq = ?", (seq,))
        return seq if found and found[0][0] in rooms else None

    def contains(self, message_id: str) -> bool:
        seq = self._seq_of(message_id)
        return seq is not None and bool(self._query("SELECT 1 FROM messages WHERE seq = ?", (seq,)))

    def ping(self) -> None:
        """Answer when the store can take writes; raise StoreUnavailable otherwise.

        A read is not enough: in WAL mode a file locked by another writer,
        a full disk or a read-only file still answers reads, while every
        publish fails (issue 18). So the probe is a write through the very
        connection publishes use, on this worker's writer thread: it takes
        the write lock (waiting at most ``_PROBE_BUSY_MS``, not a publish's
        busy timeout), rewrites one row of ``meta`` to its own value and
        commits. It stores nothing new.

        That one page can still fit where a message no longer does (a
        failed insert leaves the WAL file grown), so the filesystem must
        also have ``_MIN_FREE_BYTES`` free.
        """
        self.prepare()
        try:
            free = _free_bytes(self.path)
        except OSError as exc:  # the directory is gone, or not ours to look at
            raise StoreUnavailable(f"SQLite store's directory cannot be checked: {exc}") from exc
        if free < _MIN_FREE_BYTES:
            raise StoreUnavailable(f"SQLite store's filesystem has {free} bytes free, "
                                   f"less than the {_MIN_FREE_BYTES} a write needs to be sure of room")
        failure = self._on_writer_thread(self._probe_write_or_failure, time.monotonic())
        if failure is not None:
            raise failure  # here, not in the pool thread (see append)

    def _probe_write_or_failure(self, queued_at: float) -> StoreUnavailable | None:
        if self._last_write_failed and time.monotonic() - queued_at > _WRITE_BUSY_MS / 1000:
            return StoreUnavailable("SQLite write probe: waited too long for this worker's writer "
                                    "(is the file locked?)")
        try:
            if self._writer is None:
                self._writer = self._connect(busy_ms=_WRITE_BUSY_MS)
            self._writer.execute(f"PRAGMA busy_timeout = {_PROBE_BUSY_MS}")
            try:
                with _immediate(self._writer) as conn:
                    conn.execute("UPDATE meta SET value = value WHERE key = 'epoch'")
            finally:
                self._writer.execute(f"PRAGMA busy_timeout = {_WRITE_BUSY_MS}")
        except sqlite3.Error as exc:
            self._drop_writer()
            self._last_write_failed = True
            return StoreUnavailable(f"SQLite write probe failed: {exc}")
        self._last_write_failed = False
        return None

    def newest_id(self) -> str | None:
        (newest,) = self._query("SELECT max(seq) FROM messages")[0]
        return None if newest is None else self._make_id(newest)

    # -- following -----------------------------------------------------------
    def follow(self, after_id: str | None, wakeup: gevent.event.Event) -> Iterator[FeedBatch]:
        """Yield messages after ``after_id`` in seq order, polling the file and waking early on ``wakeup``."""
        if after_id is None:
            # The whole window: from just before its oldest message, whatever was evicted before it.
            (oldest,) = self._query("SELECT min(seq) FROM messages")[0]
            last = 0 if oldest is None else oldest - 1
        else:
            last = self._seq_of(after_id)
            if last is None:
                raise PositionLost(f"{after_id!r} is not from this store")
        seen_version = None
        said_caught_up = False
        while True:
            # data_version changes whenever another connection commits: a
            # cheap check that spares the query when nothing happened.
            (version,) = self._query("PRAGMA data_version")[0]
            if version != seen_version:
                seen_version = version
                rows = self._query(
                    f"SELECT {_COLUMNS} FROM messages WHERE seq > ? ORDER BY seq LIMIT {_FEED_BATCH}", (last,)
                )
                if rows and rows[0][0] != last + 1:
                    raise PositionLost(
                        f"messages {last + 1}..{rows[0][0] - 1} were evicted before this worker read them"
                    )
                if rows:
                    last = rows[-1][0]
                    said_caught_up = False
                    yield [(row[0], self._message(row)) for row in rows]
                    if len(rows) == _FEED_BATCH:
                        seen_version = None  # more are waiting: read again at once
                        continue
            if not said_caught_up:
                said_caught_up = True
                yield []
            wakeup.wait(self.poll_interval)
            wakeup.clear()

    def close(self) -> None:
        if self._write_pool is not None:
            self._write_pool.kill()
            self._write_pool = None
        for conn in (self._reader, self._writer, self._presence_writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = self._presence_writer = None
