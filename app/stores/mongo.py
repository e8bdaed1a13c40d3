"""The production store: a MongoDB capped collection, tailed by one cursor per worker.

Order -- the trap this module avoids: ObjectIds are made by each client
process, so across several publishing workers they are *not* in insertion
order, and resuming with ``{_id: {$gt: last}}`` can silently skip a message
another worker inserted a moment earlier with a smaller id. A capped
collection's natural order *is* its insertion order (the same on every
replica set member, since the oplog replays inserts in order), so every read
here walks natural order and resumes by *finding* the last id in it and
taking what follows. The window is bounded (CAPPED_SIZE_BYTES /
CAPPED_MAX_MESSAGES), so that walk is bounded too.

Positions are worker-local integers handed out in the order this worker's
follower yields documents.

Cost: a tailable cursor on a capped collection always starts at the oldest
document, so every (re)opening of the tailer's cursor walks the window on the
server -- once per worker at start and after a failure, never per client:
joins and resumes are served from the worker's in-memory window
(``app/delivery/window.py``). ``read_rooms`` walks the asked rooms' documents
for history only while that window is not warm, or lags behind the store.

Failures, and what each becomes:
* tailable cursor dead at start (empty collection) or killed -> reopen it
  from the last document read, sleeping with a growing delay between tries
  so an empty collection is never polled in a busy loop;
* ``CappedPositionLost`` or the last document no longer found -> PositionLost
  (the tailer empties the worker's window and warms it again, and every
  stream re-joins from it: resumed exactly, or sent ``reset``).
  PyMongo 4 does not raise CappedPositionLost, CursorNotFound or CursorKilled
  from a tailable cursor: it ends the cursor quietly (``cursor.alive`` turns
  False; see pymongo ``cursor_shared._CURSOR_CLOSED_ERRORS``). So a wrap shows
  up here as a dead cursor whose reopening cannot find ``last`` again within
  the first ``max_messages`` documents (unbounded, under steady inserts, a walk
  to an evicted ``last`` never ends). The error codes (``CURSOR_GONE``,
  ``CAPPED_POSITION_LOST``) are still handled, for a driver that raises them;
* network errors, primary step-down -> StoreUnavailable (the tailer retries
  with backoff from the last message it delivered). Every operation turns
  PyMongo's errors into it in one place, ``_unavailable_on_error``.

Idempotency keys (``append_once``) are a field of the message's document,
``idempotencyKey``, with a unique *sparse* index on it: documents without the
field (messages published without a key) are left out of the index, and
a key is unique among the documents in the window (eviction removes a
document's index entry with it). The insert is the check: a second insert
with the key fails with a duplicate key error, on whichever worker or node,
and the loser reads the winner's document back. Sparse, not partial
(``partialFilterExpression``, MongoDB's newer way), because FerretDB 1.24 does
not implement partial indexes; for a field that is a string or absent the
two mean the same.

Presence (see ``base.py``) lives in a plain collection beside the capped one,
one document per worker: ``{_id: "<host>:<pid>:<random>", rooms: [{room,
streams, anonymous}, ...], otherRooms, otherStreams, subs: [{room, sub,
streams}, ...], otherSubs, expiresAt}``, naming at most ``PRESENCE_MAX_ROOMS``
rooms and ``PRESENCE_MAX_IDENTITIES`` identities (``subs``, issue 16): ``presence_document_max_bytes`` works out the
largest such document, and the store refuses to start where it could pass
16 MB. Rooms are a list, not a ``{<room>: streams}`` object, because a room
name may contain ``.``, which a field name cannot carry (FerretDB refuses it
in any key; MongoDB reads it as a path in updates); and a list of documents,
not of pairs, because FerretDB 1.24 does not store nested arrays. Readers
filter on ``expiresAt`` themselves (the rule both stores keep is in
``base.py``): MongoDB's TTL monitor runs once a minute (and FerretDB 1.24 has
no TTL indexes), so it could only ever be the clean-up, and the clean-up is a
``delete_many`` each worker runs once a minute instead. ``expiresAt`` is on
the *database server's* clock (each worker learns its offset from ``hello``'s
``localTime`` once a minute), so nodes whose clocks disagree still agree on
what has expired.

Message expiry (``MESSAGE_TTL_SECONDS``, ``app/delivery/expiry.py``) reads
``createdAt``, which ``append`` stamps on that same server clock (the offset
last measured: no round trip per publish), and ``store_time`` is that clock
too: every node judges a message's age alike. Expired documents are filtered
when read, never deleted: docs/mongodb.md#message-expiry says why.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import bson
import gevent
import gevent.event
from bson import ObjectId
from bson.errors import BSONError
from pymongo import MongoClient, ReadPreference
from pymongo.cursor import CursorType
from pymongo.errors import (
    AutoReconnect,
    CollectionInvalid,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from .base import (
    MAX_ROOM_BYTES,
    MAX_SUBJECT_BYTES,
    Backlog,
    FeedBatch,
    Message,
    PositionLost,
    PresenceReport,
    Publication,
    Store,
    StoreMisconfigured,
    StoreUnavailable,
    WriteOutcomeUnknown,
    presence_expiry,
    presence_sweep_before,
    sum_presence,
)
from .ids import parse_object_id

log = logging.getLogger(__name__)

CAPPED_POSITION_LOST = 136
NAMESPACE_EXISTS = 48
INDEX_CONFLICTS = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict
IDEMPOTENCY_FIELD = "idempotencyKey"
IDEMPOTENCY_INDEX = "idempotencyKey_unique"
CURSOR_GONE = {43, 175, 237}  # CursorNotFound, QueryPlanKilled, CursorKilled
_FIELDS = {"room": 1, "text": 1, "event": 1, "createdAt": 1}
# Each worker looks this often for presence documents of workers that died
# without withdrawing (see presence_sweep_before).
_PRESENCE_SWEEP_SECONDS = 60.0
_CLOCK_CHECK_SECONDS = 60.0

# MongoDB's maxBsonObjectSize: no document may be larger.
BSON_DOCUMENT_LIMIT = 16 * 1024 * 1024
# A worker id is a host name (cut to 200 characters), a pid and 8 hex digits.
MAX_WORKER_ID_BYTES = 256


@contextmanager
def _unavailable_on_error(what: str, *, also: tuple[type[Exception], ...] = (),
                          position_lost: bool = False) -> Iterator[None]:
    """Raise any PyMongoError (and ``also``) from the block as StoreUnavailable, its text after ``what``.

    With ``position_lost``, a CappedPositionLost error becomes PositionLost
    instead: for the follower, whose place the capped collection overwrote.
    """
    try:
        yield
    except (PyMongoError, *also) as exc:
        if position_lost and isinstance(exc, OperationFailure) and exc.code == CAPPED_POSITION_LOST:
            raise PositionLost(f"MongoDB: {exc}") from exc
        raise StoreUnavailable(f"{what}: {exc}") from exc


def presence_document_max_bytes(max_rooms: int, max_identities: int = 0) -> int:
    """Return the size of the largest presence document a worker naming ``max_rooms`` rooms can write.

    Worked out from BSON's own encoding of the worst case: every room name
    as long as a name may be, every identity as long as one named may be
    (``MAX_SUBJECT_BYTES``), every count as wide as BSON stores one, every
    array index as long as the last one.
    """
    largest_count = 2**63 - 1  # int64: wider than any count a worker has
    room = len(bson.encode({"room": "r" * MAX_ROOM_BYTES, "streams": largest_count, "anonymous": largest_count}))
    sub = len(bson.encode({"room": "r" * MAX_ROOM_BYTES, "sub": "s" * MAX_SUBJECT_BYTES, "streams": largest_count}))

    def array(elements: int, element_bytes: int) -> int:
        # An element is a type byte, its index as a NUL-terminated key, then the value.
        return elements * (1 + len(str(max(elements - 1, 0))) + 1 + element_bytes)

    frame = len(bson.encode({"_id": "w" * MAX_WORKER_ID_BYTES, "rooms": [], "otherRooms": largest_count,
                             "otherStreams": largest_count, "subs": [], "otherSubs": largest_count,
                             "expiresAt": datetime.now(UTC)}))
    return frame + array(max_rooms, room) + array(max_identities, sub)


class MongoStore(Store):
    """Messages in a capped collection; one tailable cursor per worker follows it."""

    def __init__(self, uri: str, database: str, *, max_bytes: int, max_messages: int,
                 collection: str = "messages", presence_collection: str = "presence", await_ms: int = 1000,
                 dead_cursor_wait: tuple[float, float] = (0.05, 1.0), presence_max_rooms: int = 1000,
                 presence_max_identities: int = 1000) -> None:
        # connect=False: nothing happens on the network until first use, which
        # is after gunicorn forked the worker and gevent patched it.
        self.client = MongoClient(
            uri, connect=False, tz_aware=True, appname="sse-rooms",
            serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, socketTimeoutMS=await_ms + 10_000,
            retryWrites=True,
        )
        self.collection = self.client[database][collection]
        self.presence_collection = self.client[database][presence_collection]
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.await_ms = await_ms
        self.dead_cursor_wait = dead_cursor_wait
        self._prepared = False
        self._counter = itertools.count(1)
        self._clock_offset = timedelta(0)  # the server's clock minus ours
        self._clock_checked_at = float("-inf")
        self._presence_swept_at = float("-inf")
        self.presence_max_rooms = presence_max_rooms
        self.presence_max_identities = presence_max_identities
        # Checked here, before any write: a worker's document can never reach MongoDB's limit.
        worst_case = presence_document_max_bytes(presence_max_rooms, presence_max_identities)
        if worst_case > BSON_DOCUMENT_LIMIT:
            raise StoreMisconfigured(f"PRESENCE_MAX_ROOMS={presence_max_rooms} and PRESENCE_MAX_IDENTITIES="
                                     f"{presence_max_identities} allow presence documents of up to "
                                     f"{worst_case:,} bytes, past MongoDB's {BSON_DOCUMENT_LIMIT:,}")

    # -- set-up ----------------------------------------------------------------
    def prepare(self) -> None:
        """Create the capped collection if missing; refuse to run on an uncapped one."""
        if self._prepared:
            return
        database, name = self.collection.database, self.collection.name
        with _unavailable_on_error("MongoDB"):
            try:
                database.create_collection(name, capped=True, size=self.max_bytes, max=self.max_messages)
                log.info("created capped collection %s (size=%d, max=%d)", name, self.max_bytes, self.max_messages)
            except CollectionInvalid:
                pass  # it exists
            except OperationFailure as exc:
                # Another worker created it between our existence check and our
                # create: the options check below still decides.
                if exc.code != NAMESPACE_EXISTS:
                    raise
            options = self.collection.options()
        if not options.get("capped"):
            raise StoreMisconfigured(
                f"collection {database.name}.{name} exists but is not capped; convert it with "
                f"db.runCommand({{convertToCapped: '{name}', size: {self.max_bytes}}}) or drop it"
            )
        self._ensure_idempotency_index()
        self._prepared = True

    def _ensure_idempotency_index(self) -> None:
        """Create the unique index that keeps idempotency keys unique (nothing happens if it exists)."""
        with _unavailable_on_error("MongoDB"):
            try:
                self.collection.create_index(IDEMPOTENCY_FIELD, name=IDEMPOTENCY_INDEX, unique=True, sparse=True)
            except OperationFailure as exc:
                if exc.code not in INDEX_CONFLICTS:
                    raise
                raise StoreMisconfigured(
                    f"collection {self.collection.full_name} has an index on {IDEMPOTENCY_FIELD} or named "
                    f"{IDEMPOTENCY_INDEX} that is not {{unique: true, sparse: true}}; drop it "
                    f"(the app makes its own): {exc}") from exc

    @staticmethod
    def _message(doc: dict) -> Message:
        return Message(id=str(doc["_id"]), room=doc["room"], text=doc["text"], event=doc["event"],
                       created_at=doc["createdAt"])

    # -- writing ---------------------------------------------------------------
    def append(self, room: str, text: str, event: str) -> Message:
        """Insert a message; a retry after a lost reply never stores it twice."""
        return self._insert(self._document(room, text, event)).message

    def append_once(self, room: str, text: str, event: str, idempotency_key: str) -> Publication:
        """Insert a message under a key no document has, or return the document that has it."""
        return self._insert({**self._document(room, text, event), IDEMPOTENCY_FIELD: idempotency_key})

    def _document(self, room: str, text: str, event: str) -> dict:
        self.prepare()
        # On the server's clock as last measured (presence measures it): what expiry judges ages by.
        now = datetime.now(UTC) + self._clock_offset
        # MongoDB keeps milliseconds: cut now so the reply equals what is stored.
        created = now.replace(microsecond=now.microsecond // 1000 * 1000)
        return {"_id": ObjectId(), "room": room, "text": text, "event": event, "createdAt": created}

    def _insert(self, doc: dict) -> Publication:
        self.prepare()
        with _unavailable_on_error("MongoDB insert failed"):
            try:
                self.collection.insert_one(doc)
            except ServerSelectionTimeoutError:
                raise  # no server was reached, so nothing can have landed: retrying only doubles the wait
            except DuplicateKeyError:
                if IDEMPOTENCY_FIELD not in doc:
                    raise
                # A new _id cannot collide: the key did, so another insert holds it.
                return self._holder_of_key(doc)
            except AutoReconnect:
                # The insert may have been applied before the connection broke.
                # Retrying with the same _id is idempotent: a duplicate key
                # means the first try landed -- or, with a key, that another
                # insert holds it. (Replica sets also retry on their own
                # through retryWrites; a standalone server does not.)
                try:
                    self.collection.insert_one(doc)
                except DuplicateKeyError:
                    if IDEMPOTENCY_FIELD in doc:
                        return self._holder_of_key(doc)
                except PyMongoError as exc:
                    raise WriteOutcomeUnknown(f"MongoDB insert unconfirmed: {exc}", str(doc["_id"])) from exc
        return Publication(self._message(doc), replayed=False)

    def _holder_of_key(self, doc: dict) -> Publication:
        """Return the stored message that holds ``doc``'s key (a replay unless it is ``doc`` itself)."""
        # From the primary, whatever readPreference the URI names: the index
        # that refused the insert is the primary's, and a secondary may not
        # have the holder yet.
        primary = self.collection.with_options(read_preference=ReadPreference.PRIMARY)
        held = primary.find_one({IDEMPOTENCY_FIELD: doc[IDEMPOTENCY_FIELD]}, _FIELDS)
        if held is None:
            # Evicted between the refusal and this read: the key is free again,
            # and a retry stores the message anew.
            raise StoreUnavailable("MongoDB: the message holding this idempotency key was evicted as it was read")
        return Publication(self._message(held), replayed=held["_id"] != doc["_id"])

    # -- reading ---------------------------------------------------------------
    def read_rooms(self, rooms: Sequence[str], after_id: str | None = None, limit: int | None = None) -> Backlog:
        """Return the rooms' messages after ``after_id`` in natural order, or all with a reset reason."""
        self.prepare()
        target = None
        if after_id is not None:
            target = parse_object_id(after_id)
            if target is None:
                return Backlog.resume_point_not_found(self.read_rooms(rooms, None, limit).messages)
        query = {"room": rooms[0]} if len(rooms) == 1 else {"room": {"$in": list(rooms)}}
        before: list[Message] = []
        after: list[Message] = []
        found = target is None
        with _unavailable_on_error("MongoDB read failed"):
            for doc in self.collection.find(query, _FIELDS).sort("$natural", 1):
                if found:
                    after.append(self._message(doc))
                    if limit is not None and len(after) >= limit:
                        break
                elif doc["_id"] == target:
                    found = True
                else:
                    before.append(self._message(doc))
        if found:
            return Backlog(after)
        # The walk covers the asked rooms only: another room's id is simply not found.
        return Backlog.resume_point_not_found(before[:limit])

    def read_rooms_before(self, rooms: Sequence[str], before_id: str, limit: int) -> Backlog:
        """Return up to ``limit`` of the rooms' messages just before ``before_id`` in natural order, or the newest.

        Walked from the newest document back (ids cannot be sought: see the
        module docstring), so it costs what lies after ``before_id``, plus the page.
        """
        self.prepare()
        target = parse_object_id(before_id)
        query = {"room": rooms[0]} if len(rooms) == 1 else {"room": {"$in": list(rooms)}}
        newest: list[Message] = []  # the page if the id is not found
        page: list[Message] = []
        found = False
        with _unavailable_on_error("MongoDB read failed"):
            cursor = self.collection.find(query, _FIELDS).sort("$natural", -1)
            if target is None:
                cursor = cursor.limit(limit)
            for doc in cursor:
                if found:
                    page.append(self._message(doc))
                    if len(page) >= limit:
                        break
                elif doc["_id"] == target:
                    found = True
                elif len(newest) < limit:
                    newest.append(self._message(doc))
        if found:
            return Backlog(page[::-1])
        return Backlog.resume_point_not_found(newest[::-1])

    def ping(self) -> None:
        # Database.command goes to the primary (its default read preference):
        # an answer means a server that takes writes is reachable.
        with _unavailable_on_error("MongoDB ping failed"):
            self.client.admin.command("ping")

    def newest_id(self) -> str | None:
        self.prepare()
        with _unavailable_on_error("MongoDB read failed"):
            newest = self.collection.find_one({}, {"_id": 1}, sort=[("$natural", -1)])
        return None if newest is None else str(newest["_id"])

    def contains(self, message_id: str) -> bool:
        object_id = parse_object_id(message_id)
        if object_id is None:
            return False
        self.prepare()
        with _unavailable_on_error("MongoDB read failed"):
            # By _id: the index every collection has, capped ones included.
            return self.collection.find_one({"_id": object_id}, {"_id": 1}) is not None

    # -- presence --------------------------------------------------------------
    def publish_presence(self, worker_id: str, report: PresenceReport, ttl: float) -> None:
        """Replace this worker's document; once a minute, delete those that expired long ago."""
        subs = [{"room": room, "sub": sub, "streams": streams}
                for room, named in report.subs.items() for sub, streams in named.items()]
        # Presence bounds what it reports; this keeps the 16 MB proof true whoever calls.
        if len(report.rooms) > self.presence_max_rooms:
            raise ValueError(f"a presence entry may name at most {self.presence_max_rooms} rooms "
                             f"(PRESENCE_MAX_ROOMS), not {len(report.rooms)}")
        if len(subs) > self.presence_max_identities or any(
                len(entry["sub"].encode()) > MAX_SUBJECT_BYTES for entry in subs):
            raise ValueError(f"a presence entry may name at most {self.presence_max_identities} identities "
                             f"(PRESENCE_MAX_IDENTITIES) of at most {MAX_SUBJECT_BYTES} bytes")
        # DocumentTooLarge is a BSONError, not a PyMongoError.
        with _unavailable_on_error("MongoDB presence write failed", also=(BSONError,)):
            now = self._server_now()
            self.presence_collection.replace_one(
                {"_id": worker_id},
                # Identities in a list of their own, beside rooms: FerretDB 1.24 stores no arrays in arrays,
                # and a worker from before issue 16 reads rooms as it always did.
                {"rooms": [{"room": room, "streams": streams, "anonymous": report.anonymous.get(room, 0)}
                           for room, streams in report.rooms.items()],
                 "otherRooms": report.other_rooms, "otherStreams": report.other_streams,
                 "subs": subs, "otherSubs": report.other_subs,
                 "expiresAt": presence_expiry(now, ttl)},
                upsert=True,
            )
            if time.monotonic() - self._presence_swept_at > _PRESENCE_SWEEP_SECONDS:
                self._presence_swept_at = time.monotonic()
                self.presence_collection.delete_many({"expiresAt": {"$lt": presence_sweep_before(now)}})

    def refresh_presence(self, worker_id: str, ttl: float) -> bool:
        """Move this worker's expiry on, not sending its rooms again; False if its document is gone."""
        with _unavailable_on_error("MongoDB presence write failed"):
            expires_at = presence_expiry(self._server_now(), ttl)
            return self.presence_collection.update_one(
                {"_id": worker_id}, {"$set": {"expiresAt": expires_at}}).matched_count > 0

    def withdraw_presence(self, worker_id: str) -> None:
        with _unavailable_on_error("MongoDB presence write failed"):
            self.presence_collection.delete_one({"_id": worker_id})

    def presence_counts(self, exclude: str | None = None) -> PresenceReport:
        with _unavailable_on_error("MongoDB presence read failed"):
            query: dict = {"expiresAt": {"$gt": self._server_now()}}
            if exclude is not None:
                query["_id"] = {"$ne": exclude}
            docs = list(self.presence_collection.find(
                query, {"rooms": 1, "otherRooms": 1, "otherStreams": 1, "subs": 1, "otherSubs": 1}))
        # The fields after rooms are absent from the documents of workers that ran before they were added.
        return sum_presence((
            ((entry["room"], entry["streams"]) for entry in doc["rooms"]),
            doc.get("otherRooms", 0), doc.get("otherStreams", 0),
            ((entry["room"], entry["sub"], entry["streams"]) for entry in doc.get("subs", ())),
            ((entry["room"], entry["anonymous"]) for entry in doc["rooms"] if entry.get("anonymous")),
            doc.get("otherSubs", 0),
        ) for doc in docs)

    def store_time(self) -> float:
        """Return now on the database server's clock as last measured (no round trip): ``createdAt``'s clock."""
        return (datetime.now(UTC) + self._clock_offset).timestamp()

    def _server_now(self) -> datetime:
        """Return the time on the database server's clock, which every node's workers share."""
        if time.monotonic() - self._clock_checked_at > _CLOCK_CHECK_SECONDS:
            sent = datetime.now(UTC)
            server_time = self.client.admin.command("hello").get("localTime")
            received = datetime.now(UTC)
            self._clock_checked_at = time.monotonic()
            if server_time is not None:
                # Commands decode dates naive (UTC) whatever the client's tz_aware.
                server_time = server_time.replace(tzinfo=UTC)
                self._clock_offset = server_time - (sent + (received - sent) / 2)
        return datetime.now(UTC) + self._clock_offset

    # -- following -------------------------------------------------------------
    def follow(self, after_id: str | None, wakeup: gevent.event.Event) -> Iterator[FeedBatch]:
        """Yield documents in natural order, forever, after ``after_id`` (None: from the oldest)."""
        with _unavailable_on_error("MongoDB tail failed", position_lost=True):
            self.prepare()
            last = None if after_id is None else parse_object_id(after_id)  # None: the whole window
            if after_id is not None and last is None:
                raise PositionLost(f"{after_id!r} is not from this store")
            wait = self.dead_cursor_wait[0]
            while True:
                for doc in self._tail_after(last):
                    if doc is None:
                        yield []  # caught up
                        continue
                    last = doc["_id"]
                    wait = self.dead_cursor_wait[0]
                    yield [(next(self._counter), self._message(doc))]
                # The cursor died: the collection was empty, or the server
                # killed it. Everything up to `last` was read, so we are caught
                # up; reopen after a growing pause, never in a busy loop.
                yield []
                gevent.sleep(wait)
                wait = min(wait * 2, self.dead_cursor_wait[1])

    def _tail_after(self, last: ObjectId | None) -> Iterator[dict | None]:
        """Yield the documents after ``last`` from one tailable cursor until it dies; None when caught up."""
        # max_await_time_ms is a cursor setting (sent as getMore's maxTimeMS),
        # not an argument of find().
        cursor = self.collection.find({}, _FIELDS, cursor_type=CursorType.TAILABLE_AWAIT)
        cursor.max_await_time_ms(self.await_ms)
        found = last is None
        skipped = 0
        try:
            while cursor.alive:
                try:
                    # Cursor has no try_next() (only CommandCursor does); next()
                    # raises StopIteration when an awaitData getMore came back
                    # empty while the cursor is still alive.
                    doc = next(cursor, None)
                except OperationFailure as exc:
                    if exc.code in CURSOR_GONE:
                        return  # killed: reopened from `last` by the caller
                    raise
                if doc is None:
                    if not found:
                        raise PositionLost(f"{last} is no longer in the capped collection")
                    yield None  # nothing new within await_ms: ask again
                elif found:
                    yield doc
                else:
                    found = doc["_id"] == last  # re-reading up to where we were: deliver nothing
                    skipped += 1
                    if not found and skipped >= self.max_messages:
                        # The collection holds at most max_messages documents, so
                        # a `last` still there lies within the first max_messages
                        # of this walk. Under steady inserts a walk to an evicted
                        # one would otherwise never end.
                        raise PositionLost(f"{last} is no longer in the capped collection")
            if not found:
                raise PositionLost(f"{last} is no longer in the capped collection")
        finally:
            cursor.close()

    def close(self) -> None:
        self.client.close()
