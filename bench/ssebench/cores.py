"""How the two cores are split: the servers on one, the load generator on the other.

Every scenario pins every system the same way, so each server gets the same
CPU and a saturated client shows up as a saturated core 1, never as a slow
server. `taskset` pins the servers at launch (children inherit the mask);
the bench's own processes (the subscriber processes and the orchestrator,
which publishes) are pinned with sched_setaffinity.
"""

from __future__ import annotations

import os

from .clients import ClientPool
from .processes import pin_process

SERVER_CPUS = "0"
LOADGEN_CPUS = {1}
# A load-generator core at least this busy means the figure measured the
# client, not the server: the report says "client-bound" instead.
CLIENT_BOUND_PCT = 95.0


def can_split() -> bool:
    return (os.cpu_count() or 1) >= 2


def server_cpus() -> str | None:
    """The cores for a system's processes (None: no split on a one-core machine)."""
    return SERVER_CPUS if can_split() else None


def pin_load_generator(pool: ClientPool, cpus: set[int] | None) -> None:
    """Put the subscriber processes and this process on `cpus` (None: every core again)."""
    if not can_split():
        return
    pool.pin(cpus)
    pin_process(os.getpid(), cpus)


def client_bound(loadgen_cpu_pct: float | None) -> bool:
    return loadgen_cpu_pct is not None and loadgen_cpu_pct >= CLIENT_BOUND_PCT
