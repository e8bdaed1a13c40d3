"""One SSE stream's life: retry line, backlog, then live events, with an exact hand-over.

The join opens a cursor on the worker's in-memory window and subscribes to
the hub with no yield in between, so every message is in exactly one of the
two (see ``app/delivery/window.py``); a resume costs what it sends, whatever the
size of the store. Until the window is warm (start-up, or after the tailer
lost its place) the stream waits for it, with heartbeats.

Memory per stream is bounded by ``StreamSettings.chunk_bytes``
(``STREAM_CHUNK_BYTES``), never by what is stored: the backlog is written
from the shared window a slice at a time (the events' bytes as the window
encoded them, joined into one chunk of at most that size, or one event alone
-- no copy -- when it is larger), and so are live events when a queue has
piled up. A stream holds its cursor, not a list of its backlog; a reader
that does not read leaves one chunk (plus gunicorn's framed copy of it)
waiting in its write.

What one join sends is bounded too, in bytes sent: after
``backlog_max_bytes`` (``STREAM_BACKLOG_MAX_BYTES``) of backlog the stream
ends with a short ``retry:`` and EventSource resumes from its Last-Event-ID,
exactly where it left off; the next response restores ``RETRY_MS``. A bound
of its own rather than the window's bound counted in encoded bytes: the
window must hold at least what the store holds (an id it does not know is
then gone from the store too, and gets ``reset`` without a store query), and
the store's bound counts stored bytes, which JSON escaping can multiply by
six on the wire.

The backlog must be taken within ``Hub.write_timeout_seconds`` of the join
(the hub's sweeper resets a write that runs past it); a stream that has not
taken it by then, or whose unsent backlog the window evicted meanwhile,
ends, and the client resumes from its id -- exactly, or with ``reset`` when
the window no longer holds that id. Nothing is skipped silently.

The generator receives plain values (no request object) and releases its
subscription in ``finally``, which runs when the client goes away (the
failed heartbeat write closes the generator) or the stream ends.

Every chunk written while subscribed is under a deadline: the stream marks
when a write starts and the hub's sweeper resets the connection of one that
makes no progress for ``write_timeout_seconds`` (a reader that stopped
reading); the client resumes exactly from its Last-Event-ID on reconnect. Its
bounded queue (``Subscription.limit``) caps the memory it can hold meanwhile.

When the server can see the client's socket, it also watches it: a client
that closes its end (FIN) releases its stream at once, not at the next write.

A stream read with a token that expires (``expires_at``, the JWT's ``exp``)
ends then: the hub's sweeper ends its subscription, so delivery costs nothing
more. The client's EventSource reconnects and is answered 401 until it has a
new token.

Every way a stream ends, where it is decided and what the client gets:
``app/delivery/ending.py``.
"""
from __future__ import annotations

import _socket
import logging
import random
import socket
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from gevent.hub import get_hub

from ..operations.metrics import (
    DROP_SLOW,
    DROP_STALLED,
    QUERY_BACKLOG,
    RESETS_SENT,
    STORE_ERRORS,
    STORE_QUERIES,
    STREAMS_DROPPED,
)
from ..stores.base import MessageLog, StoreUnavailable
from .ending import EndReason
from .events import HEARTBEAT, as_default_event, reset_event, retry_line, spread_retry_ms
from .hub import Hub, Subscription
from .reading import wait_for_tailer, wait_for_window, window_has_everything
from .window import BacklogCursor, BacklogEvicted, Window

log = logging.getLogger(__name__)

STORE_UNAVAILABLE_COMMENT = b": store unavailable, reconnect later\n\n"
TOKEN_EXPIRED_COMMENT = b": token expired\n\n"
# The reconnect delay sent when a stream ends part-way through its backlog:
# the client comes back for the rest at once, not after RETRY_MS.
BACKLOG_CONTINUE_RETRY_MS = 100


