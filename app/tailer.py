"""The one follower per worker: reads new messages from the store, feeds the hub.

It runs in its own greenlet and survives everything the store throws at it:
an unavailable store is retried with exponential backoff from the last
position it delivered (so nothing is lost or repeated), and a lost position
(the bounded window moved past it) makes every stream re-read from the store
after its own last event, which either resumes it exactly or sends ``reset``.

A joining stream asks it (through the store, which owns positions) where
its backlog ended, so that it can drop the live events it already sent.
"""
from __future__ import annotations

import logging

import gevent
import gevent.event

from .hub import Hub
from .metrics import STORE_ERRORS, TAILER_RESTARTS
from .stores.base import MessageStore, PositionLost, StoreUnavailable

log = logging.getLogger(__name__)


class Tailer:
    """Follows the store in a greenlet and publishes to the hub."""

    def __init__(self, store: MessageStore, hub: Hub, *,
                 backoff_initial: float = 0.05, backoff_max: float = 2.0) -> None:
        self.store = store
        self.hub = hub
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.wakeup = gevent.event.Event()
        self.restarts = 0
        self.last_id: str | None = None  # None once started: from the oldest message
        self._started = False
        self._lost = False
        self._greenlet: gevent.Greenlet | None = None

    def ensure_running(self) -> None:
        """Start following, from the newest message now, unless already started.

        The start point is fixed here, before the caller reads any backlog, and
        kept across restarts: everything committed after it is delivered live,
        everything before it is in the backlog of whoever joins. Raises
        StoreUnavailable if the store cannot say where it ends.
        """
        if self._greenlet is None or self._greenlet.dead:
            if not self._started:
                self.last_id = self.store.newest_id()
                self._started = True
            self._greenlet = gevent.spawn(self._run)

    def poke(self) -> None:
        """Look for new messages now (a publish happened in this worker)."""
        self.wakeup.set()

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def position_of(self, message_id: str) -> int | None:
        """Return the position of an id, or None if the tailer has not read it yet."""
        return self.store.position_of(message_id)

    def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            try:
                if self._lost:
                    # Start again from the newest message *before* telling the
                    # streams: what they re-read covers everything up to it.
                    self.last_id = self.store.newest_id()
                    self._lost = False
                    self.hub.resync_all()
                for batch in self.store.follow(self.last_id, self.wakeup):
                    delay = self.backoff_initial
                    if batch:
                        self.last_id = batch[-1][1].id
                        self.hub.publish(batch)
            except PositionLost as exc:
                log.warning("tailer lost its place (%s); streams re-read from the store", exc)
                self._count_restart()
                self._lost = True
            except StoreUnavailable as exc:
                log.warning("tailer: store unavailable (%s); retrying in %.2fs", exc, delay)
                STORE_ERRORS.labels("tailer").inc()
                self._count_restart()
                gevent.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
            except Exception:  # a bug must not silence every stream of the worker
                log.exception("tailer crashed; restarting in %.2fs", delay)
                self._count_restart()
                gevent.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    def _count_restart(self) -> None:
        self.restarts += 1
        TAILER_RESTARTS.inc()
