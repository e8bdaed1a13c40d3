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

Every chunk is written under a deadline (``write_timeout_seconds``): a reader
that stops reading fills the socket buffers, the server's write blocks, and
without a deadline the stream would hold its slot for ever. When the deadline
passes, the connection is reset (``ReaderStalled``) and the client resumes
exactly from its Last-Event-ID on reconnect. Its bounded queue
(``Subscription.limit``) caps the memory it can hold meanwhile.
"""
from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import gevent

from .events import HEARTBEAT, message_event, reset_event, retry_line
from .hub import Hub, Subscription
from .metrics import DROP_SLOW, DROP_STALLED, EVENTS_DELIVERED, RESETS_SENT, STORE_ERRORS, STREAMS_DROPPED
from .stores.base import MessageStore, StoreUnavailable
from .tailer import Tailer

log = logging.getLogger(__name__)

STORE_UNAVAILABLE_COMMENT = b": store unavailable, reconnect later\n\n"


@dataclass(frozen=True, slots=True)
class StreamSettings:
    heartbeat_seconds: float
    retry_ms: int
    write_timeout_seconds: float = 30.0


class ReaderStalled(ConnectionResetError):
    """A chunk could not be written in time: the server resets the connection."""


@dataclass(slots=True)
class _Outcome:
    """What the end-of-stream log line reports."""

    events: int = 0
    ended_by: str = "client gone"


def message_stream(room: str, last_id: str | None, *, store: MessageStore, hub: Hub,
                   tailer: Tailer, settings: StreamSettings) -> Iterator[bytes]:
    """Yield the bytes of one room's stream, resuming after ``last_id``."""
    started = time.monotonic()
    outcome = _Outcome()
    try:
        yield from _send(retry_line(settings.retry_ms), settings, outcome)
        while True:
            subscription = hub.subscribe(room)
            try:
                try:
                    chunk, count, last_id, cut_id = _catch_up(store, room, last_id)
                except StoreUnavailable:
                    STORE_ERRORS.labels("stream").inc()
                    outcome.ended_by = "store unavailable"
                    # A 200 stream that ends makes EventSource retry; an error
                    # status would make it give up for good.
                    yield from _send(STORE_UNAVAILABLE_COMMENT, settings, outcome)
                    return
                if chunk:
                    yield from _send(chunk, settings, outcome)
                    _count_events(outcome, count)
                for chunk, count, sent_last_id in _live(subscription, tailer, cut_id, last_id, settings):
                    yield from _send(chunk, settings, outcome)
                    _count_events(outcome, count)
                    last_id = sent_last_id  # where a resync re-reads from
                if subscription.closing:
                    outcome.ended_by = "shutdown"
                    # Spread the reconnects of a shutting-down worker's clients.
                    yield from _send(retry_line(int(settings.retry_ms * (1 + random.random()))), settings, outcome)
                    return
                if not subscription.resync:
                    # Overflowed: the client resumes from the store on reconnect.
                    outcome.ended_by = "slow"
                    STREAMS_DROPPED.labels(DROP_SLOW).inc()
                    return
            finally:
                hub.unsubscribe(subscription)
    finally:
        log.info("stream end room=%s duration=%.3fs events=%d ended_by=%s",
                 room, time.monotonic() - started, outcome.events, outcome.ended_by)


def _send(chunk: bytes, settings: StreamSettings, outcome: _Outcome) -> Iterator[bytes]:
    """Yield one chunk; if the server cannot write it in time, reset the connection.

    The timer runs in this greenlet while it is suspended here, that is while
    the WSGI server writes the chunk; ECONNRESET makes gunicorn close the
    socket quietly, as it does when a client goes away.
    """
    timer = gevent.Timeout.start_new(
        settings.write_timeout_seconds,
        ReaderStalled(errno.ECONNRESET, f"no write progress for {settings.write_timeout_seconds:g}s"),
    )
    try:
        yield chunk
    except GeneratorExit:
        if not timer.pending:  # it fired: this was our reset, not the client's
            outcome.ended_by = "stalled"
            STREAMS_DROPPED.labels(DROP_STALLED).inc()
        raise
    finally:
        timer.close()


def _count_events(outcome: _Outcome, count: int) -> None:
    if count:
        outcome.events += count
        EVENTS_DELIVERED.inc(count)  # one update per chunk, not per event


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


def _live(subscription: Subscription, tailer: Tailer, cut_id: str | None, last_id: str | None,
          settings: StreamSettings) -> Iterator[tuple[bytes, int, str | None]]:
    """Yield (bytes, events, last id) for live events after ``cut_id``, and heartbeats in silence."""
    cut = -1 if cut_id is None else tailer.position_of(cut_id)
    while True:
        events = subscription.take(settings.heartbeat_seconds)
        if subscription.interrupted:
            return
        if not events:
            yield HEARTBEAT, 0, last_id
            continue
        if cut is None:
            cut = tailer.position_of(cut_id)
            if cut is None:
                continue  # the tailer has not reached cut_id: all of these precede it
        fresh = [event for event in events if event.position > cut]
        if fresh:
            cut = fresh[-1].position
            last_id = fresh[-1].id
            yield b"".join(event.payload for event in fresh), len(fresh), last_id
