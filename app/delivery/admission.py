"""How many streams this worker holds, and the refusal beyond MAX_STREAMS_PER_WORKER.

A slot is taken in the view, before the response exists, and given back when
the WSGI server closes the response. Counting subscriptions instead would
undercount: a stream subscribes only once its first bytes are written, so a
burst of requests could all pass the check before any of them subscribed.
"""
from __future__ import annotations

from ..operations.metrics import DROP_LIMIT, OPEN_STREAMS, STREAMS_DROPPED


class StreamSlots:
    """Counts this worker's open streams and refuses one beyond the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def acquire(self) -> bool:
        """Take a slot; return False (and count the refusal) when none is left."""
        if self.open >= self.limit:
            STREAMS_DROPPED.labels(DROP_LIMIT).inc()
            return False
        self.open += 1
        OPEN_STREAMS.inc()
        return True

    def release(self) -> None:
        """Give a slot back (the response was closed)."""
        self.open -= 1
        OPEN_STREAMS.dec()
