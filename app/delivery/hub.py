"""Per-worker fan-out: one tailer feeds every open stream of this worker.

Rooms map to sets of subscriptions. The window encoded each message to bytes
once; the hub queues that same entry for every subscriber of its room, and
each stream then drains its whole queue into one socket write.

Cost per delivery is what makes broadcast fast, so the hot path is lean:
* a waiting stream parks on a bare ``gevent.hub.Waiter`` (no Event, no timer);
  a publish queues the event for every subscriber and wakes the parked ones
  from one hub callback per batch of them, instead of one per subscriber;
* nothing on that path arms a timer: one *sweeper* greenlet per worker visits
  every subscription a few times per heartbeat interval, to wake the silent
  ones for a heartbeat, to reset the connection of a stream whose write has
  made no progress for ``write_timeout`` (a reader that stopped reading) or
  that is still writing its backlog ``write_timeout`` after it joined
  (``backlog_until``: a reader that reads, but too slowly to take it), to
  end a stream whose token expired (``expires_at``: a second late at most),
  and to add up the deliveries into the metrics once per visit.

A subscription's queue is bounded: a reader that falls ``queue_limit`` events
behind ends (``EndReason.SLOW``). It loses nothing -- the
client reconnects with Last-Event-ID and resumes from the window -- and it
cannot make the worker's memory grow without bound.

The hub asks a stream to end only through its subscription's methods
(``end``, ``reset``); how each way of ending plays out is said once, in
``app/delivery/ending.py``.
"""
from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterable

import gevent
from gevent.hub import Waiter, get_hub

from ..operations.metrics import DROP_STALLED, EVENTS_DELIVERED, STREAMS_DROPPED, SUBSCRIPTIONS
from .ending import EndReason
from .window import Entry

log = logging.getLogger(__name__)


class ReaderStalled(ConnectionResetError):
    """A chunk could not be written in time: the server resets the connection.

    ECONNRESET makes gunicorn close the socket quietly, as when a client leaves.
    """


class Notice:
    """A join or leave event queued beside the messages: it has no id, and is not in the stored order."""

    __slots__ = ("room", "payload")
    id = None  # read where a message's id is: the stream's last id stays as it was

    def __init__(self, room: str, payload: bytes) -> None:
        self.room = room
        self.payload = payload


