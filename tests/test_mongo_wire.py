"""MongoStore at the wire level: real PyMongo talking to MockupDB, replies scripted here.

No MongoDB server runs here. MockupDB (MongoDB's own scriptable wire-protocol
server) receives the exact commands PyMongo sends, so these tests pin down
what the store asks for (tailable + awaitData, maxTimeMS on getMore, $natural
order, filters, capped-creation options) and how it behaves on each reply.
What a real server would *do* with those commands (evict, kill cursors, step
down) is played here by scripted replies; that part is checked against a real
server only by the store contract suite when MONGODB_URI is set (CI).

Design note the tests follow: each worker has ONE tailer that tails the whole
collection with an empty filter and routes by room in the hub; the room filter
is on the backlog read (``find {room}`` sorted ``$natural``).
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import gevent.event
import pytest
from bson import ObjectId
from mockupdb import MockupDB, OpMsg, go

from app.stores.base import (
    UNKNOWN_ID_REASON,
    Message,
    PositionLost,
    StoreMisconfigured,
    StoreUnavailable,
    WriteOutcomeUnknown,
)
from app.stores.mongo import MongoStore
from tests.support.fake_capped import FakeCappedCollection
from tests.support.live import ROOT
from tests.support.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DB = "sse"
WIRE_VERSION_7_0 = 21
STANDALONE = {"ismaster": True, "isWritablePrimary": True, "minWireVersion": 0,
              "maxWireVersion": WIRE_VERSION_7_0}
MAX_BYTES = 65_536
MAX_MESSAGES = 100
AWAIT_MS = 200
CAPPED = {"name": "messages", "type": "collection",
          "options": {"capped": True, "size": MAX_BYTES, "max": MAX_MESSAGES}}
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def answer_hello(server: MockupDB, hello: dict) -> None:
    """Answer the handshake and monitoring commands the way a server would."""
    # A string matcher also compares the command's value ({"killCursors": 1}),
    # so match these by name only.
    server.autoresponds(lambda request: request.command_name in {"endSessions", "killCursors"} and request.ok())
    server.autoresponds("ismaster", hello)
    server.autoresponds("hello", hello)


@pytest.fixture
def server() -> Iterator[MockupDB]:
    mock = MockupDB(request_timeout=5)
    mock.run()
    answer_hello(mock, STANDALONE)
    yield mock
    mock.stop()


def open_store(server: MockupDB, **options) -> MongoStore:
    options = {"max_bytes": MAX_BYTES, "max_messages": MAX_MESSAGES, "await_ms": AWAIT_MS, **options}
    return MongoStore(server.uri, DB, **options)


@pytest.fixture
def store(server: MockupDB) -> Iterator[MongoStore]:
    """A store whose collection already exists, capped (prepare() answered by an autoresponder)."""
    responder = server.autoresponds(OpMsg("listCollections"), cursor={"id": 0, "ns": f"{DB}.$cmd.listCollections",
                                                                      "firstBatch": [CAPPED]})
    indexes = server.autoresponds(OpMsg("createIndexes", "messages"))
    store = open_store(server)
    store.prepare()
    responder.cancel()
    indexes.cancel()
    yield store
    store.close()


def doc(room: str = "r", text: str = "hi", *, oid: ObjectId | None = None, seconds: int = 0) -> dict:
    """Return a stored message document as the server would send it back."""
    return {"_id": oid or ObjectId(), "room": room, "text": text, "event": "message",
            "createdAt": T0 + timedelta(seconds=seconds)}


def first_batch(docs: list[dict], cursor_id: int = 0) -> dict:
    return {"cursor": {"id": cursor_id, "ns": f"{DB}.messages", "firstBatch": docs}}


def next_batch(docs: list[dict], cursor_id: int) -> dict:
    return {"cursor": {"id": cursor_id, "ns": f"{DB}.messages", "nextBatch": docs}}


class Follower:
    """Run ``store.follow`` in a thread, collecting what it yields and how it ends."""

    def __init__(self, store: MongoStore, after_id: str | None) -> None:
        self.store = store
        self.after_id = after_id
        self.delivered: queue.Queue[tuple[int, Message]] = queue.Queue()
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for batch in self.store.follow(self.after_id, gevent.event.Event()):
                for entry in batch:
                    self.delivered.put(entry)
        except BaseException as exc:  # noqa: B036 -- the test inspects whatever ended it
            self.error = exc
        finally:
            self.done.set()

    def take(self, count: int, timeout: float = 5.0) -> list[tuple[int, Message]]:
        return [self.delivered.get(timeout=timeout) for _ in range(count)]

    def ended_with(self, timeout: float = 5.0) -> BaseException | None:
        assert self.done.wait(timeout), "follow() did not end"
        return self.error


# Parts of a command that PyMongo adds for routing and sessions, not chosen by the store.
ENVELOPE = {"$db", "lsid", "$clusterTime", "$readPreference", "txnNumber"}


def command(request) -> dict:
    """Return the command a request carries, without PyMongo's envelope fields."""
    return {key: value for key, value in request.doc.items() if key not in ENVELOPE}


