"""Presence: how many open streams follow each room, on every worker of every node.

There is no broker between workers or nodes but the store, so presence goes
through it too. Each worker keeps one entry in the store -- its streams per
room, from its hub -- that expires ``ttl`` seconds after it was last written
or refreshed, and keeps it from a greenlet:

* the entry names at most ``max_rooms`` rooms (``PRESENCE_MAX_ROOMS``): those
  in which it named someone already, then those with someone to name, then the
  busiest; the others are counted, not named. A client may name 32 rooms per
  stream, made up or not, and so without the bound could make every worker
  write an entry as large as it likes, as often as it likes;
* when what it would write changes (looked at every ``check_interval``), it
  rewrites the entry, but at most once per ``write_interval``, so a stream
  that opens or closes shows everywhere within about that plus a reader's
  cache, and a client that opens and closes streams all the time cannot make
  the worker write more often;
* while nothing changes it only moves the expiry on, every ``refresh_interval``
  (a third of ``ttl``): a small write, not the whole entry again. Sound for
  expiry: the entry is exactly what was last written, and if it is gone (swept
  after the worker stalled for a minute, or the store was emptied) the
  refresh says so and the entry is written whole. A killed worker refreshes
  nothing, so its entry still expires ``ttl`` after its last write;
* a worker with no streams writes nothing; it withdraws its entry once,
  when its last stream ends.

The entry also says who follows its named rooms (issue 16): each identity
(``Grant.subject``) and its streams, and the anonymous streams, at most
``max_identities`` (room, identity) pairs (``PRESENCE_MAX_IDENTITIES``: those
it named already, then those with the most streams), the rest counted. A client with tokens for made-up
names, or a hook that names a new one per request, grows a count, not the
write. ``identities(room)`` reads them as ``subscribers`` reads counts, and
``app/delivery/announcer.py`` turns their changes into join and leave events.

A write that fails is tried again a check later, then less and less often
while the failures go on, down to once per ``refresh_interval``: one failed
write (FerretDB refuses one now and then; any store can drop a connection)
must not hold a change back past the 2 s promised, and a store that is down
is not hammered. The waits are jittered, so workers that failed together (on
FerretDB, two upserts at once: "database is locked") do not collide again.
It is logged as one line when the failures start, then at most once a minute
while they go on, and once when writing works again -- never a traceback a
second.

A worker that stops cleanly withdraws its entry (SIGTERM, see
``app/operations/lifecycle.py``); a killed one's expires ``ttl`` after its
last refresh.

Reading: ``subscribers(room)`` adds this worker's live count of the room
(exact, from its hub) to the other workers' entries; ``report()`` adds this
worker's own entry, bounded as it is written, so every worker lists the same
rooms. The other workers' entries are read from the store at most once per
``cache_seconds`` per worker, however many requests ask. When a read fails,
what was read up to ``stale_seconds`` ago still answers: a blip of the store
(FerretDB interrupts a query now and then) is no reason for a 503.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import secrets
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import gevent
import gevent.event
import gevent.lock

from ..operations.metrics import QUERY_PRESENCE, STORE_ERRORS, STORE_QUERIES
from ..stores.base import PresenceReport, PresenceStore, StoreUnavailable, nameable
from .announcer import LEAVE_GRACE, Announcer
from .hub import Hub

log = logging.getLogger(__name__)

CHECK_INTERVAL = 0.25
# A change is written at most this often: still within the 2 s promised
# (this, plus a look, plus a reader's cache of 0.5 s).
WRITE_INTERVAL = 0.5
REFRESH_INTERVAL = 1.0
# Three refreshes: a worker whose loop is held up for a moment does not
# vanish, and a killed one is gone within about three seconds.
TTL = 3.0
CACHE_SECONDS = 0.5
# With a change written within WRITE_INTERVAL, still within the 2 s promised.
STALE_SECONDS = 1.5
MAX_ROOMS = 1000
# (room, identity) pairs one entry names (PRESENCE_MAX_IDENTITIES).
MAX_IDENTITIES = 1000
# Working an entry out again waits at least this many times what the last one cost. It is O(rooms
# followed), in the worker's one thread: 10,000 streams of 32 made-up rooms each (320,000 rooms)
# cost ~0.3-0.9 s a time, twice a second under churn, and the worker's other streams stalled
# behind it (publishes ~0.5 s each, a delivery up to 1.4 s late). At most a fifth of its time now.
COST_FACTOR = 4.0
# While writes keep failing, one line this often, not one per try.
FAILURE_LOG_SECONDS = 60.0
# A host name can be 255 bytes; the store's worst case counts on at most this.
MAX_HOSTNAME_CHARS = 200


@dataclass(frozen=True, slots=True)
class RoomIdentities:
    """Who follows one room: streams per identity, streams without one, streams of identities not named."""

    subs: dict[str, int]
    anonymous: int
    unnamed: int
    streams: int  # every stream of the room: what ``subscribers`` says


def make_worker_id() -> str:
    """Return a name for this worker's entry, unique across nodes and restarts: host, pid, random."""
    return f"{socket.gethostname()[:MAX_HOSTNAME_CHARS]}:{os.getpid()}:{secrets.token_hex(4)}"


