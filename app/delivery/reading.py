"""Where a read is answered from: this worker's window, or the store -- decided here only.

The window answers once it holds what the read needs: a join or a resume is
always answered from it (``app/delivery/window.py`` says why), after waiting
for it to warm and, when the store already holds the client's id, for the
tailer to read that far; the history view asks for the window too, and reads
the store only when the window has not caught up with the store's newest
message in time. The callers (the stream, the history view) never look at the
store themselves: they get entries, or a reset reason, or ``StoreUnavailable``.
Either way expired messages (``MESSAGE_TTL_SECONDS``) are left out by the
same rule (``app/delivery/expiry.py``).
"""
from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import gevent.lock

from ..operations.metrics import QUERY_HISTORY, QUERY_RESUME, STORE_QUERIES
from ..stores.base import Message, MessageLog
from .events import HEARTBEAT
from .expiry import EXPIRED_REASON, Expiry
from .window import Entry, Window

HISTORY_TAILER_WAIT_SECONDS = 2.0  # then read the store instead


@dataclass(frozen=True, slots=True)
class History:
    """The messages a history read found (each with ``to_json``), or all with a reset reason."""

    messages: Sequence[Entry] | Sequence[Message]
    reset_reason: str | None = None


def read_history(rooms: Sequence[str], after_id: str | None, limit: int, *, window: Window,
                 store: MessageLog) -> History:
    """Return up to ``limit`` messages of the rooms after ``after_id`` (None: from the oldest), in store order.

    From the window when it holds every message committed so far, else from
    the store. Raises ``StoreUnavailable``.
    """
    STORE_QUERIES.labels(QUERY_HISTORY).inc()
    if window_has_everything(window, store):
        backlog = window.backlog(rooms, after_id, limit)
        return History(backlog.entries, backlog.reset_reason)
    if window.expiry.enabled:
        return _read_unexpired(rooms, after_id, limit, store, window.expiry)
    stored = store.read_rooms(rooms, after_id=after_id, limit=limit)
    return History(stored.messages, stored.reset_reason)


def read_history_before(rooms: Sequence[str], before_id: str, limit: int, *, window: Window,
                        store: MessageLog) -> History:
    """Return up to ``limit`` messages of the rooms just before ``before_id``, oldest first (scrollback).

    An id this worker's window holds is answered at once: the window holds
    every message the store still has before it. Otherwise (an id published
    through another worker a moment ago, or one not held at all: reset, and
    the newest page) as ``read_history``: the window once it has caught up,
    else the store. Raises ``StoreUnavailable``.
    """
    STORE_QUERIES.labels(QUERY_HISTORY).inc()
    if (window.ready.is_set() and window.holds(before_id)) or window_has_everything(window, store):
        backlog = window.before(rooms, before_id, limit)
        return History(backlog.entries, backlog.reset_reason)
    stored = store.read_rooms_before(rooms, before_id, limit)
    cutoff = window.expiry.cutoff()
    if cutoff is None:
        return History(stored.messages, stored.reset_reason)
    # Newest first from ``before_id``: once one has expired, the older ones
    # have too (stamps out of store order by a few milliseconds aside), so
    # leaving them out of the page leaves nothing unexpired behind it.
    return History([m for m in stored.messages if m.created_at.timestamp() >= cutoff], stored.reset_reason)


def _read_unexpired(rooms: Sequence[str], after_id: str | None, limit: int, store: MessageLog,
                    expiry: Expiry) -> History:
    """Read the store as the window would: expired messages left out, ``reset`` if one after ``after_id`` expired.

    Unbounded reads (at most the store's window): expired messages still
    stored must not fill the page. Only while the window lags the store.
    """
    stored = store.read_rooms(rooms, after_id=after_id)
    cutoff = expiry.cutoff()
    messages, reason = stored.messages, stored.reset_reason
    if reason is None and after_id is not None and any(m.created_at.timestamp() < cutoff for m in messages):
        messages, reason = store.read_rooms(rooms).messages, EXPIRED_REASON
    return History([m for m in messages if m.created_at.timestamp() >= cutoff][:limit], reason)


def window_has_everything(window: Window, store: MessageLog) -> bool:
    """Say whether the window holds every message committed so far, waiting briefly for its tailer.

    Read-your-writes: a client that just published (through any worker or
    node) must find its message in the history. One cheap query -- the
    store's newest id -- instead of a read of the room from the store.
    """
    if not window.ready.is_set():
        return False
    newest = _shared_newest_id(store).read()
    return newest is None or window.wait_to_hold(newest, HISTORY_TAILER_WAIT_SECONDS)


class SharedNewestId:
    """A store's newest id, one query at a time per worker, shared by every caller it can answer.

    Every backlog join, history page without ``after``/``before`` and
    scrollback from an unknown id asks for it: 300 clients joining at once
    were 300 queries, each a reverse scan on FerretDB (0.3 s with a 5 MB
    window), which starved the publishers (10 s timeouts, then 503s). Here a
    caller waits for the query running when it arrived to end, then takes the
    next one's answer -- started after it arrived, so it sees every commit
    the caller could have seen (read-your-writes) -- running it itself if
    nobody has yet. However many arrive, a worker runs one query at a time,
    and each caller waits for at most two.
    """

    def __init__(self, store: MessageLog) -> None:
        self._store = store
        self._lock = gevent.lock.Semaphore()
        self._started = 0  # queries started so far
        self._finished: tuple[int, str | None | BaseException] = (0, None)  # the newest answer and its number

    def read(self) -> str | None:
        """Return the store's newest id as a query started after this call read it; raise ``StoreUnavailable``."""
        arrived = self._started
        with self._lock:
            number, answer = self._finished
            if number <= arrived:  # not started after this call arrived: ask again
                self._started = number = self._started + 1
                try:
                    answer = self._store.newest_id()
                except Exception as exc:  # StoreUnavailable, given to those who shared the query too
                    answer = exc
                self._finished = (number, answer)
        if isinstance(answer, BaseException):
            raise answer
        return answer


_SHARED: weakref.WeakKeyDictionary[MessageLog, SharedNewestId] = weakref.WeakKeyDictionary()


def _shared_newest_id(store: MessageLog) -> SharedNewestId:
    shared = _SHARED.get(store)
    if shared is None:
        shared = _SHARED[store] = SharedNewestId(store)
    return shared


def wait_for_tailer(last_id: str, window: Window, store: MessageLog, heartbeat_seconds: float,
                    patience: float) -> Iterator[bytes]:
    """Wait while the store holds ``last_id`` but this worker's tailer has not read it yet.

    A client that read a message through another worker or node may be ahead
    of this worker's window by a few milliseconds; without this wait its id
    would look unknown and it would get ``reset`` and the whole room again.
    An id the store does not hold either is evicted or foreign: no wait.
    """
    STORE_QUERIES.labels(QUERY_RESUME).inc()
    if not store.contains(last_id):
        return
    deadline = time.monotonic() + patience
    while not window.wait_to_hold(last_id, min(heartbeat_seconds, max(0.0, deadline - time.monotonic()))):
        if not window.ready.is_set() or time.monotonic() >= deadline:
            return
        yield HEARTBEAT


def wait_for_window(window: Window, heartbeat_seconds: float, patience: float) -> Iterator[bytes]:
    """Wait up to ``patience`` seconds for the window to be warm, sending heartbeats meanwhile."""
    deadline = time.monotonic() + patience
    while not window.ready.wait(min(heartbeat_seconds, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            return
        yield HEARTBEAT
