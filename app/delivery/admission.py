"""Whether a new stream may open: this worker's slots (MAX_STREAMS_PER_WORKER) and the client's on this node
(MAX_STREAMS_PER_CLIENT, ``app/delivery/client_slots.py``).

Slots are taken in the view, before the response exists, and given back when
the WSGI server closes the response. Counting subscriptions instead would
undercount: a stream subscribes only once its first bytes are written, so a
burst of requests could all pass the check before any of them subscribed.

Every slot taken is given back exactly once: an admission is a ticket whose
``give_back`` returns both slots the first time and does nothing after,
whoever calls it (the response's ``close`` on every way a stream ends, or the
view when something fails before the response exists). When the worker stops,
``close`` gives back every client slot it holds at once; the tickets then give
back only their worker slot, and a stream it still admits is not counted for its client.
"""
from __future__ import annotations

import enum

from ..operations.metrics import DROP_CLIENT_LIMIT, DROP_LIMIT, OPEN_STREAMS, STREAMS_DROPPED
from .client_slots import ClientSlots, ClientSlotsUnavailable


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


class Refusal(enum.Enum):
    WORKER_FULL = "this worker holds MAX_STREAMS_PER_WORKER streams"
    CLIENT_FULL = "the client holds MAX_STREAMS_PER_CLIENT streams on this node"


class Ticket:
    """One admitted stream's slots; ``give_back`` returns them once, and is a no-op after."""

    __slots__ = ("_admission", "_client")

    def __init__(self, admission: Admission, client: str | None) -> None:
        self._admission: Admission | None = admission
        self._client = client  # None: admitted without counting it for the client (slots file unusable)

    def give_back(self) -> None:
        admission, self._admission = self._admission, None
        if admission is None:
            return
        try:
            if self._client is not None and not admission.closed:
                try:
                    admission.client_slots.give_back(self._client)
                except ClientSlotsUnavailable:
                    pass  # logged there; the master drops the row when this worker exits
        finally:
            admission.worker_slots.release()


class Admission:
    """Admits a stream when both its worker and its client have a slot left."""

    def __init__(self, worker_slots: StreamSlots, client_slots: ClientSlots) -> None:
        self.worker_slots = worker_slots
        self.client_slots = client_slots
        self.closed = False

    def close(self) -> None:
        """Admit nothing more and give back every client slot of this worker at once (SIGTERM)."""
        self.closed = True  # first: a ticket that gives back meanwhile skips its client slot
        try:
            self.client_slots.drop_this_worker()
        except ClientSlotsUnavailable:
            pass  # logged there; the master drops the rows when this worker exits

    def admit(self, client: str) -> Ticket | Refusal:
        """Take a slot of this worker and one of ``client`` on this node, or say which was full."""
        if not self.worker_slots.acquire():
            return Refusal.WORKER_FULL
        if self.closed:
            return Ticket(self, None)  # a last stream of a stopping worker: it ends at once, uncounted
        try:
            taken = self.client_slots.take(client)
        except ClientSlotsUnavailable:
            return Ticket(self, None)  # fail open: the worker's own limit still holds
        except BaseException:
            self.worker_slots.release()
            raise
        if not taken:
            self.worker_slots.release()
            STREAMS_DROPPED.labels(DROP_CLIENT_LIMIT).inc()
            return Refusal.CLIENT_FULL
        return Ticket(self, client)