def busiest_rooms(counts: dict[str, int], max_rooms: int, subs: dict[str, dict[str, int]] | None = None,
                  anonymous: dict[str, int] | None = None, max_identities: int = MAX_IDENTITIES,
                  named_before: dict[str, dict[str, int]] | None = None) -> PresenceReport:
    """Name the ``max_rooms`` rooms with the most streams and count the rest; then who follows the named ones.

    Ties go by name, so the same counts always name the same rooms: a quiet
    worker's entry does not change, and is not rewritten, for nothing.

    Past ``max_rooms``, the rooms in which the previous entry named someone
    (``named_before``) stay named first, then the rooms with an identity to
    name, then the busiest of the rest. A room pushed out of the entry took
    its identities with it, and the other workers' watchers were told they
    left: about 125 anonymous streams on made-up rooms (32 a stream) made the
    real users of a quiet room "leave"; and a user who moved her stream to a
    worker whose entry made-up rooms had filled "left" the same way.
    ``subs`` (room -> identity -> streams) and ``anonymous`` (room -> streams)
    are kept for the named rooms: at most ``max_identities`` (room, identity)
    pairs, those with the most streams (ties by room, then identity), each
    identity at most ``MAX_SUBJECT_BYTES`` long; the other pairs are counted.

    Past that bound, the pairs the previous entry named (``named_before``)
    stay named first: an identity that comes does not push one that is
    still there out of the entry. Pushed out, it vanished from what the
    other workers read, and their watchers were told it left (and joined
    again when it came back): a client with tokens for many names, opening
    one stream with each, made real users "leave" every room it joined.
    """
    named = _named_rooms(counts, max_rooms, _rooms_first(counts, subs or {}, named_before or {}, max_identities))
    pairs = [(room, sub, streams) for room, identities in (subs or {}).items() if room in named
             for sub, streams in identities.items() if nameable(sub)]
    if len(pairs) > max_identities:
        before = named_before or {}
        pairs = heapq.nsmallest(max_identities, pairs, key=lambda pair: (
            pair[1] not in before.get(pair[0], ()), -pair[2], pair[0], pair[1]))
    kept: dict[str, dict[str, int]] = {}
    for room, sub, streams in pairs:
        kept.setdefault(room, {})[sub] = streams
    all_pairs = sum(len(identities) for identities in (subs or {}).values())
    return PresenceReport(named, len(counts) - len(named), sum(counts.values()) - sum(named.values()), kept,
                          {room: streams for room, streams in (anonymous or {}).items() if room in named},
                          all_pairs - len(pairs))