@dataclass(frozen=True, slots=True)
class StreamSettings:
    retry_ms: int
    retry_jitter: float = 0.0  # the opening retry: is drawn from retry_ms x (1 +- this)
    window_wait_seconds: float = 10.0  # then the client is told to come back later
    chunk_bytes: int = 16_384  # most event bytes joined into one write (one larger event goes alone)
    backlog_max_bytes: int = 8 * 2**20  # backlog bytes one response sends before it ends for a resume


def message_stream(rooms: tuple[str, ...], last_id: str | None, *, window: Window, hub: Hub, store: MessageLog,
                   settings: StreamSettings, client_socket: socket.socket | None = None,
                   expires_at: float | None = None, backlog: int | None = None,
                   untyped: bool = False, subject: str | None = None, notices: bool = False,
                   anonymous_in: frozenset[str] = frozenset()) -> Iterator[bytes]:
    """Yield the bytes of a stream of one or more rooms, resuming after ``last_id``, until ``expires_at``.

    ``expires_at`` is a Unix time (the token's exp), None for no end.
    ``backlog``: without an id the window holds, start with only the rooms'
    newest ``backlog`` messages (None: all). ``untyped``: every message as
    the default event (no ``event:`` line). ``subject``: the stream's
    identity, for presence (None: anonymous), except in ``anonymous_in`` (its
    public rooms); ``notices``: it also gets the join and leave events of its
    rooms (``app/delivery/announcer.py``).
    """
    started = time.monotonic()
    # On the monotonic clock from here on, as the hub's sweeper reads it.
    deadline = None if expires_at is None else started + (expires_at - time.time())
    events = 0  # written, over the stream's subscriptions
    ended_by = EndReason.CLIENT_GONE  # unless something else ends it first
    try:
        yield retry_line(spread_retry_ms(settings.retry_ms, settings.retry_jitter))
        while True:
            refused = yield from _wait_to_join(last_id, window, store, hub.heartbeat_seconds, settings, deadline,
                                               newest=backlog is not None)
            if refused is not None:
                ended_by = refused
                # A 200 stream that ends makes EventSource retry; an error status would make it give up for good.
                yield TOKEN_EXPIRED_COMMENT if refused is EndReason.TOKEN_EXPIRED else STORE_UNAVAILABLE_COMMENT
                return
            # No yield between these two lines: the exact hand-over.
            cursor = window.cursor(rooms, last_id, backlog)
            subscription = hub.subscribe(rooms, deadline, subject=subject, notices=notices, anonymous_in=anonymous_in)
            # Only the first join is bounded: a re-join (resync) resumes from the cursor's last id.
            backlog = None
            watcher = _watch_for_close(client_socket, subscription)
            try:
                # The last id sent: where a resync joins again.
                last_id = yield from _send_backlog(cursor, subscription, hub.write_timeout_seconds, settings,
                                                   untyped)
                del cursor  # a parked stream keeps no cursor alive
                chunk, count, chunk_bytes = b"", 0, settings.chunk_bytes
                # The live loop is written out here, not in helper generators:
                # each generator level is one more C frame to resume on every
                # write, and to keep in every parked stream's saved stack.
                while chunk is not None:
                    if chunk:
                        subscription.writing_since = time.monotonic()
                        yield chunk
                        _written(subscription, count)
                    # A parked stream keeps no bytes alive (a backlog can be large).
                    chunk = None
                    # last_id: as above.
                    chunk, count, last_id = _next_chunk(subscription, last_id, chunk_bytes, untyped)
                if subscription.ended_by is not EndReason.RESYNC:
                    yield from _say_why(subscription, settings)
                    return
            finally:
                if subscription.ended_by is not EndReason.RESYNC:
                    # None: the server closed the response (a write failed) before anything else ended it.
                    ended_by = subscription.ended_by or EndReason.CLIENT_GONE
                if watcher is not None:
                    watcher.close()
                hub.unsubscribe(subscription)
                events += subscription.events
    finally:
        log.info("stream end room=%s duration=%.3fs events=%d ended_by=%s",
                 ",".join(rooms), time.monotonic() - started, events, ended_by)


