"""The stores' half of publishing exactly once: ``append_once`` keeps an idempotency key unique in the window.

Run on both stores through the contract suite's ``make_store`` (SQLite; MongoDB
here = FerretDB 1.24, a stand-in). Where FerretDB differs, the test says so.
"""
from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from tests import test_store_contract as contract
from tests.test_store_contract import OPENERS, enforce_bounds, open_mongodb, open_sqlite

make_store = contract.make_store  # the contract suite's fixture: SQLite, and MongoDB (FerretDB here)

KEY = "0" * 64  # the edge hands the stores a SHA-256 in hex


def key(n: int) -> str:
    return f"{n:064x}"


def test_a_key_stores_one_message_and_a_second_append_replays_it(make_store):
    store = make_store()
    first = store.append_once("r", "hello", "chat", KEY)
    again = store.append_once("r", "hello", "chat", KEY)

    assert not first.replayed and again.replayed
    assert again.message == first.message  # same id, same fields, same createdAt
    assert store.read_room("r").messages == [first.message]


def test_a_replay_returns_what_is_stored_whatever_the_second_append_asked_for(make_store):
    """The store does not compare bodies (the edge does, for its 422): it hands back the key's message."""
    store = make_store()
    first = store.append_once("r", "hello", "message", KEY)
    other = store.append_once("elsewhere", "not hello", "chat", KEY)

    assert other.replayed and other.message == first.message
    assert store.read_room("elsewhere").messages == []


def test_messages_without_a_key_and_with_other_keys_are_not_affected(make_store):
    store = make_store()
    plain = [store.append("r", "same text", "message") for _ in range(3)]
    keyed = [store.append_once("r", "same text", "message", key(n)) for n in range(3)]

    assert not any(publication.replayed for publication in keyed)
    assert [m.id for m in store.read_room("r").messages] == [m.id for m in plain] + [p.message.id for p in keyed]


def test_a_key_is_free_again_once_its_message_is_evicted(make_store):
    store = make_store(max_messages=3)
    first = store.append_once("r", "keyed", "message", KEY)
    for n in range(3):
        store.append("r", f"filler {n}", "message")
    enforce_bounds(make_store, store)
    assert first.message.id not in [m.id for m in store.read_room("r").messages]

    again = store.append_once("r", "keyed", "message", KEY)
    assert not again.replayed and again.message.id != first.message.id


def _race(kind: str, location, start, results, keys: int) -> None:
    store = OPENERS[kind](location, 10_000, 50_000_000)
    start.wait(30)
    try:
        results.put([(p.message.id, p.replayed) for p in (store.append_once("r", f"m{n}", "message", key(n))
                                                            for n in range(keys))])
    except Exception as exc:  # reported to the parent
        results.put(repr(exc))
    finally:
        store.close()


@pytest.mark.slow
def test_processes_racing_with_the_same_keys_store_each_message_once(make_store):
    """4 processes (4 workers, or nodes) append the same 20 keys at once: one message per key, the same to all."""
    store = make_store(max_messages=10_000, max_bytes=50_000_000)
    keys, racers = 20, 4
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=_race, args=(make_store.kind, make_store.location, start, results, keys))
                 for _ in range(racers)]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    assert all(isinstance(outcome, list) for outcome in outcomes), outcomes

    stored = store.read_room("r").messages
    assert [m.text for m in stored] == [f"m{n}" for n in range(keys)]
    for n in range(keys):
        answers = [outcome[n] for outcome in outcomes]
        assert {message_id for message_id, _ in answers} == {stored[n].id}
        assert sorted(replayed for _, replayed in answers) == [False] + [True] * (racers - 1)


def test_the_sqlite_key_column_is_unique_among_non_null_values(tmp_path):
    path = str(tmp_path / "store.sqlite3")
    store = open_sqlite(path, 1000, 5_000_000)
    store.append_once("r", "a", "message", KEY)
    db = sqlite3.connect(path)
    insert = ("INSERT INTO messages (room, text, event, created_ms, size, idempotency_key) "
              "VALUES ('r', 'b', 'm', 0, 1, ?)")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(insert, (KEY,))
    db.execute(insert, (None,))
    db.execute(insert, (None,))  # NULLs never collide: messages without a key
    db.commit()
    db.close()
    store.close()


def test_an_sqlite_file_made_before_keys_gets_the_column_and_keeps_its_messages(tmp_path):
    path = str(tmp_path / "store.sqlite3")
    before = open_sqlite(path, 1000, 5_000_000)
    old = before.append("r", "from before", "message")
    before.close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX messages_by_idempotency_key")
    db.execute("ALTER TABLE messages DROP COLUMN idempotency_key")
    db.commit()
    db.close()

    store = open_sqlite(path, 1000, 5_000_000)  # a worker of the new version opens the old file
    again = [store.append_once("r", "new", "message", KEY) for _ in range(2)]

    assert [p.replayed for p in again] == [False, True]
    assert [m.id for m in store.read_room("r").messages] == [old.id, again[0].message.id]
    store.close()


@pytest.mark.mongodb
def test_the_mongodb_key_index_is_unique_and_sparse(mongodb_uri, mongodb_database, mongodb_kind):
    store = open_mongodb((mongodb_uri, mongodb_database, mongodb_kind), 1000, 5_000_000)
    index = store.collection.index_information()["idempotencyKey_unique"]

    assert index["key"] == [("idempotencyKey", 1)] and index["unique"] is True
    if mongodb_kind == "ferretdb":
        # FerretDB 1.24 takes `sparse: true` but does not report it (nor need it: its unique
        # indexes never index a missing field); what sparse is for is checked below on both.
        assert "sparse" not in index
    else:
        assert index["sparse"] is True
    store.append("r", "no key", "message")
    store.append("r", "no key either", "message")  # would collide on null in a unique index that is not sparse
    assert len(store.read_room("r").messages) == 2
    store.close()
