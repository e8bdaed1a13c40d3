"""What the tests read of the per-client slots file, which the server itself never needs to."""
from __future__ import annotations

from app.delivery.client_slots import ClientSlots


def streams_held(slots: ClientSlots, client: str) -> int:
    """Return the streams the client holds on this node (every worker's), through ``slots``'s own connection.

    Its own connection: without a path the rows live in that connection's in-memory database.
    """
    return slots._connection().execute("SELECT coalesce(sum(streams), 0) FROM client_streams WHERE client = ?",
                                        (client,)).fetchone()[0]
