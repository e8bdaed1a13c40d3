"""Streams per client on this node, counted across its gunicorn workers (MAX_STREAMS_PER_CLIENT).

A worker alone cannot count them: a client's streams land on whichever
worker accepts each connection. So every worker keeps its share in one small
memory-mapped LMDB file on the node (CLIENT_SLOTS_PATH, made by
gunicorn.conf.py for each master), one record per (client, worker) holding
that worker's streams of that client. The store is not used: it is shared by
every node, and this bound is per node, on the node's own memory and slots.

Why LMDB: every stream open takes a slot and every close gives one back, so
this is on the open path of every stream. A write transaction of LMDB is a
robust process-shared mutex and a few page writes in a shared mapping: a take
and a give-back cost ~20 µs of CPU together (~60 µs in place, within a whole
open and close), against ~58 µs (~145 µs in place) for the SQLite file this
replaced (bench/results/2026-12-05-open-profile.md).

* **Check and take are one transaction.** LMDB admits one writer at a time
  on the whole file, across processes: the client's records are summed and
  this worker's incremented inside one write transaction, so two workers can
  never both admit the last slot.
* **Giving back** decrements this worker's record and deletes it at zero:
  the file holds the clients that hold streams now.
* **A worker that stops** (SIGTERM) gives back all of its slots in one
  transaction as it starts ending its streams: its clients reconnect to the
  other workers at once, and find their slots free.
* **A worker that dies** (kill -9, OOM) cannot give anything back: the
  master's ``child_exit`` hook (gunicorn.conf.py) deletes its records by pid.
  If it died inside a transaction, LMDB's robust mutex hands the lock to the
  next writer and the half-done transaction is simply not there (copy-on-write).
  The master's ``on_starting`` removes the file: nobody holds its records.
* **No durability is asked for** (``sync=False``): the counts die with the
  node anyway, and a crash of the whole machine ends every stream.
* **Waiting.** The write lock is held for microseconds and is waited for in
  the OS, not in gevent: a wait blocks the worker for about as long as the
  other's write takes, which is cheaper than any cooperative retry.
* **Fail open.** If the file cannot be used, streams are admitted uncounted
  (each worker's own MAX_STREAMS_PER_WORKER still holds) and the failure is
  logged once until it recovers: the per-client bound must not become a way
  to refuse every client.

Without a path (the app outside gunicorn: one process) the counts live in a
dict of this process, which then is the whole node.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator

import lmdb

log = logging.getLogger(__name__)

# The file is made this size but sparse (``writemap``: LMDB writes into the
# mapping): only the pages written take disk and memory -- a record per client
# and worker holding streams, ~40,000 at the default limits, a few MB. Full,
# the file fails open like any other error.
MAP_SIZE = 256 << 20
_PID_BYTES = 4


class ClientSlotsUnavailable(Exception):
    """The slots file could not be used; the stream is admitted uncounted."""


def client_prefix(client: str) -> bytes:
    """The first part of a client's records' keys: fixed size, whatever the client key (LMDB keys are short)."""
    return hashlib.blake2b(client.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _record_key(client: str, pid: int) -> bytes:
    return client_prefix(client) + pid.to_bytes(_PID_BYTES, "big")


def count_of(value: bytes | None) -> int:
    return int.from_bytes(value, "big") if value else 0


def client_records(txn: lmdb.Transaction, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    cursor = txn.cursor()
    if not cursor.set_range(prefix):
        return
    for key, value in cursor:
        if not key.startswith(prefix):
            return
        yield key, value


def open_file(path: str) -> lmdb.Environment:
    """Open (creating) the node's slots file: ``path`` and LMDB's ``path-lock`` beside it."""
    return lmdb.open(path, subdir=False, map_size=MAP_SIZE, max_dbs=0, sync=False, metasync=False, writemap=True,
                     readahead=False, max_readers=64)


class ClientSlots:
    """This node's streams per client, shared by its workers through one LMDB file."""

    def __init__(self, path: str | None, limit: int) -> None:
        self.path = path
        self.limit = limit
        self._env: lmdb.Environment | None = None
        self._env_pid = 0  # the process the file was opened in: LMDB handles are never used across a fork
        self._local: Counter[str] = Counter()  # without a path: this process is the node
        self._failing = False

    def take(self, client: str) -> bool:
        """Take one of the client's slots; False when it holds ``limit`` streams on this node.

        Raises ClientSlotsUnavailable when the file cannot be used.
        """
        if self.path is None:
            if self._local[client] >= self.limit:
                return False
            self._local[client] += 1
            return True
        with self._writing() as txn:
            prefix = client_prefix(client)
            if sum(count_of(value) for _, value in client_records(txn, prefix)) >= self.limit:
                return False
            key = prefix + os.getpid().to_bytes(_PID_BYTES, "big")
            txn.put(key, (count_of(txn.get(key)) + 1).to_bytes(4, "big"))
            return True

    def give_back(self, client: str) -> None:
        """Give one of the client's slots back (its stream ended)."""
        if self.path is None:
            self._local[client] -= 1
            if self._local[client] <= 0:
                del self._local[client]
            return
        with self._writing() as txn:
            key = _record_key(client, os.getpid())
            left = count_of(txn.get(key)) - 1
            if left > 0:
                txn.put(key, left.to_bytes(4, "big"))
            else:
                txn.delete(key)

    def drop_this_worker(self) -> None:
        """Give back every slot this worker holds, in one transaction (it is shutting down)."""
        if self.path is None:
            self._local.clear()
            return
        with self._writing() as txn:
            _drop_records_of(txn, os.getpid())

    def _environment(self) -> lmdb.Environment:
        if self._env is None or self._env_pid != os.getpid():
            self._env, self._env_pid = open_file(self.path), os.getpid()
        return self._env

    def _writing(self) -> _Writing:
        return _Writing(self)

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("client slots file %s cannot be used (%s): streams are admitted without the "
                        "per-client limit until it works again", self.path, exc)
        if self._env_pid == os.getpid() and self._env is not None:
            self._env.close()  # opened afresh next time: the file may have been replaced or fixed
        self._env = None
        raise ClientSlotsUnavailable(str(exc)) from None


