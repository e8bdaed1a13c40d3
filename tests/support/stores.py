"""Fault-test helpers for either store: read what is stored, publish and record every answer,
find which worker holds a connection, and the two accommodations FerretDB needs.

FerretDB 1.24.2 (SQLite backend) stands in for MongoDB here. Two of its differences
break *tailing* in ways MongoDB never does, so the tests work around them -- never the app:

* **A quiet tailable cursor rewinds.** An awaitData getMore re-runs the cursor's query
  every 10 ms and skips to its last record id (``Cursor.Reset``); each document skipped
  overwrites that id. When ``maxTimeMS`` (the app's 1 s) runs out in the middle of a
  skip, the id is left pointing at an older document, and the next getMore returns
  everything after it again: the same documents twice (measured: 300 inserted, 567 read
  by one cursor over 10 s of quiet). The app's window now skips ids it already holds
  (commit 0206a0b); these tests do not lean on that: with a document inserted more
  often than every second no getMore waits out its ``maxTimeMS``, so
  :class:`FerretDBWorkarounds` keeps one coming (in a room no test reads) while it runs.
* **Concurrent inserts can be skipped by a tailer.** FerretDB gives each document its
  record id (the natural order) *before* the insert commits, so two concurrent inserts
  may commit out of record-id order, and a cursor that already read the later one skips
  the earlier for good (measured: 4 concurrent writers, 48-78 of ~800 inserts never
  tailed). MongoDB keeps a capped collection's natural order the commit order. So on
  FerretDB the tests' own writes -- POSTs and direct inserts -- go one at a time.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import requests
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.support.faults import stored_ids as sqlite_stored_ids

FILLER_ROOM = "_filler"  # as tests/conftest.py: a room no test reads


# -- what the store holds ------------------------------------------------------------
def mongo_stored_ids(uri: str, database: str, room: str) -> list[str]:
    """Return the ids the capped collection holds for a room, in natural (store) order."""
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        cursor = client[database].messages.find({"room": room}, {"_id": 1}).sort("$natural", 1)
        return [str(doc["_id"]) for doc in cursor]


def mongo_stored_texts(uri: str, database: str) -> set[str]:
    """Return the texts of every message in the capped collection."""
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        return {doc["text"] for doc in client[database].messages.find({}, {"text": 1})}


def stored_ids_reader(store_env: dict[str, str]) -> Callable[[str], list[str]]:
    """Return ``room -> ids in store order``, read from the store the server of ``store_env`` uses."""
    if store_env.get("MONGODB_URI"):
        uri, database = store_env["MONGODB_URI"], store_env.get("MONGODB_DATABASE", "sse")
        return lambda room: mongo_stored_ids(uri, database, room)
    path = store_env["SQLITE_PATH"]
    return lambda room: sqlite_stored_ids(path, room)


def history_ids(url: str, room: str) -> list[str]:
    """Return the ids GET /messages/history lists for a room (up to 1000), oldest first."""
    reply = requests.get(url + "/messages/history", params={"room": room, "limit": 1000}, timeout=10)
    reply.raise_for_status()
    return [message["id"] for message in reply.json()["messages"]]


# -- which worker holds a connection ------------------------------------------------
def server_connections(port: int) -> dict[int, int]:
    """Return {client port: pid of the process holding the server side} for connections to ``port``."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    owners = {}
    for line in out.splitlines():
        peer = re.search(r":(\d+)\s+users:", line)
        pid = re.search(r"pid=(\d+)", line)
        if peer and pid:
            owners[int(peer.group(1))] = int(pid.group(1))
    return owners


# -- FerretDB ---------------------------------------------------------------------------
class FerretDBWorkarounds:
    """On FerretDB: serialise the test's writes and keep a document coming; elsewhere, nothing.

    ``writes()`` is the context every write of the test runs in (a lock on FerretDB).
    While started, a thread inserts one filler document every ``interval`` seconds
    under that lock, so no tailing getMore waits out its maxTimeMS (see the module
    docstring). ``steady=True`` runs that thread on any server: for a test that wants
    other publishers' steady traffic anyway.
    """

    def __init__(self, uri: str | None, database: str | None, enabled: bool, interval: float = 0.25,
                 steady: bool = False) -> None:
        self.enabled = enabled
        self.steady = steady
        self.uri, self.database, self.interval = uri, database, interval
        self.lock = threading.Lock()
        self.inserted = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_store(cls, store_env: dict[str, str], kind: str | None) -> FerretDBWorkarounds:
        return cls(store_env.get("MONGODB_URI") or None, store_env.get("MONGODB_DATABASE", "sse"),
                   enabled=kind == "ferretdb")

    def writes(self) -> contextlib.AbstractContextManager:
        return self.lock if self.enabled else contextlib.nullcontext()

    def start(self) -> FerretDBWorkarounds:
        if (self.enabled or self.steady) and self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        # A short server selection: while the server is down each attempt fails fast.
        with MongoClient(self.uri, serverSelectionTimeoutMS=300, connectTimeoutMS=300, tz_aware=True) as client:
            collection = client[self.database].messages
            while not self._stop.wait(self.interval):
                with self.lock:
                    try:
                        collection.insert_one({"room": FILLER_ROOM, "text": "keep the tailers awake",
                                               "event": "message", "createdAt": datetime.now(UTC)})
                        self.inserted += 1
                    except PyMongoError:
                        pass  # the server is down: nothing to keep awake


# -- publishing -------------------------------------------------------------------------
@dataclass
class Attempt:
    """One POST /messages and what came of it."""

    room: str
    text: str
    started: float
    duration: float = 0.0
    status: int = 0  # 0: no reply
    retry_after: str | None = None
    body: dict | None = None


@dataclass
class RecordingPublisher:
    """Threads that POST to rooms in turn until stopped, recording every attempt.

    Each POST runs inside ``writes()`` (see :class:`FerretDBWorkarounds`). A POST that
    got no reply may still be inserted by the server after the client gave up; on
    FerretDB the next write waits ``settle_after_no_reply`` so it cannot race that one.
    """

    url: str
    rooms: list[str]
    writes: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    threads: int = 2
    pause: float = 0.005
    timeout: float = 10.0
    settle_after_no_reply: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tag = uuid.uuid4().hex[:6]
        self._workers = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)]

    @property
    def acked(self) -> list[dict]:
        return [attempt.body for attempt in self.attempts if attempt.status == 201]

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for attempt in self.attempts:
            counts[attempt.status] = counts.get(attempt.status, 0) + 1
        return counts

    def start(self) -> RecordingPublisher:
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> RecordingPublisher:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)
        return self

    def post(self, room: str, text: str) -> Attempt:
        """POST one message now (inside ``writes()``) and record it."""
        with self.writes():
            attempt = Attempt(room, text, time.monotonic())
            try:
                reply = requests.post(self.url + "/messages", json={"room": room, "text": text},
                                      timeout=self.timeout)
                attempt.status = reply.status_code
                attempt.retry_after = reply.headers.get("Retry-After")
                attempt.body = reply.json() if reply.headers.get("Content-Type") == "application/json" else None
            except requests.RequestException:
                pass
            attempt.duration = time.monotonic() - attempt.started
            if attempt.status == 0 and self.settle_after_no_reply:
                time.sleep(self.settle_after_no_reply)
        with self._lock:
            self.attempts.append(attempt)
        return attempt

    def _run(self, number: int) -> None:
        count = 0
        while not self._stop.is_set():
            room = self.rooms[(number + count) % len(self.rooms)]
            count += 1
            self.post(room, f"{self._tag}-{number}-{count}")
            if self.pause:
                time.sleep(self.pause)

