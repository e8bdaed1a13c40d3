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
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from .events import HEARTBEAT, message_event, reset_event, retry_line
from .hub import Hub, Subscription
from .stores.base import MessageStore, StoreUnavailable
from .tailer import Tailer


@dataclass(frozen=True, slots=True)
class StreamSettings:
    heartbeat_seconds: float
    retry_ms: int


def message_stream(room: str, last_id: str | None, *, store: MessageStore, hub: Hub,
                   tailer: Tailer, settings: StreamSettings) -> Iterator[bytes]:
    """Yield the bytes of one room's stream, resuming after ``last_id``."""
    yield retry_line(settings.retry_ms)
    while True:
        subscription = hub.subscribe(room)
        try:
            try:
                chunk, last_id, cut_id = _catch_up(store, room, last_id)
            except StoreUnavailable:
                # A 200 stream that ends makes EventSource retry; an error
                # status would make it give up for good.
                yield b": store unavailable, reconnect later\n\n"
                return
            if chunk:
                yield chunk
            for chunk, seen_id in _live(subscription, tailer, cut_id, last_id, settings):
                last_id = seen_id
                yield chunk
            if subscription.closing:
                # Spread the reconnects of a shutting-down worker's clients.
                yield retry_line(int(settings.retry_ms * (1 + random.random())))
                return
            if not subscription.resync:
                return  # overflowed: the client resumes from the store on reconnect
        finally:
            hub.unsubscribe(subscription)


def _catch_up(store: MessageStore, room: str, last_id: str | None) -> tuple[bytes, str | None, str | None]:
    """Return the backlog bytes, the new last id, and the id live events must come after."""
    backlog = store.read_room(room, after_id=last_id)
    parts = []
    cut_id = last_id
    if backlog.reset_reason is not None:
        parts.append(reset_event(backlog.reset_reason))
        last_id = cut_id = None
    parts.extend(message_event(message) for message in backlog.messages)
    if backlog.messages:
        last_id = cut_id = backlog.messages[-1].id
    return b"".join(parts), last_id, cut_id


def _live(subscription: Subscription, tailer: Tailer, cut_id: str | None, last_id: str | None,
          settings: StreamSettings) -> Iterator[tuple[bytes, str | None]]:
    """Yield (bytes, last id) for live events after ``cut_id``, and heartbeats in silence."""
    cut = -1 if cut_id is None else tailer.position_of(cut_id)
    while True:
        events = subscription.take(settings.heartbeat_seconds)
        if subscription.interrupted:
            return
        if not events:
            yield HEARTBEAT, last_id
            continue
        if cut is None:
            cut = tailer.position_of(cut_id)
            if cut is None:
                continue  # the tailer has not reached cut_id: all of these precede it
        fresh = [event for event in events if event.position > cut]
        if fresh:
            cut = fresh[-1].position
            last_id = fresh[-1].id
            yield b"".join(event.payload for event in fresh), last_id
