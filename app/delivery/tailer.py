"""The one follower per worker: reads the store in store order, fills the window, feeds the hub.

It runs in its own greenlet from the worker's start. First it *warms* the
worker's window: it follows the store from its oldest message, filling the
window without publishing (no stream has joined yet: joins wait for the
window), until it has read what the store held when it began -- or the store
says it is caught up. Then it sets ``window.ready`` and from there on each new
batch goes into the window and to the hub in one step, with no yield in
between (the exact hand-over that ``app/delivery/window.py`` explains).

It survives everything the store throws at it: an unavailable store is
retried with exponential backoff from the last message it read (so nothing
is lost or repeated); a lost position (the bounded window moved past it
while it was away) empties the window, makes every stream re-join once the
window is warm again -- which either resumes it exactly or sends ``reset`` --
and warms again from the oldest message.
"""
from __future__ import annotations

import logging

import gevent
import gevent.event

from ..operations.metrics import QUERY_WARM, STORE_ERRORS, STORE_QUERIES, TAILER_RESTARTS, WINDOW_BYTES, WINDOW_MESSAGES
from ..stores.base import MessageLog, PositionLost, StoreUnavailable
from .hub import Hub
from .window import Window

log = logging.getLogger(__name__)


class Tailer:
    """Follows the store in a greenlet, into the window and the hub."""

    def __init__(self, store: MessageLog, window: Window, hub: Hub, *,
                 backoff_initial: float = 0.05, backoff_max: float = 2.0) -> None:
        self.store = store
        self.window = window
        self.hub = hub
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.wakeup = gevent.event.Event()
        self.restarts = 0
        self.last_id: str | None = None  # the last message read; None: start from the oldest
        self._warm_until: str | None = None  # the store's newest id when warming began
        self._greenlet: gevent.Greenlet | None = None

    def ensure_running(self) -> None:
        """Start following (and warming the window) unless already started."""
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def poke(self) -> None:
        """Look for new messages now (a publish happened in this worker)."""
        self.wakeup.set()

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            try:
                if not self.window.ready.is_set() and self.last_id is None:
                    # Warming: read up to the newest message there is now.
                    STORE_QUERIES.labels(QUERY_WARM).inc()
                    self._warm_until = self.store.newest_id()
                    if self._warm_until is None:
                        self.window.ready.set()  # nothing stored yet
                for batch in self.store.follow(self.last_id, self.wakeup):
                    delay = self.backoff_initial
                    self._deliver(batch)
            except PositionLost as exc:
                log.warning("tailer lost its place (%s); warming the window again", exc)
                self._count_restart()
                self.last_id = None
                self.window.clear()
                self.hub.resync_all()  # they re-join once the window is ready again
                # Losing it again at once would be a bug, not a store that is
                # moving fast: never let that turn into a busy loop.
                gevent.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
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

    def _deliver(self, batch: list) -> None:
        """Put one batch into the window and, once it is warm, to the hub -- without yielding."""
        if batch:
            self.last_id = batch[-1][1].id
            entries = self.window.extend(batch)
            WINDOW_MESSAGES.set(len(self.window))
            WINDOW_BYTES.set(self.window.payload_bytes)
        if self.window.ready.is_set():
            if batch:
                self.hub.publish(entries)
            return
        # Still warming: it is warm once the store's newest message at the
        # start has been read, or the store says nothing more is there.
        if not batch or any(message.id == self._warm_until for _, message in batch):
            log.info("window warm: %d messages", len(self.window))
            self.window.ready.set()

    def _count_restart(self) -> None:
        self.restarts += 1
        TAILER_RESTARTS.inc()
