"""MESSAGE_TTL_SECONDS: which messages are too old to send -- decided here only.

A message expires ``ttl`` seconds after its ``createdAt``: the time the store
keeps with the message, so every worker of every node judges the same message
by the same stamp, whenever its tailer happened to read it. "Now" is the
store's clock too (``MessageLog.store_time``: this machine's for the SQLite
file all its workers share; the database server's, as each worker last
measured it, for MongoDB), so two nodes whose clocks disagree still agree on
what has expired.

Every read a client sees goes through this rule: the worker's window filters
each backlog, resume and history page with it and counts only unexpired
messages for ``/rooms`` (``app/delivery/window.py``); a history read that
falls back to the store is filtered the same way (``app/delivery/reading.py``).
The stores also drop what they can (SQLite deletes expired rows as it
appends; a MongoDB capped collection is only filtered: docs/mongodb.md says
why), but nothing relies on that: an expired message still stored is never
sent.

Not by position: stamps are made by the publishing process before its write
lands, so store order and ``createdAt`` order can differ by a few
milliseconds. Each message is judged by its own stamp; nothing assumes the
expired ones are exactly the oldest.
"""
from __future__ import annotations

import time
from collections.abc import Callable

# The reason a resume is not exact because something the client had not read
# yet has expired: sent as ``event: reset`` with ``data: {"reason": "expired"}``.
EXPIRED_REASON = "expired"


class Expiry:
    """The expiry rule of one worker: a TTL (None: messages never expire) on the store's clock."""

    __slots__ = ("ttl_seconds", "_clock")

    def __init__(self, ttl_seconds: float | None, clock: Callable[[], float] = time.time) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock  # Unix seconds on the store's clock

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds is not None

    def cutoff(self) -> float | None:
        """Return the Unix time before which a message was created too long ago to send; None: no expiry."""
        if self.ttl_seconds is None:
            return None
        return self._clock() - self.ttl_seconds


NEVER = Expiry(None)
