"""The store contract, run against every backend.

SQLite runs always. MongoDB runs against the server of the ``mongodb_server``
fixture: MONGODB_URI when set (the GitHub workflow provides a real mongod),
else FerretDB, a MongoDB wire-protocol server on SQLite standing in for it, else
it is skipped with the reason. Where FerretDB differs from MongoDB the tests say
so next to what they do about it (see also docs/testing.md, "FerretDB as a stand-in for MongoDB").
"""
from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import gevent
import gevent.event
import pytest

from app.stores.base import UNKNOWN_ID_REASON, PositionLost, PresenceReport, StoreUnavailable
from tests.support.odd_ids import odd_ids
from tests.support.waiting import quiet_period, wait_until


def open_sqlite(location: str, max_messages: int, max_bytes: int):
    from app.stores.sqlite import SQLiteStore

    return SQLiteStore(location, max_bytes=max_bytes, max_messages=max_messages, poll_interval=0.005)


# FerretDB 1.24: when an awaitData getMore's maxTimeMS runs out while the server re-reads the
# collection (it re-runs the query every 10 ms), the cursor can step back and re-send documents
# it already returned, or fail with InternalError "interrupted (9)". A long await keeps that
# from firing inside these tests; test_follow_sends_nothing_twice_while_idle_over_a_large_window
# shows it on purpose.
FERRETDB_AWAIT_MS = 5000


def open_mongodb(location: tuple[str, str, str], max_messages: int, max_bytes: int, await_ms: int | None = None):
    from app.stores.mongo import MongoStore

    uri, database, server = location
    if await_ms is None:
        await_ms = FERRETDB_AWAIT_MS if server == "ferretdb" else 200
    store = MongoStore(uri, database, max_bytes=max_bytes, max_messages=max_messages, await_ms=await_ms)
    store.prepare()
    return store


OPENERS = {"sqlite": open_sqlite, "mongodb": open_mongodb}