def _rooms_first(counts: dict[str, int], subs: dict[str, dict[str, int]], named_before: dict[str, dict[str, int]],
                 max_identities: int) -> Iterator[dict[str, int]]:
    """Yield the rooms named before the busiest, in turn: those with someone named already, then anyone to name.

    Lazily: each tier is worked out only if the ones before it left room in
    the entry (a pass over a hostile worker's identities costs). The second
    tier: a room with only a user this worker does not name yet (she moved
    here from another worker, or arrived after made-up rooms filled the
    entry) is not one anonymous streams can push out -- they did, and the
    other workers told her as a leave.
    """
    yield {room: counts[room] for room, identities in named_before.items()
           if identities and room in counts and subs.get(room)}
    if max_identities:  # else nobody is named: a room's identities are no reason to name it
        # Not asked whether each may be named (over 256 bytes, not): that pass cost 0.7-1 s for 200,000 rooms
        # of identities, against ~0.1 s for all of this; a room of one too long only goes before anonymous ones.
        yield {room: counts[room] for room, identities in subs.items() if identities and room in counts}


def _named_rooms(counts: dict[str, int], max_rooms: int, first: Iterable[dict[str, int]] = ()) -> dict[str, int]:
    """Return the rooms of ``counts`` to name, ``max_rooms`` in all: each tier of ``first`` in turn, then the busiest.

    A tier that does not fit whole gives its busiest (only the first if the bound was lowered).
    """
    if len(counts) <= max_rooms:
        return dict(counts)
    named: dict[str, int] = {}
    for tier in itertools.chain(first, (counts,)):
        rest = {room: streams for room, streams in tier.items() if room not in named} if named else tier
        named |= _busiest(rest, max_rooms - len(named))
        if len(named) >= max_rooms:
            break
    return named


def _busiest(counts: dict[str, int], max_rooms: int) -> dict[str, int]:
    if len(counts) <= max_rooms:
        return dict(counts)
    # The count of the last room named: every room above it is named, and the
    # first names among the rooms at it. Two plain passes, not a sort of
    # every room (a hostile worker follows hundreds of thousands).
    tally = Counter(counts.values())
    named_above = 0
    for threshold in sorted(tally, reverse=True):
        if named_above + tally[threshold] >= max_rooms:
            break
        named_above += tally[threshold]
    named = {room: streams for room, streams in counts.items() if streams > threshold}
    tied = heapq.nsmallest(max_rooms - len(named), (room for room, streams in counts.items() if streams == threshold))
    named.update((room, threshold) for room in tied)
    return named


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit] + "..."


class FailureLog:
    """Log a run of failures as one line at its start, one a minute while it lasts, and one at its end."""

    def __init__(self, what: str, every: float = FAILURE_LOG_SECONDS) -> None:
        self.what = what
        self.every = every
        self.failures = 0
        self._logged_at = float("-inf")

    def failed(self, exc: BaseException, retry_seconds: float) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1 or now - self._logged_at >= self.every:
            self._logged_at = now
            # A store that is down is expected now and then; anything else is a bug worth an error.
            level = logging.WARNING if isinstance(exc, StoreUnavailable) else logging.ERROR
            log.log(level, "presence: %s failed (%d in a row; retrying within %gs, logged at most every %gs): %s",
                    self.what, self.failures, retry_seconds, self.every, _one_line(exc))

    def succeeded(self) -> None:
        if self.failures:
            log.info("presence: %s works again after %d failures", self.what, self.failures)
            self.failures = 0
            self._logged_at = float("-inf")