def _wait_to_join(last_id: str | None, window: Window, store: MessageLog, heartbeat_seconds: float,
                  settings: StreamSettings, deadline: float | None,
                  newest: bool = False) -> Generator[bytes, None, EndReason | None]:
    """Wait, with heartbeats, until the window can answer a join after ``last_id``; return why not, if it cannot.

    The token's ``deadline`` bounds every wait and is checked after each: a
    join that waited past it (the store down, the window warming) must not
    send a single message the token no longer allows.

    ``newest``: a join without an id the window holds takes only the rooms'
    newest messages (``backlog``), so it first waits briefly for this
    worker's tailer to read the store's newest message (one indexed query):
    the newest N are then the store's, not those of a tailer a moment behind
    (whose later ones would follow live, more than N). An exact resume never
    asks.
    """
    caught_up = not newest
    while True:
        if _expired(deadline):
            return EndReason.TOKEN_EXPIRED
        if not window.ready.is_set():
            yield from wait_for_window(window, heartbeat_seconds, _patience(settings, deadline))
            if _expired(deadline):
                return EndReason.TOKEN_EXPIRED
            if not window.ready.is_set():
                STORE_ERRORS.labels("stream").inc()
                return EndReason.STORE_UNAVAILABLE
        if last_id is not None and not window.holds(last_id):
            try:
                yield from wait_for_tailer(last_id, window, store, heartbeat_seconds, _patience(settings, deadline))
            except StoreUnavailable:
                STORE_ERRORS.labels("stream").inc()
                return EndReason.STORE_UNAVAILABLE
            if not window.ready.is_set():
                continue  # The tailer lost its place meanwhile: wait for the window again.
            if _expired(deadline):
                return EndReason.TOKEN_EXPIRED
            if caught_up or window.holds(last_id):
                return None
        elif last_id is not None or caught_up:
            return None
        caught_up = True
        STORE_QUERIES.labels(QUERY_BACKLOG).inc()
        try:
            window_has_everything(window, store)  # not in time: the rest arrive live, nothing is lost
        except StoreUnavailable:
            STORE_ERRORS.labels("stream").inc()
            return EndReason.STORE_UNAVAILABLE
        if window.ready.is_set():
            return EndReason.TOKEN_EXPIRED if _expired(deadline) else None


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _patience(settings: StreamSettings, deadline: float | None) -> float:
    """How long a join may wait for the window or the tailer: never past the token's deadline."""
    if deadline is None:
        return settings.window_wait_seconds
    return max(0.0, min(settings.window_wait_seconds, deadline - time.monotonic()))


def _say_why(subscription: Subscription, settings: StreamSettings) -> Iterator[bytes]:
    """Write what the client is told when its subscription ended for ``ended_by`` (nothing, for some)."""
    reason = subscription.ended_by
    if reason is EndReason.SHUTDOWN:
        # Spread the reconnects of a shutting-down worker's clients.
        yield retry_line(int(settings.retry_ms * (1 + random.random())))
    elif reason is EndReason.TOKEN_EXPIRED:
        yield from _send(TOKEN_EXPIRED_COMMENT, 0, subscription)  # under the write deadline
    elif reason is EndReason.BACKLOG_BOUND:
        # EventSource resumes from the last id it got: the rest of the backlog, at once.
        yield from _send(retry_line(BACKLOG_CONTINUE_RETRY_MS), 0, subscription)
    elif reason in (EndReason.BACKLOG_TOO_SLOW, EndReason.BACKLOG_EVICTED):
        # It resumes from the last id it got: the rest, or ``reset`` if the window let go of that id.
        yield from _send(retry_line(settings.retry_ms), 0, subscription)
    elif reason is EndReason.SLOW:
        # Overflowed: the client resumes from its Last-Event-ID on reconnect.
        STREAMS_DROPPED.labels(DROP_SLOW).inc()


def _send(chunk: bytes, count: int, subscription: Subscription) -> Iterator[bytes]:
    """Yield one chunk with the write deadline armed; count what it delivered.

    The generator stays suspended here while the WSGI server writes the chunk,
    so ``writing_since`` covers exactly the write. If the hub's sweeper resets
    a stalled write, the server closes this generator right here.
    """
    subscription.writing_since = time.monotonic()
    yield chunk
    _written(subscription, count)