class _Writing:
    """One write transaction on the slots file: committed on success, errors turned into ClientSlotsUnavailable."""

    __slots__ = ("_slots", "_txn")

    def __init__(self, slots: ClientSlots) -> None:
        self._slots = slots

    def __enter__(self) -> lmdb.Transaction:
        try:
            self._txn = self._slots._environment().begin(write=True)
        except lmdb.Error as exc:
            self._slots._failed(exc)
        return self._txn

    def __exit__(self, kind, exc, traceback) -> bool:
        slots = self._slots
        if kind is not None:
            self._txn.abort()
            if issubclass(kind, lmdb.Error):
                slots._failed(exc)
            return False
        try:
            self._txn.commit()
        except lmdb.Error as error:
            slots._failed(error)
        if slots._failing:
            slots._failing = False
            log.warning("client slots file %s works again: streams per client are counted again", slots.path)
        return False


def _drop_records_of(txn: lmdb.Transaction, pid: int) -> int:
    """Delete every record of worker ``pid``; return how many streams they held."""
    suffix, held = pid.to_bytes(_PID_BYTES, "big"), 0
    cursor = txn.cursor()
    doomed = [(key, value) for key, value in cursor if key.endswith(suffix)]
    for key, value in doomed:
        held += count_of(value)
        txn.delete(key)
    return held


def drop_worker(path: str, pid: int) -> int:
    """Delete a dead worker's records (gunicorn's master, in ``child_exit``); return how many streams they held."""
    if not os.path.exists(path):
        return 0
    env = open_file(path)
    try:
        with env.begin(write=True) as txn:
            return _drop_records_of(txn, pid)
    finally:
        env.close()


def remove(path: str) -> None:
    """Remove the slots file and its lock file (the master, before any worker starts)."""
    for suffix in ("", "-lock"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
