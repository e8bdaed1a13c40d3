"""MESSAGE_TTL_SECONDS: expired messages are never sent, a resume is exact only while nothing it missed expired.

The window and the store read here are judged on a clock the test moves
(``Clock``), so ages are exact, not raced against.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from app.config import ConfigError, Settings
from app.delivery.expiry import EXPIRED_REASON, Expiry
from app.delivery.hub import Hub
from app.delivery.reading import read_history, read_history_before
from app.delivery.streaming import StreamSettings, message_stream
from app.delivery.window import Window
from app.stores.base import UNKNOWN_ID_REASON, Message
from app.stores.sqlite import SQLiteStore
from tests.support.live import GUNICORN, ROOT

START = datetime(2026, 12, 1, tzinfo=UTC)
TTL = 60.0


class Clock:
    """The store's clock, as the test sets it (Unix seconds)."""

    def __init__(self) -> None:
        self.now = START.timestamp()

    def __call__(self) -> float:
        return self.now


def feed(window: Window, specs: list[tuple[str, float]], start: int = 1) -> list[Message]:
    """Extend the window with (room, seconds after START) messages at consecutive positions; return them."""
    messages = [Message(id=f"id{start + n}", room=room, text=f"m{start + n}", event="message",
                        created_at=START + timedelta(seconds=age))
                for n, (room, age) in enumerate(specs)]
    window.extend([(start + n, message) for n, message in enumerate(messages)])
    return messages


def expiring_window(clock: Clock) -> Window:
    window = Window(max_messages=100, max_bytes=10**6, expiry=Expiry(TTL, clock))
    window.ready.set()
    return window


def ids(entries) -> list[str]:
    return [entry.id for entry in entries]


# -- the setting --------------------------------------------------------------------------------

def test_unset_means_no_expiry_and_seconds_may_have_a_fraction():
    assert Settings.from_env({}).message_ttl_seconds is None
    assert Settings.from_env({"MESSAGE_TTL_SECONDS": ""}).message_ttl_seconds is None
    assert Settings.from_env({"MESSAGE_TTL_SECONDS": "2.5"}).message_ttl_seconds == 2.5
    assert Settings.from_env({"MESSAGE_TTL_SECONDS": "86400"}).message_ttl_seconds == 86400


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf", "31622401"])
def test_a_bad_ttl_stops_start_up_with_a_sentence_naming_it(value):
    with pytest.raises(ConfigError, match=r"MESSAGE_TTL_SECONDS=.* is not valid: must be a number of seconds"):
        Settings.from_env({"MESSAGE_TTL_SECONDS": value})


@pytest.mark.slow
def test_gunicorn_refuses_a_bad_ttl_in_one_line(tmp_path):
    result = subprocess.run([str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "MESSAGE_TTL_SECONDS": "0"},
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "sse-rooms: MESSAGE_TTL_SECONDS='0' is not valid: must be a number of seconds above 0 and at most 3.16224e+07"]


# -- the window: joins, resumes, history, counts ------------------------------------------------

def test_without_a_ttl_nothing_expires():
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [("r", -10**8), ("r", 0)])
    assert ids(window.backlog(("r",), None).entries) == [m.id for m in sent]
    assert window.room_summary("r")[0] == 2


def test_a_join_gets_only_the_unexpired_messages_in_store_order():
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 0), ("other", 1), ("r", 30), ("r", 50)])
    assert ids(window.backlog(("r",), None).entries) == [sent[0].id, sent[2].id, sent[3].id]
    clock.now += TTL + 2  # sent[0] (0 s) and sent[1] (1 s) are past 60 s old; 30 s and 50 s are not
    backlog = window.backlog(("r", "other"), None)
    assert backlog.reset_reason is None
    assert ids(backlog.entries) == [sent[2].id, sent[3].id]
    clock.now += 50  # now all of them
    assert window.backlog(("r", "other"), None).entries == []


def test_a_message_is_judged_by_its_own_stamp_not_its_place_in_store_order():
    """Stamps are made before the write lands: store order and createdAt order may differ a little."""
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 10), ("r", 5), ("r", 20)])  # the second was stamped before the first
    clock.now += TTL + 7  # only the one stamped at 5 s is past the TTL
    assert ids(window.backlog(("r",), None).entries) == [sent[0].id, sent[2].id]
    backlog = window.backlog(("r",), sent[0].id)  # the client missed the expired one
    assert (backlog.reset_reason, ids(backlog.entries)) == (EXPIRED_REASON, [sent[0].id, sent[2].id])


def test_a_resume_is_exact_while_nothing_after_its_id_has_expired_even_if_the_id_itself_has():
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 0), ("r", 30), ("r", 40)])
    clock.now += TTL + 10  # sent[0] expired; the client read it, and nothing after it expired
    backlog = window.backlog(("r",), sent[0].id)
    assert backlog.reset_reason is None
    assert ids(backlog.entries) == [sent[1].id, sent[2].id]


