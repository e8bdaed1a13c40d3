"""Streams per client on this node, counted across its gunicorn workers (MAX_STREAMS_PER_CLIENT).

A worker alone cannot count them: a client's streams land on whichever
worker accepts each connection. So every worker keeps its share in one small
SQLite file on the node (CLIENT_SLOTS_PATH, made by gunicorn.conf.py for
each master), one row per (client, worker) holding that worker's streams
of that client. The store is not used: it is shared by every node, and
this bound is per node, on the node's own memory and slots.

* **Check and take are one statement.** The conditional UPSERT below counts
  the client's rows and adds one only while the sum is under the limit, and
  SQLite runs a write statement under the file's write lock from its first
  read to its commit: two workers can never both admit the last slot.
* **Giving back** decrements this worker's row in one statement, whose
  trigger deletes it at zero: the table holds the clients that hold streams now.
* **A worker that stops** (SIGTERM) gives back all of its slots in one
  statement as it starts ending its streams, instead of one write per
  stream: its clients reconnect to the other workers at once, and find
  their slots free.
* **A worker that dies** (kill -9, OOM) cannot give anything back: the
  master's ``child_exit`` hook (gunicorn.conf.py) deletes its rows by pid.
  The master's ``on_starting`` removes the file: nobody holds its rows.
* **Cost.** WAL and ``synchronous = OFF`` (the counts die with the node
  anyway, and a crash of the whole machine ends every stream): a take or a
  give-back is a few microseconds of in-process work, no fsync. The busy
  timeout is zero and a busy file is retried here, with ``gevent.sleep``,
  so a worker waiting for the other's few-microsecond write lets its other
  streams run instead of sleeping the whole process in SQLite's busy handler.
* **Fail open.** If the file cannot be used, streams are admitted uncounted
  (each worker's own MAX_STREAMS_PER_WORKER still holds) and the failure is
  logged once until it recovers: the per-client bound must not become a way
  to refuse every client.

Without a path (the app outside gunicorn: one process) the rows live in an
in-memory SQLite database of this process, which then is the whole node.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time

import gevent

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS client_streams (
    client  TEXT    NOT NULL,
    worker  INTEGER NOT NULL,
    streams INTEGER NOT NULL,
    PRIMARY KEY (client, worker)
) WITHOUT ROWID
"""
# One statement: the sum is read under the write lock the insert takes, so
# the check and the take cannot be split by another worker. (The WHERE on
# the SELECT also keeps SQLite's parser from reading ON CONFLICT as a join.)
_TAKE = """
INSERT INTO client_streams (client, worker, streams)
SELECT :client, :worker, 1
WHERE (SELECT coalesce(sum(streams), 0) FROM client_streams WHERE client = :client) < :limit
ON CONFLICT (client, worker) DO UPDATE SET streams = streams + 1
"""
# A row that reaches zero is deleted by the same statement that decremented
# it (a trigger runs inside its statement): one call to give a slot back.
_DROP_EMPTY_ROWS = """
CREATE TRIGGER IF NOT EXISTS drop_empty_rows AFTER UPDATE OF streams ON client_streams
WHEN NEW.streams <= 0
BEGIN
    DELETE FROM client_streams WHERE client = NEW.client AND worker = NEW.worker;
END
"""
_GIVE_BACK = "UPDATE client_streams SET streams = streams - 1 WHERE client = :client AND worker = :worker"

# A busy file is retried for this long (another worker holds the write lock
# for microseconds; only a stuck process holds it longer), backing off from
# the first pause to the last.
BUSY_PATIENCE_SECONDS = 2.0
_FIRST_PAUSE, _LONGEST_PAUSE = 0.0002, 0.01


class ClientSlotsUnavailable(Exception):
    """The slots file could not be used; the stream is admitted uncounted."""


class ClientSlots:
    """This node's streams per client, shared by its workers through one SQLite file."""

    def __init__(self, path: str | None, limit: int) -> None:
        self.path = path
        self.limit = limit
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0  # the process the connection was opened in: never used across a fork
        self._failing = False

    def take(self, client: str) -> bool:
        """Take one of the client's slots; False when it holds ``limit`` streams on this node.

        Raises ClientSlotsUnavailable when the file cannot be used.
        """
        cursor = self._write(_TAKE, {"client": client, "worker": os.getpid(), "limit": self.limit})
        return cursor.rowcount == 1

    def give_back(self, client: str) -> None:
        """Give one of the client's slots back (its stream ended)."""
        self._write(_GIVE_BACK, {"client": client, "worker": os.getpid()})

    def drop_this_worker(self) -> None:
        """Give back every slot this worker holds, in one statement (it is shutting down)."""
        self._write("DELETE FROM client_streams WHERE worker = :worker", {"worker": os.getpid()})

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._conn_pid != os.getpid():
            conn = sqlite3.connect(self.path or ":memory:", isolation_level=None, timeout=0,
                                   check_same_thread=False)
            if self.path:
                from ..stores.sqlite import use_wal

                conn.execute("PRAGMA busy_timeout = 2000")  # once, while the workers set the file up together
                use_wal(conn)
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute(_SCHEMA)
            conn.execute(_DROP_EMPTY_ROWS)
            conn.execute("PRAGMA busy_timeout = 0")  # from here on a busy file is retried in _write
            self._conn, self._conn_pid = conn, os.getpid()
        return self._conn

    def _write(self, sql: str, params: dict) -> sqlite3.Cursor:
        """Run one write statement (its own transaction), retrying while the file is busy."""
        deadline = time.monotonic() + BUSY_PATIENCE_SECONDS
        pause = _FIRST_PAUSE
        while True:
            try:
                cursor = self._connection().execute(sql, params)
            except sqlite3.OperationalError as exc:
                if _busy(exc) and time.monotonic() < deadline:
                    gevent.sleep(pause)  # the other worker's write takes microseconds: let this one's streams run
                    pause = min(pause * 2, _LONGEST_PAUSE)
                    continue
                self._failed(exc)
            except sqlite3.Error as exc:
                self._failed(exc)
            if self._failing:
                self._failing = False
                log.warning("client slots file %s works again: streams per client are counted again", self.path)
            return cursor

    def _failed(self, exc: sqlite3.Error) -> None:
        if not self._failing:
            self._failing = True
            log.warning("client slots file %s cannot be used (%s): streams are admitted without the "
                        "per-client limit until it works again", self.path, exc)
        raise ClientSlotsUnavailable(str(exc)) from None


def _busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc)
    return "locked" in message or "busy" in message


def drop_worker(path: str, pid: int) -> int:
    """Delete a dead worker's rows (gunicorn's master, in ``child_exit``); return how many streams they held."""
    if not os.path.exists(path):
        return 0
    with sqlite3.connect(path, timeout=2.0) as conn:
        conn.execute(_SCHEMA)
        (held,) = conn.execute("SELECT coalesce(sum(streams), 0) FROM client_streams WHERE worker = ?",
                               (pid,)).fetchone()
        conn.execute("DELETE FROM client_streams WHERE worker = ?", (pid,))
    conn.close()
    return held


def remove(path: str) -> None:
    """Remove the slots file and its WAL companions (the master, before any worker starts)."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
