"""One SSE stream's life: retry line, backlog, then live events, with an exact hand-over.

The join is *subscribe first, then read the backlog, then de-duplicate by
position*: the subscription buffers every live event from the moment it
exists, the backlog read that follows covers everything committed before it,
and a live event is sent only if it comes after the last thing the client
already has (the last backlog message, or its own Last-Event-ID) in store
order. Positions come from the tailer, which reads in store order: if it has
not yet read the cut-off message, every event it has emitted so far precedes
that message and is dropped until the position becomes known.

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
"""
from __future__ import annotations

import _socket
import logging
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from gevent.hub import get_hub

from .events import HEARTBEAT, message_event, reset_event, retry_line
from .hub import Hub, Subscription
from .metrics import DROP_SLOW, RESETS_SENT, STORE_ERRORS, STREAMS_DROPPED
from .stores.base import MessageStore, StoreUnavailable
from .tailer import Tailer

log = logging.getLogger(__name__)

STORE_UNAVAILABLE_COMMENT = b": store unavailable, reconnect later\n\n"


@dataclass(frozen=True, slots=True)
class StreamSettings:
    retry_ms: int


@dataclass(slots=True)
class _Outcome:
    """What the end-of-stream log line reports."""

    events: int = 0
    ended_by: str = "client gone"


def message_stream(room: str, last_id: str | None, *, store: MessageStore, hub: Hub, tailer: Tailer,
                   settings: StreamSettings, client_socket: socket.socket | None = None) -> Iterator[bytes]:
    """Yield the bytes of one room's stream, resuming after ``last_id``."""
    started = time.monotonic()
    outcome = _Outcome()
    try:
        yield retry_line(settings.retry_ms)
        while True:
            subscription = hub.subscribe(room)
            watcher = _watch_for_close(client_socket, subscription)
            try:
                try:
                    chunk, count, last_id, cut_id = _catch_up(store, room, last_id)
                except StoreUnavailable:
                    STORE_ERRORS.labels("stream").inc()
                    outcome.ended_by = "store unavailable"
                    # A 200 stream that ends makes EventSource retry; an error
                    # status would make it give up for good.
                    yield STORE_UNAVAILABLE_COMMENT
                    return
                if chunk:
                    yield from _send(chunk, count, subscription, hub, outcome)
                for chunk, count, sent_last_id in _live(subscription, tailer, cut_id, last_id):
                    yield from _send(chunk, count, subscription, hub, outcome)
                    last_id = sent_last_id  # where a resync re-reads from
                if subscription.gone:
                    return
                if subscription.closing:
                    outcome.ended_by = "shutdown"
                    # Spread the reconnects of a shutting-down worker's clients.
                    yield retry_line(int(settings.retry_ms * (1 + random.random())))
                    return
                if not subscription.resync:
                    # Overflowed: the client resumes from the store on reconnect.
                    outcome.ended_by = "slow"
                    STREAMS_DROPPED.labels(DROP_SLOW).inc()
                    return
            finally:
                if watcher is not None:
                    watcher.close()
                hub.unsubscribe(subscription)
    finally:
        log.info("stream end room=%s duration=%.3fs events=%d ended_by=%s",
                 room, time.monotonic() - started, outcome.events, outcome.ended_by)


def _send(chunk: bytes, count: int, subscription: Subscription, hub: Hub, outcome: _Outcome) -> Iterator[bytes]:
    """Yield one chunk with the write deadline armed; count what it delivered.

    The generator stays suspended here while the WSGI server writes the chunk,
    so ``writing_since`` covers exactly the write. If the hub's sweeper resets
    a stalled write, the server closes this generator right here.
    """
    subscription.writing_since = time.monotonic()
    try:
        yield chunk
    except GeneratorExit:
        if subscription.stalled:
            outcome.ended_by = "stalled"
        raise
    subscription.writing_since = None
    subscription.last_sent = time.monotonic()
    if count:
        outcome.events += count
        hub.delivered += count  # into the metrics at the next sweep, not per chunk


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
            subscription.gone = True
            subscription.wake()

    watcher.start(readable)
    return watcher


def _catch_up(store: MessageStore, room: str, last_id: str | None) -> tuple[bytes, int, str | None, str | None]:
    """Return the backlog bytes, its message count, the new last id, and the id live events must come after."""
    backlog = store.read_room(room, after_id=last_id)
    parts = []
    cut_id = last_id
    if backlog.reset_reason is not None:
        parts.append(reset_event(backlog.reset_reason))
        RESETS_SENT.inc()
        last_id = cut_id = None
    parts.extend(message_event(message) for message in backlog.messages)
    if backlog.messages:
        last_id = cut_id = backlog.messages[-1].id
    return b"".join(parts), len(backlog.messages), last_id, cut_id


def _live(subscription: Subscription, tailer: Tailer, cut_id: str | None,
          last_id: str | None) -> Iterator[tuple[bytes, int, str | None]]:
    """Yield (bytes, events, last id) for live events after ``cut_id``, and heartbeats in silence."""
    cut = -1 if cut_id is None else tailer.position_of(cut_id)
    while True:
        events = subscription.take()
        if subscription.interrupted:
            return
        if not events:
            if subscription.heartbeat_due:
                subscription.heartbeat_due = False
                yield HEARTBEAT, 0, last_id
            continue
        if cut is None:
            cut = tailer.position_of(cut_id)
            if cut is None:
                continue  # the tailer has not reached cut_id: all of these precede it
        fresh = [event for event in events if event.position > cut]
        if fresh:
            subscription.heartbeat_due = False
            cut = fresh[-1].position
            last_id = fresh[-1].id
            yield b"".join(event.payload for event in fresh), len(fresh), last_id