def test_a_resume_that_missed_an_expired_message_gets_reset_expired_then_what_is_left():
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 0), ("r", 5), ("other", 6), ("r", 30), ("r", 40)])
    clock.now += TTL + 10  # sent[0..2] expired; the client had read sent[0] only
    backlog = window.backlog(("r",), sent[0].id)
    assert backlog.reset_reason == EXPIRED_REASON
    assert ids(backlog.entries) == [sent[3].id, sent[4].id]
    # Another room's expired message is none of this client's loss.
    assert window.backlog(("r",), sent[1].id).reset_reason is None
    # An id of a room not asked for is still unknown, not "expired": ids of private rooms stay unprobed.
    assert window.backlog(("r",), sent[2].id).reset_reason == UNKNOWN_ID_REASON


def test_an_unknown_id_gets_the_usual_reset_and_only_unexpired_messages():
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 0), ("r", 30)])
    clock.now += TTL + 10
    backlog = window.backlog(("r",), "nowhere")
    assert (backlog.reset_reason, ids(backlog.entries)) == (UNKNOWN_ID_REASON, [sent[1].id])


def test_a_slow_backlog_skips_what_expires_while_it_is_written():
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 0), ("r", 1), ("r", 50)])
    cursor = window.cursor(("r",), None)
    assert ids(cursor.take(1)) == [sent[0].id]
    clock.now += TTL + 2  # sent[1] expires before its turn
    assert ids(cursor.take(10**6)) == [sent[2].id]
    assert cursor.take(10**6) == []


def test_messages_that_arrive_expired_are_held_but_never_published():
    """A tailer that was away longer than the TTL reads messages that are already too old."""
    clock = Clock()
    clock.now += 1000
    window = expiring_window(clock)
    messages = [Message(id=f"id{n}", room="r", text="x", event="message",
                        created_at=START + timedelta(seconds=age)) for n, age in enumerate([0, 990])]
    added = window.extend([(n + 1, message) for n, message in enumerate(messages)])
    assert ids(added) == ["id1"]
    assert window.holds("id0")  # so that a resume from it can tell what the client missed


def test_room_counts_and_the_room_list_leave_expired_messages_out():
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("gone", 0), ("r", 0), ("r", 30), ("r", 20)])
    assert window.room_summary("r") == (3, window.room_summary("r")[1])
    clock.now += TTL + 25  # 0 s and 20 s expired; the one stamped 30 s (not the newest placed) is left
    count, newest = window.room_summary("r")
    assert (count, newest.id) == (1, sent[2].id)
    assert window.room_summary("gone") == (0, None)
    assert window.rooms() == ["r"]


def test_a_stream_that_resumes_past_an_expired_message_is_told_expired():
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 0), ("r", 5), ("r", 40)])
    clock.now += TTL + 10
    hub = Hub(queue_limit=100, heartbeat_seconds=30)
    stream = message_stream(("r",), sent[0].id, window=window, hub=hub, store=None,
                            settings=StreamSettings(retry_ms=1000))
    try:
        assert next(stream) == b"retry: 1000\n\n"
        reset = next(stream)
        assert b"event: reset\n" in reset and json.loads(reset.split(b"data: ")[1]) == {"reason": "expired"}
        assert next(stream).startswith(f"id: {sent[2].id}\n".encode())
    finally:
        stream.close()


# -- the store: SQLite deletes, history read from the store filters ----------------------------

def age_rows(path: str, seconds: float) -> None:
    """Move every stored message's createdAt back by ``seconds``, as if it had been stored that long ago."""
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE messages SET created_ms = created_ms - ?", (int(seconds * 1000),))


def stored(path: str) -> tuple[list[str], int, int]:
    """Return the texts the file holds, and its own count and bytes of them."""
    with sqlite3.connect(path) as conn:
        texts = [text for (text,) in conn.execute("SELECT text FROM messages ORDER BY seq")]
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('count', 'bytes')"))
    return texts, meta["count"], meta["bytes"]


def test_sqlite_deletes_expired_rows_as_it_appends_and_keeps_its_bound_true(tmp_path):
    path = str(tmp_path / "s.sqlite3")
    store = SQLiteStore(path, max_bytes=10**6, max_messages=100, message_ttl_seconds=TTL)
    for text in ("a", "b", "c"):
        store.append("r", text, "message")
    age_rows(path, TTL + 1)
    kept = store.append("r", "d", "message")
    texts, count, size = stored(path)
    assert texts == ["d"] and count == 1
    assert size == 1 + 1 + len("message") + 64  # the stored size of "d" alone
    assert store.newest_id() == kept.id
    store.close()


def test_sqlite_keeps_an_idempotency_key_while_its_expired_row_is_stored_and_forgets_it_once_deleted(tmp_path):
    # The README's "Message expiry": a retry after the TTL is answered with the
    # expired message until a later append deletes its row, then stores anew.
    path = str(tmp_path / "s.sqlite3")
    store = SQLiteStore(path, max_bytes=10**6, max_messages=100, message_ttl_seconds=TTL)
    first = store.append_once("r", "a", "message", "k1")
    age_rows(path, TTL + 1)
    retry = store.append_once("r", "a", "message", "k1")
    assert retry.replayed and retry.message.id == first.message.id
    store.append("other", "b", "message")  # deletes the expired row, and the key with it
    again = store.append_once("r", "a", "message", "k1")
    assert not again.replayed and again.message.id != first.message.id
    store.close()


