"""The SQLite store when its file cannot take a write: the error says why, and nothing is stored.

Live, with a real full disk, a read-only file and a lock held by another
process: test_store_unwritable_sqlite.py beside it.
"""
from __future__ import annotations

import pytest

from app.stores.base import StoreUnavailable
from app.stores.sqlite import SQLiteStore


def test_a_full_store_names_the_cause_stores_nothing_and_writes_again_on_a_new_connection(sqlite_path):
    """Issue 18: the ROLLBACK after a failed write raised "no transaction is active", hiding "disk is full"."""
    store = SQLiteStore(sqlite_path, max_bytes=10**7, max_messages=10**4)
    try:
        store.append("r", "first", "message")  # opens the writer connection
        writer = store._writer
        (pages,) = store._on_writer_thread(lambda: writer.execute("PRAGMA page_count").fetchone())
        # max_page_count binds one connection only: the one publishes use is the one made full.
        store._on_writer_thread(lambda: writer.execute(f"PRAGMA max_page_count = {pages}"))
        with pytest.raises(StoreUnavailable, match="database or disk is full"):
            store.append("r", "x" * 20_000, "message")
    finally:
        store.close()
    store = SQLiteStore(sqlite_path, max_bytes=10**7, max_messages=10**4)
    try:
        assert [message.text for message in store.read_room("r").messages] == ["first"]
        store.ping()
        store.append("r", "x" * 20_000, "message")
        assert [message.text[:5] for message in store.read_room("r").messages] == ["first", "xxxxx"]
    finally:
        store.close()


def test_a_path_that_cannot_be_opened_starts_the_app_not_ready_and_is_tried_again_on_use(tmp_path, caplog):
    """As with an unreachable MONGODB_URI: a warning at start-up, 503 until it can be opened, then served.

    The file used to be opened when the store object was made, outside the
    factory's handling: a bad SQLITE_PATH failed the worker with a traceback.
    """
    import logging

    from app import create_app

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    with caplog.at_level(logging.WARNING):
        app = create_app({"SQLITE_PATH": str(blocker / "messages.sqlite3"), "HEARTBEAT_SECONDS": "1"})
    assert "message store not reachable at start-up (cannot open SQLite store" in caplog.text
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    refused = client.post("/messages", json={"room": "r", "text": "not yet"})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
    blocker.unlink()  # the operator fixes the path: the next use opens the store
    assert client.get("/readyz").status_code == 200
    assert client.post("/messages", json={"room": "r", "text": "now"}).status_code == 201