def receive(server: MockupDB, name: str, expected: dict):
    """Pop the next request, assert it is exactly ``expected`` (less the envelope) and return it."""
    request = server.receives()
    assert request.command_name == name, request
    assert command(request) == expected
    return request


def hang_up_every(server: MockupDB, name: str) -> list:
    """Close the connection on every ``name`` command from now on; return the list of those received."""
    received: list = []

    def hang_up(request) -> bool:
        if request.command_name != name:
            return False  # not ours: the next responder or the test answers it
        received.append(request)
        return request.hangup()

    server.autoresponds(hang_up)
    return received


TAIL_FIND = {"find": "messages", "filter": {}, "projection": {"room": 1, "text": 1, "event": 1, "createdAt": 1},
             "tailable": True, "awaitData": True}
NEWEST_LOOKUP = {"find": "messages", "filter": {}, "projection": {"_id": 1}, "sort": {"$natural": -1},
                 "limit": 1, "singleBatch": True}


def get_more(cursor_id: int) -> dict:
    return {"getMore": cursor_id, "collection": "messages", "maxTimeMS": AWAIT_MS}


# -- follow(): the one tailable cursor per worker -----------------------------

def test_the_tail_find_sends_the_await_time_as_getmores_maxtimems_not_as_a_find_argument(server, store):
    """find() has no max_await_time_ms argument: it is set on the cursor and sent as getMore's maxTimeMS."""
    newest = doc(text="already there")
    follower = Follower(store, str(newest["_id"]))
    receive(server, "find", TAIL_FIND).replies(first_batch([newest], cursor_id=42))
    receive(server, "getMore", get_more(42)).replies(next_batch([], 42))
    assert follower.delivered.empty() and follower.error is None


def test_an_empty_awaitdata_batch_reads_as_nothing_yet(server, store):
    """PyMongo's Cursor has no try_next(): an empty awaitData batch must read as "nothing yet", not crash."""
    newest, fresh = doc(text="old"), doc(text="new")
    follower = Follower(store, str(newest["_id"]))
    receive(server, "find", TAIL_FIND).replies(first_batch([newest], cursor_id=42))
    receive(server, "getMore", get_more(42)).replies(next_batch([], 42))
    receive(server, "getMore", get_more(42)).replies(next_batch([fresh], 42))
    [(_, message)] = follower.take(1)
    assert (message.id, message.text) == (str(fresh["_id"]), "new")
    assert follower.error is None


def test_newest_id_reads_the_last_document_in_natural_order(server, store):
    newest = doc(text="newest")
    asking = go(store.newest_id)
    receive(server, "find", NEWEST_LOOKUP).replies(first_batch([newest]))
    assert asking() == str(newest["_id"])


def test_follow_from_none_delivers_the_whole_window(server, store):
    """None is where a tailer that started on an empty collection begins: everything is new."""
    first, second = doc(text="first"), doc(text="second")
    follower = Follower(store, None)
    receive(server, "find", TAIL_FIND).replies(first_batch([first, second], cursor_id=42))
    assert [m.text for _, m in follower.take(2)] == ["first", "second"]


# -- prepare(): the capped collection -----------------------------------------

def list_collections_reply(*entries: dict) -> dict:
    return {"cursor": {"id": 0, "ns": f"{DB}.$cmd.listCollections", "firstBatch": list(entries)}}