def test_sqlite_without_a_ttl_deletes_nothing(tmp_path):
    path = str(tmp_path / "s.sqlite3")
    store = SQLiteStore(path, max_bytes=10**6, max_messages=100)
    store.append("r", "a", "message")
    age_rows(path, 10**6)
    store.append("r", "b", "message")
    assert stored(path)[0] == ["a", "b"]
    store.close()



def two_expired_then_two_fresh(tmp_path):
    """Return a SQLite store holding two expired messages then two fresh ones, and a window that never warmed.

    The store keeps its expired rows (no TTL of its own): the read's filter must work alone.
    """
    path = str(tmp_path / "s.sqlite3")
    store = SQLiteStore(path, max_bytes=10**6, max_messages=100)
    old = [store.append("r", text, "message") for text in ("a", "b")]
    age_rows(path, TTL + 1)
    fresh = [store.append("r", text, "message") for text in ("c", "d")]
    return store, old, fresh, Window(max_messages=100, max_bytes=10**6, expiry=Expiry(TTL, store.store_time))


def test_history_read_from_the_store_leaves_expired_messages_out_and_resets_past_them(tmp_path):
    """The store path (a window that lags) answers as the window would."""
    store, old, fresh, window = two_expired_then_two_fresh(tmp_path)
    found = read_history(("r",), None, 1, window=window, store=store)
    assert ([m.id for m in found.messages], found.reset_reason) == ([fresh[0].id], None)
    found = read_history(("r",), old[0].id, 10, window=window, store=store)
    assert ([m.id for m in found.messages], found.reset_reason) == ([m.id for m in fresh], EXPIRED_REASON)
    found = read_history(("r",), fresh[0].id, 10, window=window, store=store)
    assert ([m.id for m in found.messages], found.reset_reason) == ([fresh[1].id], None)
    store.close()


# -- with the chat reads: the newest N and scrollback ----------------------------------------------

def test_the_newest_n_on_connect_are_the_newest_unexpired():
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 0), ("r", 1), ("r", 30), ("r", 10), ("r", 40)])  # sent[3] stamped out of order
    clock.now += TTL + 15  # sent[0], sent[1] and sent[3] (10 s) have expired
    cursor = window.cursor(("r",), None, newest=2)
    assert ids(cursor.pending()) == [sent[2].id, sent[4].id]
    cursor = window.cursor(("r",), None, newest=5)  # more asked for than are left: what is left
    assert ids(cursor.pending()) == [sent[2].id, sent[4].id]


def test_a_resume_past_an_expired_message_with_backlog_gets_reset_expired_then_the_newest_n():
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 0), ("r", 5), ("r", 30), ("r", 40), ("r", 50)])
    clock.now += TTL + 10  # sent[0] and sent[1] expired; the client had read sent[0] only
    cursor = window.cursor(("r",), sent[0].id, newest=1)
    assert (cursor.reset_reason, ids(cursor.pending())) == (EXPIRED_REASON, [sent[4].id])
    # Nothing it missed expired: exact, and backlog is ignored.
    cursor = window.cursor(("r",), sent[1].id, newest=1)
    assert (cursor.reset_reason, ids(cursor.pending())) == (None, [sent[2].id, sent[3].id, sent[4].id])


def test_scrollback_leaves_expired_messages_out_from_the_window_and_from_the_store(tmp_path):
    clock = Clock()
    window = expiring_window(clock)
    sent = feed(window, [("r", 0), ("r", 30), ("r", 40), ("r", 50)])
    clock.now += TTL + 10  # sent[0] expired
    page = window.before(("r",), sent[3].id, 10)
    assert (ids(page.entries), page.reset_reason) == ([sent[1].id, sent[2].id], None)
    # The store's answer (a window that has not caught up) leaves them out too.
    store, old, fresh, lagging = two_expired_then_two_fresh(tmp_path)
    found = read_history_before(("r",), fresh[1].id, 10, window=lagging, store=store)
    assert ([m.id for m in found.messages], found.reset_reason) == ([fresh[0].id], None)
    assert old  # stored, expired, and on no page
    store.close()


@pytest.mark.mongodb
def test_mongodb_stamps_and_judges_ages_on_the_database_servers_clock(mongodb_uri, mongodb_database):
    """Two nodes whose clocks disagree must agree on a message's age: both read the server's clock."""
    from app.stores.mongo import MongoStore

    store = MongoStore(mongodb_uri, mongodb_database, max_bytes=10**6, max_messages=1000)
    try:
        store._server_now()  # measures the offset from hello's localTime, as presence does once a minute
        store._clock_offset += timedelta(seconds=100)  # as if this node's clock ran 100 s behind the server's
        before = time.time()
        message = store.append("r", "stamped", "message")
        assert 99 < message.created_at.timestamp() - before < 102
        assert 99 < store.store_time() - time.time() < 101
        (read,) = store.read_room("r").messages
        assert read.created_at == message.created_at  # the stamp the reply showed is the one stored
    finally:
        store.close()
