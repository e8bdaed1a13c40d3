"""A capped collection played by MockupDB handlers: a test double for MongoDB, not MongoDB.

It answers the handful of commands MongoStore sends (listCollections, create,
createIndexes, insert, find, getMore, killCursors, ping) from a Python list kept in insertion
order, the way a capped collection keeps natural order, and evicts the oldest
documents past ``max_messages``. Tailable cursors remember the record they
stopped at, as the server does: if that record was evicted, getMore fails with
CappedPositionLost (136). Faults for the next getMore can be queued.

What it does not do: sizes in bytes, indexes, filters other than equality on
``room``, sessions, replication. Anything it is not asked to answer falls
through to the test's own ``receives()``.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable

from mockupdb import MockupDB


class FakeCappedCollection:
    """One capped collection, served by ``server`` until it stops."""

    def __init__(self, server: MockupDB, *, database: str = "sse", name: str = "messages",
                 max_messages: int = 1000) -> None:
        self.ns = f"{database}.{name}"
        self.name = name
        self.max_messages = max_messages
        self._records: list[tuple[int, dict]] = []  # (record id, document), natural order
        self._record_ids = itertools.count(1)
        self._cursor_ids = itertools.count(1000)
        self._cursors: dict[int, int] = {}  # cursor id -> last record id returned (0: none yet)
        self._changed = threading.Condition()
        self._getmore_faults: deque[Callable] = deque()
        self.tail_finds: list[float] = []  # monotonic time of each tailable find
        self.getmore_faults_fired = 0
        server.autoresponds(self._handle)

    # -- what a test does to the collection ------------------------------------
    def add(self, *documents: dict) -> None:
        """Insert documents (as another process would) and wake waiting getMores."""
        with self._changed:
            for document in documents:
                self._records.append((next(self._record_ids), document))
            del self._records[:max(0, len(self._records) - self.max_messages)]
            self._changed.notify_all()

    def evict(self, count: int) -> None:
        """Drop the oldest ``count`` documents, as a capped collection does when it wraps."""
        with self._changed:
            del self._records[:count]

    @property
    def documents(self) -> list[dict]:
        with self._changed:
            return [document for _, document in self._records]

    def fail_next_getmore(self, fault: Callable) -> None:
        """Answer the next getMore with ``fault(request)`` (e.g. ``lambda r: r.hangup()``)."""
        self._getmore_faults.append(fault)

    # -- the wire ---------------------------------------------------------------
    def _handle(self, request) -> bool:
        name = request.command_name
        handler = getattr(self, f"_on_{name}", None)
        if handler is None or name in ("find", "insert", "create") and request[name] != self.name:
            return False  # not ours: the next responder or the test's receives() answers it
        return handler(request)

    def _on_ping(self, request) -> bool:
        return request.ok()

    def _on_createIndexes(self, request) -> bool:  # noqa: N802 -- the command's name
        return request["createIndexes"] == self.name and request.ok()  # acknowledged, not kept

    def _on_listCollections(self, request) -> bool:  # noqa: N802 -- the command's name
        entry = {"name": self.name, "type": "collection", "options": {"capped": True, "max": self.max_messages}}
        return request.ok(cursor={"id": 0, "ns": f"{self.ns.split('.')[0]}.$cmd.listCollections",
                                  "firstBatch": [entry]})

    def _on_create(self, request) -> bool:
        return request.command_err(code=48, errmsg=f"Collection {self.ns} already exists.", codeName="NamespaceExists")

    def _on_insert(self, request) -> bool:
        with self._changed:
            known = {document["_id"] for _, document in self._records}
        fresh = [document for document in request["documents"] if document["_id"] not in known]
        self.add(*fresh)
        if len(fresh) < len(request["documents"]):
            return request.ok(n=len(fresh), writeErrors=[{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}])
        return request.ok(n=len(fresh))

    def _on_killCursors(self, request) -> bool:  # noqa: N802 -- the command's name
        with self._changed:
            for cursor_id in request["cursors"]:
                self._cursors.pop(cursor_id, None)
        return request.ok(cursorsKilled=request["cursors"])

    def _on_find(self, request) -> bool:
        with self._changed:
            records = list(self._records)
        if request.doc.get("tailable"):
            self.tail_finds.append(time.monotonic())
            if not records:
                return request.ok(cursor={"id": 0, "ns": self.ns, "firstBatch": []})  # dead at start
            cursor_id = next(self._cursor_ids)
            with self._changed:
                self._cursors[cursor_id] = records[-1][0]
            return request.ok(cursor={"id": cursor_id, "ns": self.ns, "firstBatch": [d for _, d in records]})
        room = request["filter"].get("room")
        documents = [d for _, d in records if room is None or d["room"] == room]
        if request.doc.get("sort", {}).get("$natural") == -1:
            documents.reverse()
        if request.doc.get("limit"):
            documents = documents[:request["limit"]]
        return request.ok(cursor={"id": 0, "ns": self.ns, "firstBatch": documents})

    def _on_getMore(self, request) -> bool:  # noqa: N802 -- the command's name
        if self._getmore_faults:
            self.getmore_faults_fired += 1
            return self._getmore_faults.popleft()(request)
        cursor_id = request["getMore"]
        deadline = time.monotonic() + request.doc.get("maxTimeMS", 1000) / 1000
        with self._changed:
            if cursor_id not in self._cursors:
                return request.command_err(code=43, errmsg=f"cursor id {cursor_id} not found",
                                           codeName="CursorNotFound")
            while True:
                last = self._cursors[cursor_id]
                record_ids = [record_id for record_id, _ in self._records]
                if last not in record_ids:
                    del self._cursors[cursor_id]
                    return request.command_err(code=136, errmsg="CollectionScan died due to position in capped"
                                               " collection being deleted", codeName="CappedPositionLost")
                batch = self._records[record_ids.index(last) + 1:]
                remaining = deadline - time.monotonic()
                if batch or remaining <= 0:
                    break
                self._changed.wait(remaining)
            if batch:
                self._cursors[cursor_id] = batch[-1][0]
        return request.ok(cursor={"id": cursor_id, "ns": self.ns, "nextBatch": [d for _, d in batch]})