def _written(subscription: Subscription, count: int) -> None:
    """Disarm the write deadline and count the events the chunk delivered."""
    subscription.writing_since = None
    subscription.last_sent = time.monotonic()
    subscription.events += count  # into the metrics at the next sweep, not per chunk


def _watch_for_close(client_socket: socket.socket | None, subscription: Subscription):
    """Mark the subscription gone as soon as the client closes its end; return the watcher."""
    if client_socket is None:
        return None
    try:
        fd = client_socket.fileno()
    except OSError:
        return None
    watcher = get_hub().loop.io(fd, 1)  # 1: readable

    def readable() -> None:
        # Runs in the hub: peek through a plain socket object that cannot block.
        probe = _socket.socket(fileno=fd)
        try:
            data = probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        finally:
            probe.detach()
        watcher.stop()
        if not data:  # EOF: the client is gone. (If it sent bytes, writes will tell.)
            subscription.end(EndReason.CLIENT_GONE)

    watcher.start(readable)
    return watcher


def _send_backlog(backlog: BacklogCursor, subscription: Subscription, write_timeout_seconds: float,
                  settings: StreamSettings, untyped: bool = False) -> Generator[bytes, None, str | None]:
    """Write the backlog from the window, a slice at a time; return the id of the last entry sent.

    If it cannot send it all, it ends the subscription and says why; it also
    stops when something else ended the subscription meanwhile.
    """
    if backlog.reset_reason is not None:
        RESETS_SENT.inc()
        yield from _send(reset_event(backlog.reset_reason), 0, subscription)
    subscription.backlog_until = time.monotonic() + write_timeout_seconds
    sent = 0
    try:
        while subscription.ended_by is None:
            if sent >= settings.backlog_max_bytes:
                subscription.end(EndReason.BACKLOG_BOUND)
            elif time.monotonic() >= subscription.backlog_until:
                STREAMS_DROPPED.labels(DROP_STALLED).inc()
                subscription.end(EndReason.BACKLOG_TOO_SLOW)
            else:
                try:
                    entries = backlog.take(settings.chunk_bytes)
                except BacklogEvicted:
                    subscription.end(EndReason.BACKLOG_EVICTED)
                    break
                if not entries:
                    break
                chunk = _joined(entries, untyped)
                sent += len(chunk)
                yield from _send(chunk, len(entries), subscription)
        return backlog.last_id
    finally:
        subscription.backlog_until = None


def _joined(entries: list, untyped: bool) -> bytes:
    """Return the entries' events as one chunk (one event: the window's own bytes object, not a copy).

    ``untyped`` leaves join and leave events typed: ``as_default_event``
    cuts only an ``event:`` line that follows an ``id:`` line, and they have none.
    """
    if untyped:
        payloads = [as_default_event(entry.payload) for entry in entries]
        return payloads[0] if len(payloads) == 1 else b"".join(payloads)
    return entries[0].payload if len(entries) == 1 else b"".join(entry.payload for entry in entries)


def _next_chunk(subscription: Subscription, last_id: str | None,
                max_bytes: int, untyped: bool = False) -> tuple[bytes | None, int, str | None]:
    """Park until there is something to write: (bytes, events, last id); None bytes once the subscription ended.

    The bytes are the queued events in one chunk of at most ``max_bytes`` (or
    one larger event), or a heartbeat in silence (or empty after a wake-up
    with nothing to say).
    """
    entries = subscription.take(max_bytes)
    if subscription.ended_by is not None:
        return None, 0, last_id
    if entries:
        subscription.heartbeat_due = False
        newest = entries[-1].id
        if newest is None:  # a join or leave event, which has no id: the last message's id still holds
            newest = next((entry.id for entry in reversed(entries) if entry.id is not None), last_id)
        return _joined(entries, untyped), len(entries), newest
    if subscription.heartbeat_due:
        subscription.heartbeat_due = False
        return HEARTBEAT, 0, last_id
    return b"", 0, last_id
