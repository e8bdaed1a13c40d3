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