class Subscription:
    """One stream's mailbox, and what the sweeper needs to know about its stream."""

    __slots__ = ("rooms", "limit", "_items", "_waiter", "ended_by", "heartbeat_due", "last_sent", "writing_since",
                 "backlog_until", "events", "_greenlet", "expires_at", "subject", "notices", "anonymous_in")

    def __init__(self, rooms: tuple[str, ...], limit: int, expires_at: float | None = None,
                 subject: str | None = None, notices: bool = False, anonymous_in: frozenset[str] = frozenset()) -> None:
        self.rooms = rooms
        self.subject = subject  # the stream's identity (Grant.subject), None: anonymous
        # Rooms where it is anonymous all the same: the public ones, where a token is not looked at. A stream
        # of a private room and the lobby otherwise listed its sub in the lobby, to anyone, and a stream of
        # the lobby alone did not.
        self.anonymous_in = anonymous_in
        self.notices = notices  # presence=1: it also gets join and leave events of its rooms
        self.limit = limit
        self._items: list[Entry | Notice] = []
        self._waiter: Waiter | None = None
        self.ended_by: EndReason | None = None  # set once, by end() (a reset overrides it: see the sweep)
        self.heartbeat_due = False
        self.last_sent = time.monotonic()
        self.writing_since: float | None = None
        self.backlog_until: float | None = None  # while its backlog is written: the time it must be done by
        self.events = 0  # written to the client by its stream; the sweeper adds them up into the metrics
        self._greenlet = gevent.getcurrent()  # the stream's: where a reset is raised
        self.expires_at = expires_at  # time.monotonic() when the stream's authorization ends

    def end(self, reason: EndReason) -> None:
        """End the stream for ``reason`` unless something ended it first, and wake it to say so."""
        if self.ended_by is None:
            self.ended_by = reason
            self.wake()

    def reset(self, timeout: float) -> None:
        """End the stream by resetting its connection: its blocked write raises ``ReaderStalled``.

        The reset overrides any earlier reason: the client did not get that end.
        """
        self.ended_by = EndReason.STALLED
        STREAMS_DROPPED.labels(DROP_STALLED).inc()
        # Scheduled through the hub, so the caller (the sweeper) carries on.
        gevent.kill(self._greenlet, ReaderStalled(errno.ECONNRESET, f"write not done within {timeout:g}s"))

    def ask_for_heartbeat(self) -> None:
        """Wake the stream to write a heartbeat if it has nothing else to write."""
        self.heartbeat_due = True
        self.wake()

    def offer(self, event: Entry | Notice) -> Waiter | None:
        """Queue an event; return the waiter to wake if the stream is parked."""
        if len(self._items) >= self.limit:
            if self.ended_by is None:  # fell queue_limit events behind
                self.ended_by = EndReason.SLOW
        else:
            self._items.append(event)
        waiter, self._waiter = self._waiter, None
        return waiter

    def wake(self) -> None:
        """Wake the stream from any greenlet (it re-checks ``ended_by`` and ``heartbeat_due``)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            get_hub().loop.run_callback(waiter.switch, None)

    def take(self, max_bytes: int) -> list[Entry | Notice]:
        """Return what is queued, up to ``max_bytes`` of payload (at least one event); park until there is some.

        Returns empty when the stream has ended or a heartbeat is due. The rest
        stays queued for the next chunk: a chunk -- which the stream joins
        into one bytes object and gunicorn copies once more to frame it --
        stays small whatever a slow reader let pile up.
        """
        if not self._items and self.ended_by is None and not self.heartbeat_due:
            waiter = self._waiter = Waiter()
            try:
                waiter.get()
            finally:
                self._waiter = None
        items = self._items
        if len(items) > 1:
            size = 0
            for count, item in enumerate(items):
                size += len(item.payload)
                if size > max_bytes and count:
                    self._items = items[count:]
                    return items[:count]
        self._items = []
        return items


def _add(counts: dict[str, int], key: str, step: int) -> None:
    """Add ``step`` to a count, dropping it at zero: a tally names only what it counts."""
    count = counts.get(key, 0) + step
    if count:
        counts[key] = count
    else:
        counts.pop(key, None)


# Streams woken per hub callback. gevent checks the clock every 50 callbacks
# and polls for I/O once its switch interval (5 ms) has passed, so small
# batches keep a publish to thousands of streams from holding POSTs and the
# tailer until the last stream has written, while still sparing a callback
# per subscriber. Measured with `BENCH_QUICK=1 BENCH_SYSTEMS=ours make bench`:
# one callback for all gave p99 243 ms at 100 msg/s x 1,000 streams and 839 ms
# cross-worker; batches of 4 gave 106 ms and 110 ms.
WAKE_BATCH = 4


def _switch_all(waiters: list[Waiter]) -> None:
    for waiter in waiters:
        waiter.switch(None)


class Hub:
    """Routes live events of this worker to the subscriptions of their room.

    A subscription may follow several rooms: it sits in each room's set, and
    since a publish walks its entries in store order, its queue receives them
    in store order whatever their rooms.
    """

    def __init__(self, queue_limit: int, heartbeat_seconds: float = 15.0, write_timeout_seconds: float = 30.0) -> None:
        self.queue_limit = queue_limit
        self.heartbeat_seconds = heartbeat_seconds
        self.write_timeout_seconds = write_timeout_seconds
        # Often enough that a heartbeat is never more than a quarter late.
        self.sweep_interval = min(1.0, heartbeat_seconds / 4)
        self._rooms: dict[str, set[Subscription]] = {}
        self._subscriptions: set[Subscription] = set()
        self._sweeper: gevent.Greenlet | None = None
        # Events written by streams that left, and the total the metrics have: the
        # sweeper adds up each subscription's own count rather than streams adding to the hub's.
        self._events_of_left = 0
        self._events_counted = 0
        self.closed = False  # close_all() was called: the worker is shutting down
        # Bumped whenever a stream joins or leaves: presence works out the rooms
        # again only when they may have changed (O(rooms) each time).
        self.changes = 0
        # Who follows each room (issue 16), kept as streams come and go (O(rooms of the stream)):
        # streams per identity, streams without one, and the streams that asked for join/leave events.
        self._subs: dict[str, dict[str, int]] = {}
        self._anonymous: dict[str, int] = {}
        self._noticed: dict[str, int] = {}

    def subscribers(self, room: str) -> int:
        """Return how many of this worker's streams follow ``room``."""
        return len(self._rooms.get(room, ()))

    def room_counts(self) -> dict[str, int]:
        """Return how many of this worker's streams follow each room that has any."""
        return {room: len(subs) for room, subs in self._rooms.items()}

    def identities(self, room: str) -> dict[str, int]:
        """Return the identities of this worker's streams that follow ``room``, and how many streams each has."""
        return dict(self._subs.get(room, {}))

    def room_identities(self) -> dict[str, dict[str, int]]:
        """Return, for each room followed by a stream with an identity, the identities and their streams."""
        return {room: dict(named) for room, named in self._subs.items()}

    def anonymous(self, room: str) -> int:
        """Return how many of this worker's streams follow ``room`` without an identity."""
        return self._anonymous.get(room, 0)

    def room_anonymous(self) -> dict[str, int]:
        """Return how many of this worker's streams follow each room without an identity (rooms that have any)."""
        return dict(self._anonymous)

    def noticed_rooms(self) -> list[str]:
        """Return the rooms that at least one of this worker's presence=1 streams follows."""
        return list(self._noticed)

    def announce(self, room: str, payload: bytes) -> None:
        """Queue a join or leave event for this worker's presence=1 streams of ``room``, and wake them."""
        if room not in self._noticed:
            return
        notice = Notice(room, payload)
        for subscription in self._rooms.get(room, ()):
            if subscription.notices:
                waiter = subscription.offer(notice)
                if waiter is not None:
                    get_hub().loop.run_callback(waiter.switch, None)

    def subscribe(self, rooms: tuple[str, ...], expires_at: float | None = None, *, subject: str | None = None,
                  notices: bool = False, anonymous_in: frozenset[str] = frozenset()) -> Subscription:
        """Register the calling greenlet's stream for the live events of some rooms, until ``expires_at``.

        ``subject``: the stream's identity (None: anonymous); ``notices``: it
        also gets join and leave events of its rooms; ``anonymous_in``: rooms
        where its identity is not counted (it is anonymous there).
        """
        subscription = Subscription(rooms, self.queue_limit, expires_at, subject, notices, anonymous_in)
        if self.closed:  # a stream that joins after shutdown began ends as the others did
            subscription.end(EndReason.SHUTDOWN)
        for room in rooms:
            self._rooms.setdefault(room, set()).add(subscription)
            self._count(room, subscription, 1)
        self._subscriptions.add(subscription)
        self.changes += 1
        SUBSCRIPTIONS.inc()
        if self._sweeper is None or self._sweeper.dead:
            self._sweeper = gevent.spawn(self._sweep_forever)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription not in self._subscriptions:
            return
        self._subscriptions.discard(subscription)
        self._events_of_left += subscription.events
        self.changes += 1
        SUBSCRIPTIONS.dec()
        for room in subscription.rooms:
            subs = self._rooms.get(room)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._rooms[room]
            self._count(room, subscription, -1)

    def _count(self, room: str, subscription: Subscription, step: int) -> None:
        """Count a stream of ``room`` in (step 1) or out (-1) of its identity's and its notices' tallies."""
        if subscription.subject is None or room in subscription.anonymous_in:
            _add(self._anonymous, room, step)
        else:
            named = self._subs.setdefault(room, {})
            _add(named, subscription.subject, step)
            if not named:
                del self._subs[room]
        if subscription.notices:
            _add(self._noticed, room, step)

    def publish(self, entries: Iterable[Entry]) -> int:
        """Queue each entry for its room's subscribers and wake them; return the deliveries queued."""
        queued = 0
        waiters: list[Waiter] = []
        for entry in entries:
            subs = self._rooms.get(entry.room)
            if not subs:
                continue
            for subscription in subs:
                waiter = subscription.offer(entry)
                if waiter is not None:
                    waiters.append(waiter)
            queued += len(subs)
        loop = get_hub().loop
        for start in range(0, len(waiters), WAKE_BATCH):
            loop.run_callback(_switch_all, waiters[start:start + WAKE_BATCH])
        return queued

    def _end_all(self, reason: EndReason) -> None:
        for subscription in self._subscriptions:
            subscription.end(reason)

    def resync_all(self) -> None:
        """Make every stream join again once the window is warm, after its own last event."""
        self._end_all(EndReason.RESYNC)

    def close_all(self) -> None:
        """Ask every stream to end, and any that joins later (worker shutdown)."""
        self.closed = True
        self._end_all(EndReason.SHUTDOWN)

    def sweep(self, now: float) -> None:
        """Wake silent streams for a heartbeat, reset stalled writers, end expired ones, flush delivery counts."""
        events = self._events_of_left
        for subscription in list(self._subscriptions):
            events += subscription.events
            if subscription.expires_at is not None and now >= subscription.expires_at:
                # Ends after its current write, if any: the write deadline still guards that.
                subscription.end(EndReason.TOKEN_EXPIRED)
            if subscription.writing_since is not None:
                cut_at = subscription.writing_since + self.write_timeout_seconds
                if subscription.backlog_until is not None:
                    cut_at = min(cut_at, subscription.backlog_until)
                if now > cut_at and subscription.ended_by is not EndReason.STALLED:
                    subscription.reset(self.write_timeout_seconds)
            elif now - subscription.last_sent >= self.heartbeat_seconds:
                subscription.ask_for_heartbeat()
        if events > self._events_counted:
            EVENTS_DELIVERED.inc(events - self._events_counted)
            self._events_counted = events

    def _sweep_forever(self) -> None:
        while True:
            gevent.sleep(self.sweep_interval)
            try:
                self.sweep(time.monotonic())
            except Exception:  # heartbeats of the whole worker depend on this loop
                log.exception("hub sweep failed")