class Presence:
    """This worker's entry in the store, and the sum over every worker of every node."""

    def __init__(self, store: PresenceStore, hub: Hub, *, max_rooms: int = MAX_ROOMS,
                 max_identities: int = MAX_IDENTITIES, leave_grace: float = LEAVE_GRACE,
                 check_interval: float = CHECK_INTERVAL, write_interval: float = WRITE_INTERVAL,
                 refresh_interval: float = REFRESH_INTERVAL, ttl: float = TTL,
                 cache_seconds: float = CACHE_SECONDS, stale_seconds: float = STALE_SECONDS) -> None:
        self.store = store
        self.hub = hub
        self.max_rooms = max_rooms
        self.max_identities = max_identities
        self.check_interval = check_interval
        self.write_interval = write_interval
        self.refresh_interval = refresh_interval
        self.ttl = ttl
        self.cache_seconds = cache_seconds
        self.stale_seconds = stale_seconds
        # Made here, in the worker: the app is created after gunicorn forks (preload_app is off).
        self.worker_id = make_worker_id()
        self.writes = FailureLog("writing this worker's entry to the store")
        self._stopping = gevent.event.Event()
        self._stopping_lock = gevent.lock.Semaphore()
        self._greenlet: gevent.Greenlet | None = None
        self._own = PresenceReport()
        self._own_at = float("-inf")
        self._own_changes = -1  # the hub's change count when _own was worked out
        self._own_cost = 0.0  # how long working it out took, last time
        self._others = PresenceReport()
        self._others_read_at = float("-inf")
        self._reading = gevent.lock.Semaphore()
        # Join and leave events for this worker's presence=1 streams, from the same reads.
        self.announcer = Announcer(self, hub, leave_grace=leave_grace)

    # -- this worker's entry ---------------------------------------------------
    def start(self) -> None:
        """Start refreshing this worker's entry, unless already started."""
        if self._greenlet is None or self._greenlet.dead:
            self._stopping.clear()
            self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop refreshing and withdraw this worker's entry (it would expire anyway); safe to call again."""
        self._stopping.set()
        self.announcer.stop()
        # One stop at a time: systemd signals the whole process group, so a
        # worker gets SIGTERM from it and from the master, and two stops ran
        # here at once -- the second found the greenlet gone under its join.
        with self._stopping_lock:
            greenlet, self._greenlet = self._greenlet, None
            if greenlet is not None:
                # Let a write in flight finish first, so it cannot land after the withdrawal.
                greenlet.join(timeout)
                greenlet.kill(block=False)
            try:
                self.store.withdraw_presence(self.worker_id)
            except StoreUnavailable as exc:
                log.warning("presence: could not withdraw %s (%s); it expires in %gs", self.worker_id, exc, self.ttl)

    def own_report(self, max_age: float = 0.0) -> PresenceReport:
        """Return this worker's entry as it would write it now (or as worked out up to ``max_age`` ago).

        Worked out again only when a stream joined or left since, and then at
        most once per ``max_age``, nor sooner than ``COST_FACTOR`` times what
        it cost last time: it costs O(rooms followed), blocks the worker
        meanwhile, and the loop and every reader share it. Past a hundred
        thousand made-up rooms, a change then shows later than 2 s; the
        worker's other streams are not held up for it.
        """
        now = time.monotonic()
        if (self.hub.changes != self._own_changes
                and now - self._own_at >= max(max_age, COST_FACTOR * self._own_cost)):
            changes = self.hub.changes
            self._own = busiest_rooms(self.hub.room_counts(), self.max_rooms, self.hub.room_identities(),
                                      self.hub.room_anonymous(), self.max_identities, named_before=self._own.subs)
            # Only once worked out: after a failure the next call tries again, not keeps the old entry.
            self._own_changes, self._own_at = changes, now
            self._own_cost = time.monotonic() - now
        return self._own

    def _run(self) -> None:
        written: PresenceReport | None = PresenceReport()  # what the store holds for this worker; None: unknown
        written_at = float("-inf")  # the last whole write
        refresh_at = 0.0  # move the expiry on then, though nothing changed
        while not self._stopping.is_set():
            now = time.monotonic()
            wait = self.check_interval
            try:
                # No sooner than it could be written: under churn, once per write_interval. In the try: a
                # failure working it out (an identity that would not encode) once ended the loop for good.
                report = self.own_report(max_age=self.write_interval)
                if report != written and now - written_at >= self.write_interval:
                    self._write(report)
                    written, written_at, refresh_at = report, now, now + self.refresh_interval
                elif report and report == written and now >= refresh_at:
                    if not self.store.refresh_presence(self.worker_id, self.ttl):
                        self._write(report)  # gone from the store: write it whole again
                        written_at = now
                    refresh_at = now + self.refresh_interval
                self.writes.succeeded()
            except Exception as exc:  # the loop must outlive any failure
                STORE_ERRORS.labels("presence").inc()
                written = None
                self.writes.failed(exc, self.refresh_interval)
                wait = self.retry_delay(self.writes.failures)
            self._stopping.wait(wait)

    def retry_delay(self, failures: int) -> float:
        """Return how long to wait after the ``failures``-th failed write in a row before trying again.

        A check interval after the first (so one failure costs about that, not
        a refresh interval), doubling up to ``refresh_interval``; jittered
        between half and all of it.
        """
        ceiling = min(self.refresh_interval, self.check_interval * 2 ** min(failures - 1, 30))
        return random.uniform(ceiling / 2, ceiling)

    def _write(self, report: PresenceReport) -> None:
        if report:
            self.store.publish_presence(self.worker_id, report, self.ttl)
        else:
            self.store.withdraw_presence(self.worker_id)

    # -- reading ---------------------------------------------------------------
    def subscribers(self, room: str) -> int:
        """Return the open streams following ``room`` over every worker of every node.

        This worker's own are counted exactly, named or not; the others' as
        their entries name them. Raises StoreUnavailable when the other
        workers' entries cannot be read.
        """
        return self._other_workers().rooms.get(room, 0) + self.hub.subscribers(room)

    def identities(self, room: str) -> RoomIdentities:
        """Return who follows ``room`` over every worker of every node, as ``subscribers`` counts them.

        This worker's own identities are exact, named or not; the others' as
        their entries name them. Raises StoreUnavailable as ``subscribers`` does.
        """
        others = self._other_workers()
        subs = dict(others.subs.get(room, {}))
        unnamed = others.unnamed_streams(room)
        for sub, streams in self.hub.identities(room).items():
            if nameable(sub):
                subs[sub] = subs.get(sub, 0) + streams
            else:  # counted as the other workers count it, not listed here only
                unnamed += streams
        return RoomIdentities(subs, others.anonymous.get(room, 0) + self.hub.anonymous(room),
                              unnamed, others.rooms.get(room, 0) + self.hub.subscribers(room))

    def others(self) -> PresenceReport:
        """Return every other worker's entries summed (cached as for every reader); raise StoreUnavailable."""
        return self._other_workers()

    def report(self) -> PresenceReport:
        """Return every worker's entry summed: the rooms named, and the streams of those counted but not named.

        Raises StoreUnavailable when the other workers' entries cannot be read.
        """
        return self._other_workers().plus(self.own_report(max_age=self.cache_seconds))

    def _other_workers(self) -> PresenceReport:
        """Return every other worker's entries summed, read from the store at most once per ``cache_seconds``."""
        if time.monotonic() - self._others_read_at < self.cache_seconds:
            return self._others
        # One read at a time: the requests that wait for it take its result.
        with self._reading:
            asked_at = time.monotonic()
            if asked_at - self._others_read_at >= self.cache_seconds:
                STORE_QUERIES.labels(QUERY_PRESENCE).inc()
                try:
                    self._others = self.store.presence_counts(exclude=self.worker_id)
                except StoreUnavailable as exc:
                    STORE_ERRORS.labels("presence").inc()
                    if time.monotonic() - self._others_read_at > self.stale_seconds:
                        raise
                    log.warning("presence: read failed (%s); answering with counts read %.1fs ago",
                                exc, time.monotonic() - self._others_read_at)
                    return self._others
                self._others_read_at = asked_at  # the age of what was read counts from the question
            return self._others