LIST_NAMES = {"listCollections": 1, "filter": {"name": "messages"}, "nameOnly": True, "cursor": {}}
LIST_OPTIONS = {"listCollections": 1, "filter": {"name": "messages"}, "cursor": {}}
# Sparse: messages without a key have no such field and stay out of the index.
CREATE_KEY_INDEX = {"createIndexes": "messages", "indexes": [
    {"key": {"idempotencyKey": 1}, "name": "idempotencyKey_unique", "unique": True, "sparse": True}]}


def test_prepare_creates_the_capped_collection_with_size_and_max(server):
    store = open_store(server)
    preparing = go(store.prepare)
    receive(server, "listCollections", LIST_NAMES).replies(list_collections_reply())
    receive(server, "create", {"create": "messages", "capped": True, "size": MAX_BYTES, "max": MAX_MESSAGES}).ok()
    receive(server, "listCollections", LIST_OPTIONS).replies(list_collections_reply(CAPPED))
    receive(server, "createIndexes", CREATE_KEY_INDEX).ok()
    preparing()
    store.close()


def test_prepare_keeps_an_existing_capped_collection(server):
    store = open_store(server)
    preparing = go(store.prepare)
    receive(server, "listCollections", LIST_NAMES).replies(list_collections_reply({"name": "messages"}))
    # No create: the next command is the options look-up.
    receive(server, "listCollections", LIST_OPTIONS).replies(list_collections_reply(CAPPED))
    receive(server, "createIndexes", CREATE_KEY_INDEX).ok()  # a no-op where it exists
    preparing()
    store.close()


def test_prepare_refuses_an_uncapped_collection_and_says_how_to_fix_it(server):
    store = open_store(server)
    preparing = go(store.prepare)
    receive(server, "listCollections", LIST_NAMES).replies(list_collections_reply({"name": "messages"}))
    receive(server, "listCollections", LIST_OPTIONS).replies(
        list_collections_reply({"name": "messages", "type": "collection", "options": {}}))
    with pytest.raises(StoreMisconfigured) as refused:
        preparing()
    message = str(refused.value)
    assert "sse.messages exists but is not capped" in message
    assert f"convertToCapped: 'messages', size: {MAX_BYTES}" in message
    store.close()


def test_prepare_reports_an_unreachable_server_as_unavailable(server):
    hangups = hang_up_every(server, "listCollections")
    store = open_store(server)
    with pytest.raises(StoreUnavailable):
        store.prepare()
    assert len(hangups) == 2  # PyMongo's own retryable read tried once more, then gave up
    store.close()


def test_prepare_takes_namespace_exists_from_a_worker_that_created_the_collection_first(server):
    """Two workers starting on a fresh database both see no collection; the slower create gets NamespaceExists."""
    store = open_store(server)
    preparing = go(store.prepare)
    receive(server, "listCollections", LIST_NAMES).replies(list_collections_reply())
    receive(server, "create", {"create": "messages", "capped": True, "size": MAX_BYTES, "max": MAX_MESSAGES}
            ).command_err(code=48, errmsg="Collection sse.messages already exists.", codeName="NamespaceExists")
    receive(server, "listCollections", LIST_OPTIONS).replies(list_collections_reply(CAPPED))
    receive(server, "createIndexes", CREATE_KEY_INDEX).ok()
    preparing()
    store.close()


# -- append(): one insert, idempotent on retry ----------------------------------

def receive_insert(server: MockupDB) -> tuple[object, dict]:
    request = server.receives()
    assert request.command_name == "insert", request
    assert command(request) == {"insert": "messages", "ordered": True, "documents": [request["documents"][0]]}
    [document] = request["documents"]
    return request, document


def test_append_inserts_the_document_and_returns_the_message(server, store):
    appending = go(store.append, "lobby", "hello", "chat")
    request, document = receive_insert(server)
    request.ok(n=1)
    message = appending()
    assert isinstance(document["_id"], ObjectId)
    assert {key: document[key] for key in ("room", "text", "event")} == {"room": "lobby", "text": "hello",
                                                                          "event": "chat"}
    # MongoDB keeps milliseconds: the reply carries exactly what was stored.
    assert document["createdAt"].microsecond % 1000 == 0
    assert message == Message(id=str(document["_id"]), room="lobby", text="hello", event="chat",
                              created_at=message.created_at)
    assert message.created_at.replace(tzinfo=None) == document["createdAt"].replace(tzinfo=None)


