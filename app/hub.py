"""Per-worker fan-out: one tailer feeds every open stream of this worker.

Rooms map to sets of subscriptions. A message is encoded to bytes once and the
same bytes object is queued for every subscriber of its room; each stream then
drains its whole queue into one socket write.

A subscription's queue is bounded: a reader that falls ``queue_limit`` events
behind is marked ``overflowed`` and its stream ends. It loses nothing -- the
client reconnects with Last-Event-ID and resumes from the store -- and it
cannot make the worker's memory grow without bound.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import gevent.event

from .events import message_event
from .metrics import SUBSCRIPTIONS
from .stores.base import Message


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """A message as the tailer saw it: its position in store order and its encoded bytes."""

    position: int
    id: str
    payload: bytes


class Subscription:
    """One stream's mailbox."""

    __slots__ = ("room", "limit", "_items", "_ready", "overflowed", "resync", "closing")

    def __init__(self, room: str, limit: int) -> None:
        self.room = room
        self.limit = limit
        self._items: list[LiveEvent] = []
        self._ready = gevent.event.Event()
        self.overflowed = False
        self.resync = False  # the tailer lost its place: re-read from the store
        self.closing = False  # the worker is shutting down

    def offer(self, event: LiveEvent) -> None:
        if len(self._items) >= self.limit:
            self.overflowed = True
        else:
            self._items.append(event)
        self._ready.set()

    def wake(self) -> None:
        self._ready.set()

    def take(self, timeout: float | None) -> list[LiveEvent]:
        """Return everything queued, waiting up to ``timeout`` seconds if nothing is."""
        if not self._items and not self._ready.is_set():
            self._ready.wait(timeout)
        self._ready.clear()
        items, self._items = self._items, []
        return items

    @property
    def interrupted(self) -> bool:
        return self.overflowed or self.resync or self.closing


class Hub:
    """Routes live events of this worker to the subscriptions of their room."""

    def __init__(self, queue_limit: int) -> None:
        self.queue_limit = queue_limit
        self._rooms: dict[str, set[Subscription]] = {}
        self.closed = False  # close_all() was called: the worker is shutting down

    @property
    def stream_count(self) -> int:
        return sum(len(subs) for subs in self._rooms.values())

    def subscribe(self, room: str) -> Subscription:
        subscription = Subscription(room, self.queue_limit)
        # A stream that joins after shutdown began ends as the others did.
        subscription.closing = self.closed
        self._rooms.setdefault(room, set()).add(subscription)
        SUBSCRIPTIONS.inc()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subs = self._rooms.get(subscription.room)
        if subs is not None and subscription in subs:
            subs.discard(subscription)
            SUBSCRIPTIONS.dec()
            if not subs:
                del self._rooms[subscription.room]

    def publish(self, entries: Iterable[tuple[int, Message]]) -> int:
        """Queue each message for its room's subscribers; return the deliveries queued."""
        delivered = 0
        for position, message in entries:
            subs = self._rooms.get(message.room)
            if not subs:
                continue
            event = LiveEvent(position, message.id, message_event(message))
            for subscription in subs:
                subscription.offer(event)
            delivered += len(subs)
        return delivered

    def _flag_all(self, flag: str) -> None:
        for subs in self._rooms.values():
            for subscription in subs:
                setattr(subscription, flag, True)
                subscription.wake()

    def resync_all(self) -> None:
        """Make every stream re-read from the store after its own last event."""
        self._flag_all("resync")

    def close_all(self) -> None:
        """Ask every stream to end, and any that joins later (worker shutdown)."""
        self.closed = True
        self._flag_all("closing")