@pytest.fixture(params=["sqlite", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def make_store(request, tmp_path):
    """Return a factory of fresh stores of one backend, and where to find them again.

    ``make.server`` is "sqlite", "mongod" or "ferretdb".
    """
    kind = request.param
    if kind == "sqlite":
        location, server = str(tmp_path / "store.sqlite3"), "sqlite"
    else:  # the fixtures skip, with the reason, when there is no server
        server = request.getfixturevalue("mongodb_kind")
        location = (request.getfixturevalue("mongodb_uri"), request.getfixturevalue("mongodb_database"), server)
    opened = []

    def make(max_messages: int = 1000, max_bytes: int = 5_000_000, **options):
        store = OPENERS[kind](location, max_messages, max_bytes, **options)
        opened.append(store)
        return store

    make.kind, make.location, make.server = kind, location, server
    yield make
    for store in opened:
        store.close()


def enforce_bounds(make_store, store) -> None:
    """Make the store's bounds hold now.

    FerretDB trims capped collections only on a background tick or on ``compact``
    (MongoDB and SQLite evict within the insert), so on FerretDB run ``compact``.
    """
    if make_store.server == "ferretdb":
        store.collection.database.command("compact", store.collection.name)


def texts(backlog) -> list[str]:
    return [message.text for message in backlog.messages]


class ThreadFollower:
    """store.follow in an OS thread, appending (position, message) pairs until ``kill()``."""

    def __init__(self, store, after_id, received: list) -> None:
        self.lock = threading.Lock()
        self.stopped = False
        self.exception: BaseException | None = None  # what ended it, as on a greenlet
        self.thread = threading.Thread(target=self._run, args=(store, after_id, received), daemon=True)
        self.thread.start()

    def _run(self, store, after_id, received: list) -> None:
        try:
            for batch in store.follow(after_id, gevent.event.Event()):
                with self.lock:
                    if self.stopped:
                        return
                    received.extend(batch)
        except Exception as exc:  # seen by the test through .exception
            self.exception = exc

    def kill(self) -> None:
        with self.lock:
            self.stopped = True  # nothing is appended after this


def follow_into(store, after_id, received: list, wakeup=None):
    """Run store.follow in the background, appending (position, message) pairs; ``.kill()`` stops it.

    SQLite's follower is a greenlet, as in a worker. MongoDB's runs in a thread: this process
    is not gevent-patched, so PyMongo's blocking getMore on a tailable cursor that stays open
    (as MongoDB keeps it) would never let another greenlet run, and the test would hang.
    """
    from app.stores.mongo import MongoStore

    if isinstance(store, MongoStore):
        return ThreadFollower(store, after_id, received)

    def run():
        for batch in store.follow(after_id, wakeup or gevent.event.Event()):
            received.extend(batch)
    return gevent.spawn(run)


def followed(predicate, timeout: float = 5.0, what: str | Callable[[], str] = "the follower fell short") -> float:
    """Wait until ``predicate`` holds while the follower greenlets run."""
    return wait_until(predicate, timeout, what, interval=0.01, sleep=gevent.sleep)


def test_append_returns_the_stored_message(make_store):
    store = make_store()
    before = datetime.now(UTC)
    message = store.append("room1", "hello\nworld", "chat")
    assert (message.room, message.text, message.event) == ("room1", "hello\nworld", "chat")
    assert message.id and isinstance(message.id, str)
    assert before.replace(microsecond=0) <= message.created_at <= datetime.now(UTC)
    assert message.to_json()["createdAt"].endswith("Z")
    assert store.read_room("room1").messages == [message]


def test_read_room_returns_only_that_room_in_order(make_store):
    store = make_store()
    for i in range(5):
        store.append("a", f"a{i}", "message")
        store.append("b", f"b{i}", "message")
    assert texts(store.read_room("a")) == [f"a{i}" for i in range(5)]
    assert texts(store.read_room("b")) == [f"b{i}" for i in range(5)]
    assert store.read_room("empty").messages == []


def test_resume_after_an_id_gives_exactly_the_rest(make_store):
    store = make_store()
    sent = [store.append("r", f"m{i}", "message") for i in range(6)]
    for i, message in enumerate(sent):
        backlog = store.read_room("r", after_id=message.id)
        assert backlog.reset_reason is None
        assert texts(backlog) == [f"m{j}" for j in range(i + 1, 6)]
    assert texts(store.read_room("r", after_id=sent[1].id, limit=2)) == ["m2", "m3"]


@pytest.mark.parametrize("bad_id", ["garbage", "", "ffffffff-1", "0" * 24, "x" * 256])
def test_unknown_or_malformed_id_gives_reset_and_the_whole_window(make_store, bad_id):
    store = make_store()
    store.append("r", "m0", "message")
    store.append("r", "m1", "message")
    backlog = store.read_room("r", after_id=bad_id)
    assert backlog.reset_reason == UNKNOWN_ID_REASON
    assert texts(backlog) == ["m0", "m1"]


def test_odd_ids_give_the_one_reset_and_are_never_found(make_store):
    """`<epoch>-9999999999999999999` (past 64 bits) reached SQLite and raised OverflowError mid-stream."""
    store = make_store()
    kept = store.append("r", "m0", "message")
    for name, odd in odd_ids(kept.id).items():
        backlog = store.read_room("r", after_id=odd)
        assert (backlog.reset_reason, texts(backlog)) == (UNKNOWN_ID_REASON, ["m0"]), name
        assert not store.contains(odd), name
    assert store.contains(kept.id)


def test_id_from_another_room_gives_the_same_reset_as_an_unknown_one(make_store):
    """Another reason for another room's id let anyone probe which ids belong to private rooms."""
    store = make_store()
    other = store.append("other", "x", "message")
    store.append("r", "m0", "message")
    backlog = store.read_room("r", after_id=other.id)
    assert backlog.reset_reason == UNKNOWN_ID_REASON and texts(backlog) == ["m0"]


def test_oldest_are_evicted_beyond_max_messages_and_resume_there_resets(make_store):
    store = make_store(max_messages=5)
    sent = [store.append("r", f"m{i}", "message") for i in range(8)]
    enforce_bounds(make_store, store)
    assert texts(store.read_room("r")) == [f"m{i}" for i in range(3, 8)]
    evicted = store.read_room("r", after_id=sent[2].id)
    assert evicted.reset_reason == UNKNOWN_ID_REASON and texts(evicted) == [f"m{i}" for i in range(3, 8)]
    kept = store.read_room("r", after_id=sent[3].id)
    assert kept.reset_reason is None and texts(kept) == [f"m{i}" for i in range(4, 8)]


def test_oldest_are_evicted_beyond_max_bytes(make_store):
    if make_store.kind == "mongodb":
        pytest.skip("MongoDB rounds capped sizes up to 256-byte multiples and counts BSON; covered by max_messages")
    store = make_store(max_bytes=4096)
    for i in range(20):
        store.append("r", f"{i:03d}" + "x" * 500, "message")
    kept = texts(store.read_room("r"))
    assert 1 <= len(kept) < 20
    assert kept[-1].startswith("019")
    assert sum(len(t) + 64 for t in kept) <= 4096


def test_follow_yields_new_messages_in_order_with_growing_positions(make_store):
    store = make_store()
    store.append("r", "old", "message")
    received: list = []
    follower = follow_into(store, store.newest_id(), received)  # where a tailer starts
    gevent.sleep(0.3)  # the follower reaches its wait for new messages (nothing to see from here)
    sent = [store.append("r" if i % 2 else "s", f"m{i}", "message") for i in range(10)]
    followed(lambda: len(received) >= 10, what=lambda: repr(received))
    follower.kill()
    assert [m.id for _, m in received] == [m.id for m in sent]
    positions = [p for p, _ in received]
    assert positions == sorted(positions) and len(set(positions)) == 10


def test_newest_id_is_none_when_empty_then_the_last_appended(make_store):
    store = make_store()
    assert store.newest_id() is None
    store.append("a", "one", "message")
    last = store.append("b", "two", "message")
    assert store.newest_id() == last.id


def test_follow_from_none_yields_the_whole_window(make_store):
    store = make_store()
    sent = [store.append("r", f"m{i}", "message") for i in range(3)]
    received: list = []
    follower = follow_into(store, None, received)
    followed(lambda: len(received) >= 3)
    follower.kill()
    assert [m.id for _, m in received] == [m.id for m in sent]


def test_follow_resumes_exactly_after_an_id(make_store):
    store = make_store()
    sent = [store.append("r", f"m{i}", "message") for i in range(5)]
    received: list = []
    follower = follow_into(store, sent[1].id, received)
    followed(lambda: len(received) >= 3)
    quiet_period(0.2, sleep=gevent.sleep)  # a fourth would arrive now
    follower.kill()
    assert [m.text for _, m in received] == ["m2", "m3", "m4"]


def test_follow_from_an_evicted_position_raises_position_lost(make_store):
    store = make_store(max_messages=3)
    sent = [store.append("r", f"m{i}", "message") for i in range(6)]
    enforce_bounds(make_store, store)
    with pytest.raises(PositionLost):
        with gevent.Timeout(5):
            next(iter(store.follow(sent[0].id, gevent.event.Event())))


def test_a_follower_overtaken_by_eviction_loses_its_place(make_store):
    store = make_store(max_messages=200)
    for i in range(150):  # more than a first batch: a tailable cursor stays open
        store.append("r", f"m{i}", "message")
    feed = store.follow(None, gevent.event.Event())
    read: list = []
    while len(read) < 150:
        read.extend(next(feed))
    for i in range(150, 600):  # the follower's place and all after it are evicted unseen
        store.append("r", f"m{i}", "message")
    enforce_bounds(make_store, store)
    with pytest.raises(PositionLost):
        try:
            for _ in range(50):
                assert next(feed) == [], "a follower whose place was evicted went on as if nothing was lost"
        except StoreUnavailable:
            if make_store.server != "ferretdb":
                raise
            # FerretDB 1.24 fails the getMore with InternalError (code 1) where MongoDB answers
            # CappedPositionLost (136); the tailer retries from its last message, which is gone.
            next(store.follow(read[-1][1].id, gevent.event.Event()))


def test_follow_sends_nothing_twice_while_idle_over_a_large_window(make_store, request):
    if make_store.server == "ferretdb":
        request.applymarker(pytest.mark.xfail(reason=(
            "FerretDB 1.24 re-sends documents on a tailable cursor when an awaitData getMore's maxTimeMS "
            "runs out while it re-reads the collection (MongoDB does not)"), strict=False))
    store = make_store(await_ms=100) if make_store.kind == "mongodb" else make_store()
    sent = [store.append("r", f"m{i}", "message") for i in range(300)]  # a tailable cursor stays open
    received: list = []
    follower = follow_into(store, None, received)
    followed(lambda: len(received) >= 300, timeout=10, what=lambda: f"{len(received)} received")
    quiet_period(2, sleep=gevent.sleep)  # idle: about 20 awaitData waits run out
    last = store.append("r", "last", "message")
    followed(lambda: any(m.id == last.id for _, m in received))
    quiet_period(0.3, sleep=gevent.sleep)  # a late duplicate would arrive now
    follower.kill()
    assert [m.id for _, m in received] == [m.id for m in sent] + [last.id]


def _write_many(kind: str, location, writer: int, count: int) -> None:
    store = OPENERS[kind](location, 10_000, 50_000_000)
    for i in range(count):
        store.append("shared", f"w{writer}-{i}", "message")
    store.close()


@pytest.mark.slow
def test_concurrent_writers_in_several_processes_keep_one_order(make_store):
    store = make_store(max_messages=10_000, max_bytes=50_000_000)
    received: list = []
    follower = follow_into(store, None, received)
    gevent.sleep(0.3)  # the follower reaches its wait for new messages (nothing to see from here)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(make_store.kind, make_store.location, w, 100))
               for w in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    try:
        followed(lambda: len(received) >= 300, timeout=10)
        arrived = True
    except AssertionError:
        arrived = False  # judged below, once FerretDB's known gap is ruled out
    follower.kill()

    stored = store.read_room("shared").messages
    assert len(stored) == 300 and len({m.id for m in stored}) == 300
    for w in range(3):  # each writer's messages keep its own order
        assert [m.text for m in stored if m.text.startswith(f"w{w}-")] == [f"w{w}-{i}" for i in range(100)]
    # Resuming after any message gives exactly the suffix of that order.
    for cut in (0, 57, 150, 298, 299):
        rest = store.read_room("shared", after_id=stored[cut].id).messages
        assert [m.id for m in rest] == [m.id for m in stored[cut + 1:]]
    # The follower saw exactly the store's order, not some other (e.g. id) order.
    seen, order = [m.id for _, m in received], [m.id for m in stored]
    if make_store.server == "ferretdb" and seen != order:
        # FerretDB 1.24 numbers a document (its natural order) before the insert commits, so
        # concurrent inserts can become visible out of natural order, behind a tailable cursor
        # that has already passed their place: it never returns them. MongoDB guarantees that a
        # capped collection keeps insertion order.
        pytest.xfail(f"FerretDB 1.24: the follower missed {len(set(order) - set(seen))} of 300 messages "
                     f"and repeated {len(seen) - len(set(seen))}; natural order is not commit order")
    assert arrived, (len(received), follower.exception)
    assert seen == order


def _open_store_at(path: str, start, results) -> None:
    start.wait(10)
    try:
        store = open_sqlite(path, 1000, 5_000_000)
        store.append("r", "x", "message")
        results.put("ok")
    except Exception as exc:  # reported to the parent
        results.put(repr(exc))


@pytest.mark.slow
def test_processes_opening_a_new_sqlite_file_together_all_start(tmp_path):
    """In CI one of two processes opening a new file died with "database is locked".

    A stress test: the race is narrow and this did not reproduce it here
    before the fix, but it fails if any of 4 x 5 simultaneous openings fails.
    """
    context = multiprocessing.get_context("spawn")
    for attempt in range(5):
        path = str(tmp_path / f"new-{attempt}.sqlite3")
        start, results = context.Event(), context.Queue()
        workers = [context.Process(target=_open_store_at, args=(path, start, results)) for _ in range(4)]
        for process in workers:
            process.start()
        start.set()
        outcomes = [results.get(timeout=30) for _ in workers]
        for process in workers:
            process.join(10)
        assert outcomes == ["ok"] * 4


def test_follow_from_none_after_eviction_yields_the_window_not_position_lost(make_store):
    """Regression: SQLite's follow(None) expected seq 1, so a tailer warming after a wrap lost its place forever."""
    store = make_store(max_messages=3)
    sent = [store.append("r", f"m{i}", "message") for i in range(6)]
    enforce_bounds(make_store, store)
    received: list = []
    follower = follow_into(store, None, received)
    followed(lambda: len(received) >= 3)
    quiet_period(0.2, sleep=gevent.sleep)  # a fourth would arrive now
    assert follower.exception is None
    follower.kill()
    assert [m.id for _, m in received] == [m.id for m in sent[3:]]


def test_read_rooms_merges_rooms_in_store_order_and_resumes_after_any_of_their_ids(make_store):
    store = make_store()
    sent = [store.append(room, f"{room}{n}", "message") for n, room in enumerate("abcabca")]
    followed = [m for m in sent if m.room in "ab"]
    assert [m.id for m in store.read_rooms(("a", "b")).messages] == [m.id for m in followed]
    for cut, message in enumerate(followed):
        backlog = store.read_rooms(("b", "a"), after_id=message.id)
        assert backlog.reset_reason is None
        assert [m.id for m in backlog.messages] == [m.id for m in followed[cut + 1:]]
    other = store.read_rooms(("a", "b"), after_id=sent[2].id)  # room c
    assert other.reset_reason == UNKNOWN_ID_REASON and [m.id for m in other.messages] == [m.id for m in followed]


def test_read_rooms_before_gives_the_page_just_before_an_id_oldest_first_or_reset_and_the_newest(make_store):
    """Scrollback (issue 15): the store's answer when the worker's window has not caught up."""
    store = make_store()
    sent = [store.append(room, f"{room}{n}", "message") for n, room in enumerate("abcabcab")]
    followed = [m.id for m in sent if m.room in "ab"]
    for cut in range(len(followed)):
        for limit in (1, 2, 100):
            page = store.read_rooms_before(("b", "a"), followed[cut], limit)
            assert page.reset_reason is None
            assert [m.id for m in page.messages] == followed[max(0, cut - limit):cut], (cut, limit)
    for bad_id in (sent[2].id, *odd_ids(sent[0].id).values()):  # room c's, and ids no store issues
        page = store.read_rooms_before(("a", "b"), bad_id, 3)
        assert page.reset_reason == UNKNOWN_ID_REASON and [m.id for m in page.messages] == followed[-3:]


# -- presence: each worker's streams per room, with an expiry ------------------------------------

def test_presence_sums_every_unexpired_entry_but_the_one_excluded(make_store):
    store = make_store()
    assert store.presence_counts() == PresenceReport()
    store.publish_presence("host:1:a", PresenceReport({"lobby": 2, "a.b-c_d": 1}), ttl=30)
    store.publish_presence("host:2:b", PresenceReport({"lobby": 3}), ttl=30)
    assert store.presence_counts() == PresenceReport({"lobby": 5, "a.b-c_d": 1})
    assert store.presence_counts(exclude="host:1:a") == PresenceReport({"lobby": 3})
    # A worker's new entry replaces its old one.
    store.publish_presence("host:1:a", PresenceReport({"dev": 1}), ttl=30)
    assert store.presence_counts() == PresenceReport({"lobby": 3, "dev": 1})
    # Another store object on the same store (another worker, another node) reads the same.
    assert make_store().presence_counts(exclude="host:2:b") == PresenceReport({"dev": 1})


def test_presence_sums_the_rooms_counted_but_not_named(make_store):
    store = make_store()
    store.publish_presence("w1", PresenceReport({"lobby": 9}, other_rooms=40, other_streams=41), ttl=30)
    store.publish_presence("w2", PresenceReport({"lobby": 1, "dev": 5}, other_rooms=2, other_streams=3), ttl=30)
    assert store.presence_counts() == PresenceReport({"lobby": 10, "dev": 5}, other_rooms=42, other_streams=44)
    store.publish_presence("w1", PresenceReport({"lobby": 9}), ttl=30)
    assert store.presence_counts(exclude="w2") == PresenceReport({"lobby": 9})


def test_presence_withdrawn_entry_is_gone_and_withdrawing_twice_is_harmless(make_store):
    store = make_store()
    store.publish_presence("w1", PresenceReport({"lobby": 1}), ttl=30)
    store.publish_presence("w2", PresenceReport({"lobby": 1}), ttl=30)
    store.withdraw_presence("w1")
    store.withdraw_presence("w1")
    store.withdraw_presence("never-published")
    assert store.presence_counts() == PresenceReport({"lobby": 1})


def test_presence_entry_expires_without_anyone_deleting_it(make_store):
    """A killed worker never withdraws: readers skip its entry once it expired (no TTL monitor needed)."""
    store = make_store()
    store.publish_presence("killed", PresenceReport({"lobby": 4}), ttl=0.3)
    store.publish_presence("alive", PresenceReport({"lobby": 1}), ttl=30)
    assert store.presence_counts() == PresenceReport({"lobby": 5})
    gevent.sleep(0.5)
    assert store.presence_counts() == PresenceReport({"lobby": 1})


def test_presence_refresh_moves_only_the_expiry_on_and_says_when_the_entry_is_gone(make_store):
    store = make_store()
    store.publish_presence("w1", PresenceReport({"lobby": 2}, other_rooms=1, other_streams=1), ttl=0.3)
    assert store.refresh_presence("w1", ttl=30) is True
    gevent.sleep(0.5)  # past the first expiry: the refresh kept it, rooms and all
    assert store.presence_counts() == PresenceReport({"lobby": 2}, other_rooms=1, other_streams=1)
    store.withdraw_presence("w1")
    assert store.refresh_presence("w1", ttl=30) is False  # the worker must write it whole again
    assert store.refresh_presence("never-published", ttl=30) is False
    assert store.presence_counts() == PresenceReport()


def test_presence_expiry_is_on_the_database_clock_on_mongodb(make_store, monkeypatch):
    """A node whose clock is 10 s behind writes entries that other nodes still see as live."""
    if make_store.kind != "mongodb":
        pytest.skip("SQLite's presence is on one machine, one clock")
    from app.stores import mongo

    class TenSecondsBehind(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(seconds=10)

    skewed_node = make_store()
    with monkeypatch.context() as patch:
        patch.setattr(mongo, "datetime", TenSecondsBehind)
        skewed_node.publish_presence("behind", PresenceReport({"lobby": 1}), ttl=3)
    assert make_store().presence_counts() == PresenceReport({"lobby": 1})


def test_a_presence_document_that_would_pass_16_mb_is_a_clean_store_error_on_mongodb(make_store):
    """The bound keeps documents far below 16 MB; were it bypassed, the write fails as the store being unavailable.

    pymongo refuses the document itself (DocumentTooLarge, a BSONError and not
    a PyMongoError): it used to escape as a traceback, once a second.
    """
    if make_store.kind != "mongodb":
        pytest.skip("SQLite keeps a worker's rooms as one text value, with no 16 MB limit")
    store = make_store()
    huge = PresenceReport({f"{n:064d}": 1 for n in range(170_000)})  # ~17 MB of BSON
    with pytest.raises(ValueError, match="PRESENCE_MAX_ROOMS"):
        store.publish_presence("w1", huge, ttl=30)
    store.presence_max_rooms = len(huge.rooms)  # as if the bound were not there
    with pytest.raises(StoreUnavailable, match="too large"):
        store.publish_presence("w1", huge, ttl=30)
    assert store.presence_counts() == PresenceReport()


# -- presence: who follows each room (issue 16) --------------------------------------------------

def test_presence_sums_each_rooms_identities_and_anonymous_streams(make_store):
    """Identities as the hook or a token may name them: dots, dollars, spaces, newlines and non-ASCII included."""
    store = make_store()
    odd = "a.b$c d\né"
    store.publish_presence("w1", PresenceReport({"lobby": 4, "a.b": 1}, subs={"lobby": {"alice": 2, odd: 1},
                                                                            "a.b": {odd: 1}},
                                                anonymous={"lobby": 1}, other_subs=3), ttl=30)
    store.publish_presence("w2", PresenceReport({"lobby": 2}, subs={"lobby": {"alice": 1}}, anonymous={"lobby": 1}),
                           ttl=30)
    assert store.presence_counts() == PresenceReport(
        {"lobby": 6, "a.b": 1}, subs={"lobby": {"alice": 3, odd: 1}, "a.b": {odd: 1}}, anonymous={"lobby": 2},
        other_subs=3)
    assert make_store().presence_counts(exclude="w1") == PresenceReport(
        {"lobby": 2}, subs={"lobby": {"alice": 1}}, anonymous={"lobby": 1})
    # A new entry replaces the old one whole: who left is gone with it.
    store.publish_presence("w1", PresenceReport({"lobby": 1}, subs={"lobby": {"bob": 1}}), ttl=30)
    assert store.presence_counts(exclude="w2") == PresenceReport({"lobby": 1}, subs={"lobby": {"bob": 1}})
    assert store.refresh_presence("w1", ttl=30) is True
    assert store.presence_counts(exclude="w2").subs == {"lobby": {"bob": 1}}  # a refresh keeps them


def test_an_entry_written_before_identities_counts_its_streams_as_unnamed(make_store):
    """A node still on the release before issue 16 shares the store during a rolling upgrade."""
    store = make_store()
    store.publish_presence("new", PresenceReport({"lobby": 1}, subs={"lobby": {"alice": 1}}), ttl=30)
    if make_store.kind == "sqlite":
        import sqlite3

        with sqlite3.connect(make_store.location) as conn:
            conn.execute("INSERT INTO presence (worker, rooms, expires_ms, other_rooms, other_streams) "
                         "VALUES ('old', '{\"lobby\": 2}', 9999999999999, 0, 0)")
    else:
        store.presence_collection.insert_one({"_id": "old", "rooms": [{"room": "lobby", "streams": 2}],
                                              "otherRooms": 0, "otherStreams": 0,
                                              "expiresAt": datetime.now(UTC) + timedelta(seconds=30)})
    report = store.presence_counts()
    assert report.rooms == {"lobby": 3} and report.subs == {"lobby": {"alice": 1}}
    assert report.unnamed_streams("lobby") == 2


def test_the_mongodb_store_refuses_identities_past_its_bounds(make_store):
    """What keeps the 16 MB proof true whoever calls: Presence itself never writes more."""
    if make_store.kind != "mongodb":
        pytest.skip("SQLite keeps a worker's identities as one text value, with no 16 MB limit")
    store = make_store()
    store.presence_max_identities = 2
    with pytest.raises(ValueError, match="PRESENCE_MAX_IDENTITIES"):
        store.publish_presence("w1", PresenceReport({"lobby": 3}, subs={"lobby": {"a": 1, "b": 1, "c": 1}}), ttl=30)
    with pytest.raises(ValueError, match="PRESENCE_MAX_IDENTITIES"):
        store.publish_presence("w1", PresenceReport({"lobby": 1}, subs={"lobby": {"s" * 257: 1}}), ttl=30)
    assert store.presence_counts() == PresenceReport()
