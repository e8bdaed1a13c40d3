"""What the tests read of the per-client slots, which the server itself never needs to."""
from __future__ import annotations

import os

from app.delivery import client_slots
from app.delivery.client_slots import ClientSlots


def streams_held(slots: ClientSlots, client: str) -> int:
    """Return the streams the client holds on this node (every worker's), through ``slots``'s own file handle.

    Its own handle: LMDB must not have one file open twice in one process; without a path the counts
    live in that object.
    """
    if slots.path is None:
        return slots._local[client]
    with slots._environment().begin() as txn:
        return _sum(txn, client)


def streams_held_in_file(path: str, client: str) -> int:
    """Return the streams the client holds on the node whose slots file is ``path`` (from another process)."""
    if not os.path.exists(path):
        return 0
    env = client_slots.open_file(path)
    try:
        with env.begin() as txn:
            return _sum(txn, client)
    finally:
        env.close()


def records(slots: ClientSlots) -> int:
    """Return how many (client, worker) records the file holds."""
    with slots._environment().begin() as txn:
        return txn.stat()["entries"]


def take_as_another_worker(slots: ClientSlots, client: str, pid: int) -> None:
    """Take one of ``client``'s slots as worker ``pid`` would (whatever the limit)."""
    with slots._environment().begin(write=True) as txn:
        key = client_slots.client_prefix(client) + pid.to_bytes(4, "big")
        txn.put(key, (client_slots.count_of(txn.get(key)) + 1).to_bytes(4, "big"))


def _sum(txn, client: str) -> int:
    prefix = client_slots.client_prefix(client)
    return sum(client_slots.count_of(value) for _, value in client_slots.client_records(txn, prefix))
