"""Presence: how many open streams follow each room, on every worker of every node.

There is no broker between workers or nodes but the store, so presence goes
through it too. Each worker keeps one entry in the store -- its streams per
room, from its hub -- that expires ``ttl`` seconds after it was written, and
refreshes it from a greenlet:

* when its counts change (checked every ``check_interval``), so a stream that
  opens or closes shows everywhere within about that plus a reader's cache;
* and at least every ``refresh_interval`` while it has any, so it does not
  expire while the worker lives. A worker with no streams writes nothing; it
  withdraws its entry once, when its last stream ends.

A worker that stops cleanly withdraws its entry (SIGTERM, see
``app/operations/lifecycle.py``); a killed one's expires ``ttl`` after its
last refresh.

Reading adds this worker's live counts (exact, from its hub) to the sum of
every *other* worker's unexpired entry, which is read from the store at most
once per ``cache_seconds`` per worker, however many requests ask. When a read
fails, what was read up to ``stale_seconds`` ago still answers: a blip of the
store (FerretDB interrupts a query now and then) is no reason for a 503.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import time

import gevent
import gevent.event
import gevent.lock

from ..operations.metrics import QUERY_PRESENCE, STORE_ERRORS, STORE_QUERIES
from ..stores.base import MessageStore, StoreUnavailable
from .hub import Hub

log = logging.getLogger(__name__)

CHECK_INTERVAL = 0.25
REFRESH_INTERVAL = 1.0
# Three refreshes: a worker whose loop is held up for a moment does not
# vanish, and a killed one is gone within about three seconds.
TTL = 3.0
CACHE_SECONDS = 0.5
# With a change written within CHECK_INTERVAL, still within the 2 s promised.
STALE_SECONDS = 1.5


def make_worker_id() -> str:
    """Return a name for this worker's entry, unique across nodes and restarts: host, pid, random."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Presence:
    """This worker's entry in the store, and the sum over every worker of every node."""

    def __init__(self, store: MessageStore, hub: Hub, *, check_interval: float = CHECK_INTERVAL,
                 refresh_interval: float = REFRESH_INTERVAL, ttl: float = TTL,
                 cache_seconds: float = CACHE_SECONDS, stale_seconds: float = STALE_SECONDS) -> None:
        self.store = store
        self.hub = hub
        self.check_interval = check_interval
        self.refresh_interval = refresh_interval
        self.ttl = ttl
        self.cache_seconds = cache_seconds
        self.stale_seconds = stale_seconds
        # Made here, in the worker: the app is created after gunicorn forks (preload_app is off).
        self.worker_id = make_worker_id()
        self._stopping = gevent.event.Event()
        self._stopping_lock = gevent.lock.Semaphore()
        self._greenlet: gevent.Greenlet | None = None
        self._others: dict[str, int] = {}
        self._others_read_at = float("-inf")
        self._reading = gevent.lock.Semaphore()

    # -- this worker's entry ---------------------------------------------------
    def start(self) -> None:
        """Start refreshing this worker's entry, unless already started."""
        if self._greenlet is None or self._greenlet.dead:
            self._stopping.clear()
            self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop refreshing and withdraw this worker's entry (it would expire anyway); safe to call again."""
        self._stopping.set()
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

    def _run(self) -> None:
        written: dict[str, int] | None = {}  # what the store holds for this worker; None: unknown
        refresh_at = 0.0  # write again then, though nothing changed
        retry_at = 0.0  # after a failed write, none before then
        failing = False
        while not self._stopping.is_set():
            counts = self.hub.room_counts()
            now = time.monotonic()
            if (counts != written or (counts and now >= refresh_at)) and now >= retry_at:
                try:
                    if counts:
                        self.store.publish_presence(self.worker_id, counts, self.ttl)
                    else:
                        self.store.withdraw_presence(self.worker_id)
                    written, refresh_at = counts, now + self.refresh_interval
                    if failing:
                        failing = False
                        log.info("presence: writing to the store again")
                except Exception as exc:  # the loop must outlive any failure
                    STORE_ERRORS.labels("presence").inc()
                    written, retry_at = None, now + self.refresh_interval
                    if not isinstance(exc, StoreUnavailable):
                        log.exception("presence: write failed")
                    elif not failing:
                        log.warning("presence: cannot write to the store (%s); retrying every %gs",
                                    exc, self.refresh_interval)
                    failing = True
            self._stopping.wait(self.check_interval)

    # -- reading ---------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Return the open streams per room over every worker of every node.

        Raises StoreUnavailable when the other workers' entries cannot be read.
        """
        totals = dict(self._other_workers())
        for room, streams in self.hub.room_counts().items():
            totals[room] = totals.get(room, 0) + streams
        return totals

    def _other_workers(self) -> dict[str, int]:
        """Return every other worker's counts, read from the store at most once per ``cache_seconds``."""
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