def test_append_retries_a_connection_reset_with_the_same_id(server, store):
    appending = go(store.append, "lobby", "hello", "message")
    first, sent = receive_insert(server)
    first.hangup()  # the reply is lost: the insert may or may not have been applied
    second, resent = receive_insert(server)
    second.ok(n=1)
    assert resent == sent
    assert appending().id == str(sent["_id"])


def test_append_takes_a_duplicate_key_on_retry_as_the_first_try_having_landed(server, store):
    appending = go(store.append, "lobby", "hello", "message")
    first, sent = receive_insert(server)
    first.hangup()
    second, resent = receive_insert(server)
    second.ok(n=0, writeErrors=[{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error"}])
    assert resent["_id"] == sent["_id"]
    assert appending().id == str(sent["_id"])
    # No third insert: nothing else reaches the server.
    assert not server.got(timeout=0.3)


def test_append_reports_an_unconfirmed_write_when_the_retry_fails_too(server, store):
    appending = go(store.append, "lobby", "hello", "message")
    receive_insert(server)[0].hangup()  # it may have landed: the reply is what got lost
    receive_insert(server)[0].hangup()
    with pytest.raises(WriteOutcomeUnknown):
        appending()


# -- append_once(): the key's unique index settles who stored it ------------------

KEY = "ab" * 32
DUPLICATE_KEY = {"n": 0, "writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error"}]}


def receive_key_lookup(server: MockupDB):
    return receive(server, "find", {"find": "messages", "filter": {"idempotencyKey": KEY}, "projection": ROOM_FIELDS,
                                    "limit": 1, "singleBatch": True})


def test_append_once_inserts_the_key_with_the_message(server, store):
    appending = go(store.append_once, "lobby", "hello", "message", KEY)
    request, document = receive_insert(server)
    request.ok(n=1)
    publication = appending()
    assert document["idempotencyKey"] == KEY
    assert publication.message.id == str(document["_id"]) and not publication.replayed


def test_append_once_refused_by_the_key_index_returns_the_holders_message(server, store):
    """Another worker or node inserted the key first: the loser reads the winner's document back."""
    appending = go(store.append_once, "lobby", "hello", "message", KEY)
    request, _ = receive_insert(server)
    request.ok(**DUPLICATE_KEY)
    winner = doc("lobby", "hello")
    receive_key_lookup(server).replies(first_batch([winner]))
    publication = appending()
    assert publication.replayed and publication.message.id == str(winner["_id"])


def test_append_once_retried_after_a_lost_reply_tells_its_own_landing_from_another_insert(server, store):
    # The retry's duplicate key error says the key is held: by the first try, or by someone else.
    appending = go(store.append_once, "lobby", "hello", "message", KEY)
    first, sent = receive_insert(server)
    first.hangup()
    second, _ = receive_insert(server)
    second.ok(**DUPLICATE_KEY)
    receive_key_lookup(server).replies(first_batch([{**doc("lobby", "hello"), "_id": sent["_id"]}]))
    publication = appending()
    assert publication.message.id == str(sent["_id"]) and not publication.replayed


def test_the_holder_of_a_key_is_read_from_the_primary_whatever_the_uris_read_preference(primary):
    """The index that refused the insert is the primary's: a secondary may not hold the winner yet."""
    primary.autoresponds(OpMsg("listCollections"), cursor={"id": 0, "ns": f"{DB}.$cmd.listCollections",
                                                           "firstBatch": [CAPPED]})
    primary.autoresponds(OpMsg("createIndexes", "messages"))
    store = MongoStore(primary.uri + "/?readPreference=secondaryPreferred", DB, max_bytes=MAX_BYTES,
                       max_messages=MAX_MESSAGES, await_ms=AWAIT_MS)
    appending = go(store.append_once, "lobby", "hello", "message", KEY)
    request, _ = receive_insert(primary)
    request.ok(**DUPLICATE_KEY)
    lookup = receive_key_lookup(primary)
    winner = doc("lobby", "hello")
    lookup.replies(first_batch([winner]))
    assert appending().message.id == str(winner["_id"])
    assert lookup.doc.get("$readPreference", {"mode": "primary"}) == {"mode": "primary"}
    store.close()


def test_prepare_refuses_a_key_index_with_other_options(server):
    store = open_store(server)
    preparing = go(store.prepare)
    receive(server, "listCollections", LIST_NAMES).replies(list_collections_reply({"name": "messages"}))
    receive(server, "listCollections", LIST_OPTIONS).replies(list_collections_reply(CAPPED))
    receive(server, "createIndexes", CREATE_KEY_INDEX).command_err(
        code=85, errmsg="An existing index has the same name as the requested index", codeName="IndexOptionsConflict")
    with pytest.raises(StoreMisconfigured) as refused:
        preparing()
    assert "not {unique: true, sparse: true}; drop it" in str(refused.value)
    store.close()


# -- read_room(): the backlog, in natural order --------------------------------

ROOM_FIELDS = {"room": 1, "text": 1, "event": 1, "createdAt": 1}


def room_find(room: str) -> dict:
    """The backlog read: the room's documents in natural (insertion) order, never a filter on _id."""
    return {"find": "messages", "filter": {"room": room}, "projection": ROOM_FIELDS, "sort": {"$natural": 1}}


# Three ObjectIds made by different processes: inserted in this order, but
# their ids sort the other way round (each process has its own counter).
OUT_OF_ORDER = [doc(text="first", oid=ObjectId("665f00000000000000000003")),
                doc(text="second", oid=ObjectId("665f00000000000000000001")),
                doc(text="third", oid=ObjectId("665f00000000000000000002"))]


def test_read_room_resumes_after_the_id_in_natural_order_not_by_comparing_ids(server, store):
    first = str(OUT_OF_ORDER[0]["_id"])
    reading = go(store.read_room, "r", first)
    receive(server, "find", room_find("r")).replies(first_batch(OUT_OF_ORDER))
    backlog = reading()
    # With {_id: {$gt: first}} both would be lost: their ids are smaller.
    assert [m.text for m in backlog.messages] == ["second", "third"]
    assert backlog.reset_reason is None


def test_read_room_from_the_start_returns_everything_in_natural_order(server, store):
    reading = go(store.read_room, "r")
    receive(server, "find", room_find("r")).replies(first_batch(OUT_OF_ORDER))
    assert [m.text for m in reading().messages] == ["first", "second", "third"]


def test_read_room_resets_when_the_id_is_not_in_the_window(server, store):
    evicted = str(ObjectId("665f00000000000000000000"))
    reading = go(store.read_room, "r", evicted)
    receive(server, "find", room_find("r")).replies(first_batch(OUT_OF_ORDER))
    backlog = reading()
    assert [m.text for m in backlog.messages] == ["first", "second", "third"]
    assert backlog.reset_reason == UNKNOWN_ID_REASON


def test_read_room_resets_on_a_malformed_id_without_looking_it_up(server, store):
    reading = go(store.read_room, "r", "1-17")
    receive(server, "find", room_find("r")).replies(first_batch(OUT_OF_ORDER))
    backlog = reading()
    assert [m.text for m in backlog.messages] == ["first", "second", "third"]
    assert backlog.reset_reason == UNKNOWN_ID_REASON


def test_read_room_reports_a_lost_connection_as_unavailable(server, store):
    hangups = hang_up_every(server, "find")
    with pytest.raises(StoreUnavailable):
        store.read_room("r")
    assert len(hangups) == 2  # PyMongo's retryable read tried once more


# -- follow(): how a tailable cursor ends ----------------------------------------

def test_follow_on_an_empty_collection_reopens_the_dead_cursor_after_growing_pauses(server):
    """An empty capped collection answers a tailable find with cursor id 0: no busy loop on it."""
    fake = FakeCappedCollection(server)
    store = open_store(server, dead_cursor_wait=(0.05, 0.4))
    follower = Follower(store, None)
    time.sleep(2.0)
    finds = list(fake.tail_finds)
    gaps = [later - earlier for earlier, later in zip(finds, finds[1:], strict=False)]
    # Pauses 0.05, 0.1, 0.2, 0.4, 0.4, ...: about 8 finds in 2 s (a busy loop makes thousands).
    assert 4 <= len(finds) <= 10, gaps
    for gap, pause in zip(gaps, [0.05, 0.1, 0.2, 0.4, 0.4], strict=False):
        assert gap >= pause * 0.9, gaps
    assert max(gaps) < 0.4 + 0.3, gaps  # the cap holds (with slack for a loaded machine)
    # It still notices the first message once there is one.
    fake.add(doc(text="first"))
    [(_, message)] = follower.take(1)
    assert message.text == "first"
    store.close()


def test_follow_reopens_a_killed_cursor_and_refinds_its_place_without_redelivering(server, store):
    a, b, c = doc(text="a"), doc(text="b"), doc(text="c")
    follower = Follower(store, str(a["_id"]))
    receive(server, "find", TAIL_FIND).replies(first_batch([a, b], cursor_id=7))
    [(position_b, message)] = follower.take(1)
    assert message.text == "b"
    receive(server, "getMore", get_more(7)).command_err(code=43, errmsg="cursor id 7 not found",
                                                        codeName="CursorNotFound")
    # A fresh cursor walks the window from the start again: a and b are skipped, c is new.
    receive(server, "find", TAIL_FIND).replies(first_batch([a, b, c], cursor_id=8))
    [(position_c, message)] = follower.take(1)
    assert message.text == "c"
    assert position_c > position_b
    receive(server, "getMore", get_more(8)).replies(next_batch([], 8))
    assert follower.delivered.empty() and follower.error is None


def test_follow_raises_position_lost_when_the_capped_collection_wrapped_past_it(server, store):
    """CappedPositionLost (136): PyMongo ends the tailable cursor quietly; re-finding the place fails."""
    a, b, d, e = doc(text="a"), doc(text="b"), doc(text="d"), doc(text="e")
    follower = Follower(store, str(a["_id"]))
    receive(server, "find", TAIL_FIND).replies(first_batch([a, b], cursor_id=7))
    assert follower.take(1)[0][1].text == "b"
    receive(server, "getMore", get_more(7)).command_err(
        code=136, errmsg="CollectionScan died due to position in capped collection being deleted",
        codeName="CappedPositionLost")
    # a, b and an unseen c were evicted: b cannot be found again.
    receive(server, "find", TAIL_FIND).replies(first_batch([d, e], cursor_id=8))
    receive(server, "getMore", get_more(8)).replies(next_batch([], 8))
    assert isinstance(follower.ended_with(), PositionLost)
    assert follower.delivered.empty()  # d and e are not sent as if nothing had been lost


def test_follow_raises_position_lost_for_an_id_not_from_this_store(server, store):
    follower = Follower(store, "1-17")
    assert isinstance(follower.ended_with(), PositionLost)


REPLICA_SET_PRIMARY = {"ismaster": True, "isWritablePrimary": True, "secondary": False, "setName": "rs0",
                       "minWireVersion": 0, "maxWireVersion": WIRE_VERSION_7_0,
                       "logicalSessionTimeoutMinutes": 30}


@pytest.fixture
def primary() -> Iterator[MockupDB]:
    """The primary of a one-member replica set (sessions on, so commands carry an lsid)."""
    mock = MockupDB(request_timeout=5)
    port = mock.run()
    host = f"localhost:{port}"
    answer_hello(mock, {**REPLICA_SET_PRIMARY, "hosts": [host], "primary": host, "me": host})
    yield mock
    mock.stop()


def hang_up(request) -> None:
    request.hangup()


def step_down(request) -> None:
    request.command_err(code=11602, errmsg="operation was interrupted because of a replication state change",
                        codeName="InterruptedDueToReplStateChange")


@pytest.mark.parametrize(("topology", "break_get_more"), [("server", hang_up), ("primary", step_down)],
                         ids=["connection-reset", "primary-step-down"])
def test_follow_fails_unavailable_mid_getmore_and_resumes_exactly(request, topology, break_get_more):
    server = request.getfixturevalue(topology)
    server.autoresponds(OpMsg("listCollections"), cursor={"id": 0, "ns": f"{DB}.$cmd.listCollections",
                                                          "firstBatch": [CAPPED]})
    server.autoresponds(OpMsg("createIndexes", "messages"))
    store = open_store(server)
    a, b, c = doc(text="a"), doc(text="b"), doc(text="c")
    follower = Follower(store, str(a["_id"]))
    receive(server, "find", TAIL_FIND).replies(first_batch([a], cursor_id=9))
    receive(server, "getMore", get_more(9)).replies(next_batch([b], 9))
    assert [m.text for _, m in follower.take(1)] == ["b"]
    break_get_more(receive(server, "getMore", get_more(9)))
    assert isinstance(follower.ended_with(), StoreUnavailable)
    # The tailer calls follow again from the last message it delivered.
    resumed = Follower(store, str(b["_id"]))
    receive(server, "find", TAIL_FIND).replies(first_batch([a, b, c], cursor_id=10))
    assert [m.text for _, m in resumed.take(1)] == ["c"]
    receive(server, "getMore", get_more(10)).replies(next_batch([], 10))
    assert resumed.delivered.empty() and resumed.error is None
    store.close()


# -- the Tailer, under gevent, through a reset ------------------------------------

def cursor_not_found(request) -> None:
    request.command_err(code=43, errmsg="cursor not found", codeName="CursorNotFound")


class TailerProbe:
    """tests/support/tailer_probe.py in a subprocess: the lines it prints, as they come."""

    def __init__(self, uri: str, room: str, count: int, seconds: float = 20) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.tailer_probe", uri, room, str(count), str(seconds)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[dict] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def next_line(self, timeout: float = 10.0) -> dict:
        return self.lines.get(timeout=timeout)

    def rest(self, timeout: float = 30.0) -> tuple[list[dict], dict]:
        """Return the remaining events and the closing summary, once the probe has exited."""
        self.process.wait(timeout)
        self.reader.join(timeout)
        *events, summary = [self.lines.get_nowait() for _ in range(self.lines.qsize())]
        return events, summary

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def ids(*documents: dict) -> list[str]:
    return [str(document["_id"]) for document in documents]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # MockupDB, probe exit
def test_tailer_under_gevent_delivers_each_message_once_through_a_reset_and_a_killed_cursor(server):
    """The real Tailer + Hub in a gevent-patched process (as in a gunicorn worker) against the fake collection."""
    fake = FakeCappedCollection(server)
    fake.add(doc(text="before the tailer started"))  # history: read from the store, never sent live
    probe = TailerProbe(server.uri, "r", 4)
    try:
        first, elsewhere, second, third, fourth = (doc(text="1"), doc(room="elsewhere"), doc(text="2"),
                                                   doc(text="3"), doc(text="4"))
        wait_until(lambda: fake.tail_finds, 10, "timed out waiting for the tailer's first tailable find")
        fake.add(first, elsewhere)
        assert probe.next_line()["id"] == ids(first)[0]
        fake.fail_next_getmore(hang_up)  # connection reset: the tailer retries from its last message
        wait_until(lambda: fake.getmore_faults_fired == 1, 10, "timed out waiting for the connection reset")
        fake.add(second)
        fake.add(third)
        fake.fail_next_getmore(cursor_not_found)  # killed cursor: follow() reopens it itself
        wait_until(lambda: fake.getmore_faults_fired == 2, 10, "timed out waiting for the killed cursor")
        fake.add(fourth)
        events, summary = probe.rest()
    finally:
        probe.kill()
    assert [event["id"] for event in events] == ids(second, third, fourth)
    assert summary == {"restarts": 1}  # the reset only; the killed cursor never left follow()
    assert len(fake.tail_finds) >= 3  # first open, after the reset, after the kill


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # MockupDB, probe exit
def test_tailer_keeps_messages_stored_before_a_reset_that_precedes_its_first_delivery(server):
    fake = FakeCappedCollection(server)
    fake.add(doc(text="before the tailer started"))
    stored_during_the_outage, later = doc(text="1"), doc(text="2")

    def store_then_hang_up(request) -> None:
        fake.add(stored_during_the_outage)  # committed after the tailer started, before it read anything
        request.hangup()

    fake.fail_next_getmore(store_then_hang_up)
    probe = TailerProbe(server.uri, "r", 2, seconds=5)
    try:
        wait_until(lambda: fake.getmore_faults_fired == 1, 10, "timed out waiting for the connection reset")
        wait_until(lambda: len(fake.tail_finds) >= 2, 10, "timed out waiting for the tailer's second tailable find")
        fake.add(later)
        events, _ = probe.rest()
    finally:
        probe.kill()
    assert [event["id"] for event in events] == ids(stored_during_the_outage, later)
