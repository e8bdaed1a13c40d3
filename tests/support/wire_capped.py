"""A capped collection served over the wire by MockupDB as a replica-set primary, with faults on demand.

Unlike tests/support/fake_capped.py (the wire tests' double, driven command by command), this one
answers every connection of a live gunicorn by itself: hello as a one-member replica set, sessions
and retryable writes, so PyMongo's own failover paths run.

Real PyMongo talks to it; it answers the commands MongoStore sends (hello,
ping, create, createIndexes, listCollections, find -- plain and tailable --, getMore,
insert, killCursors, endSessions) the way a one-member replica set would,
including the parts the fault tests lean on:

* capped eviction, and ``CappedPositionLost`` (136) for a tailable cursor
  whose last document was evicted;
* retryable writes: an insert repeated with the same ``lsid``/``txnNumber``
  is acknowledged without being applied twice, and a second insert of the
  same ``_id`` (or the same ``idempotencyKey``) is a duplicate key error (11000), as MongoDB does;
* one-shot faults: hang up, or answer an error, on the next matching
  command -- optionally after applying it (the reply is what gets lost).

It is a stand-in for a server for these tests, not a MongoDB: no query
language beyond an equality filter on ``room``, no indexes (but the
idempotency key is kept unique), one collection.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass

from mockupdb import MockupDB

NOT_WRITABLE_PRIMARY = 10107
CAPPED_POSITION_LOST = 136
DUPLICATE_KEY = 11000


@dataclass
class Fault:
    """What to do to the next command called ``command``."""

    command: str
    action: str  # "hangup" or "error"
    code: int = 0
    apply_first: bool = False  # apply the command, then lose the reply


class FakeCappedCollection:
    """The documents and cursors of one capped collection, served by a MockupDB."""

    def __init__(self, max_messages: int, name: str = "messages", set_name: str = "rs0") -> None:
        self.name = name
        self.max_messages = max_messages
        self.set_name = set_name
        self.docs: deque[tuple[int, dict]] = deque()  # (natural position, document)
        self.seq = itertools.count(1)
        self.cursors: dict[int, int] = {}  # cursor id -> natural position of the last document returned
        self.cursor_ids = itertools.count(1000)
        self.txns: set[tuple[bytes, int]] = set()
        self.faults: list[Fault] = []
        self.commands: list[str] = []  # every command name received, in order
        self.inserted: list = []  # _id of every document actually inserted
        self.lock = threading.Lock()
        self.server: MockupDB | None = None

    # -- serving ---------------------------------------------------------------
    def start(self, port: int | None = None) -> MockupDB:
        """Serve the collection (again) on ``port``, or on a free port."""
        self.server = MockupDB(port=port, request_timeout=int(1e6))
        self.server.autoresponds(self._handle)
        self.server.run()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def uri(self, **options: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in {"replicaSet": self.set_name, **options}.items())
        return f"mongodb://{self.server.address_string}/?{query}"

    def inject(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def _take_fault(self, command: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.command == command:
                    self.faults.remove(fault)
                    return fault
        return None

    def _handle(self, request) -> bool:
        command = request.command_name
        name = command.lower() if command else ""
        self.commands.append(command)
        fault = self._take_fault(command) if command else None
        if fault is not None and not fault.apply_first:
            return self._fail(request, fault)
        reply = getattr(self, f"_on_{name}", self._on_unknown)(request)
        if fault is not None:
            return self._fail(request, fault)
        if isinstance(reply, tuple):  # (code, message): a command error
            return request.command_err(reply[0], reply[1])
        return request.replies(reply)

    @staticmethod
    def _fail(request, fault: Fault) -> bool:
        if fault.action == "hangup":
            return request.hangup()
        return request.command_err(fault.code, f"injected fault {fault.code}")

    def insert_directly(self, docs: list[dict]) -> None:
        """Append documents as another writer would (no wire round trip), evicting as capped does."""
        with self.lock:
            for doc in docs:
                self.docs.append((next(self.seq), doc))
                self.inserted.append(doc["_id"])
            while len(self.docs) > self.max_messages:
                self.docs.popleft()

    # -- commands --------------------------------------------------------------
    def _hello(self, request) -> dict:
        return {
            "ismaster": True, "isWritablePrimary": True, "secondary": False,
            "setName": self.set_name, "hosts": [self.server.address_string], "me": self.server.address_string,
            "primary": self.server.address_string, "setVersion": 1,
            "electionId": __import__("bson").ObjectId("7fffffff0000000000000001"),
            "minWireVersion": 0, "maxWireVersion": 17, "logicalSessionTimeoutMinutes": 30,
            "maxBsonObjectSize": 16 * 2**20, "maxMessageSizeBytes": 48 * 2**20, "maxWriteBatchSize": 100_000,
        }

    _on_hello = _on_ismaster = _hello

    def _on_ping(self, request) -> dict:
        return {}

    _on_endsessions = _on_killcursors = _on_ping

    def _on_create(self, request) -> dict:
        return {}

    # The store's unique index on idempotencyKey: acknowledged, not kept (no indexes here).
    _on_createindexes = _on_create

    def _on_listcollections(self, request) -> dict:
        options = {"capped": True, "size": 10**9, "max": self.max_messages}
        batch = [{"name": self.name, "type": "collection", "options": options}]
        return {"cursor": {"id": 0, "ns": f"{request.namespace}.$cmd.listCollections", "firstBatch": batch}}

    def _on_insert(self, request) -> dict | tuple:
        txn = (request.doc["lsid"]["id"], request.doc["txnNumber"]) if "txnNumber" in request.doc else None
        with self.lock:
            if txn is not None and txn in self.txns:
                return {"n": 1}  # a retry of a write already applied: acknowledge, apply nothing
            ids = {doc["_id"] for _, doc in self.docs}
            # The store's unique sparse index on idempotencyKey, the one index played here.
            keys = {doc["idempotencyKey"] for _, doc in self.docs if "idempotencyKey" in doc} - {None}
            for doc in request.doc["documents"]:
                if doc["_id"] in ids or doc.get("idempotencyKey") in keys:
                    return {"n": 0, "writeErrors": [{"index": 0, "code": DUPLICATE_KEY,
                                                     "errmsg": f"E11000 duplicate key: {doc['_id']}"}]}
                self.docs.append((next(self.seq), doc))
                self.inserted.append(doc["_id"])
                while len(self.docs) > self.max_messages:
                    self.docs.popleft()
            if txn is not None:
                self.txns.add(txn)
        return {"n": len(request.doc["documents"])}

    def _on_find(self, request) -> dict | tuple:
        spec = request.doc
        ns = f"{request.namespace}.{self.name}"
        with self.lock:
            docs = list(self.docs)
        descending = spec.get("sort", {}).get("$natural") == -1
        if descending:
            docs.reverse()
        wanted = spec.get("filter", {})
        docs = [(position, doc) for position, doc in docs
                if all(doc.get(key) == value for key, value in wanted.items())]
        if spec.get("limit"):
            docs = docs[:spec["limit"]]
        if spec.get("tailable"):
            cursor_id = next(self.cursor_ids)
            with self.lock:
                self.cursors[cursor_id] = docs[-1][0] if docs else 0
            return {"cursor": {"id": cursor_id, "ns": ns, "firstBatch": [doc for _, doc in docs]}}
        return {"cursor": {"id": 0, "ns": ns, "firstBatch": [doc for _, doc in docs]}}

    def _on_getmore(self, request) -> dict | tuple:
        cursor_id = request.doc["getMore"]
        ns = f"{request.namespace}.{self.name}"
        with self.lock:
            last = self.cursors.get(cursor_id)
            if last is None:
                return 43, "cursor not found"
            if last and self.docs and self.docs[0][0] > last + 1 and last not in {p for p, _ in self.docs}:
                del self.cursors[cursor_id]
                return CAPPED_POSITION_LOST, "CollectionScan died due to position in capped collection being deleted"
            batch = [(position, doc) for position, doc in self.docs if position > last]
            if batch:
                self.cursors[cursor_id] = batch[-1][0]
        if not batch:
            time.sleep(0.01)  # a short stand-in for awaitData, so an idle tailer does not spin
        return {"cursor": {"id": cursor_id, "ns": ns, "nextBatch": [doc for _, doc in batch]}}

    def _on_unknown(self, request) -> tuple:
        return 59, f"no such command in the fake: {request.command_name}"
