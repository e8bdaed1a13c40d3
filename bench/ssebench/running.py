"""Run one scenario's body on a system started for it alone: the set-up and tidy-up the storm, the
hostile readers and the soak share.

The system starts pinned to the server cores (or the scenario notes why it did not and ends), the
load generator is pinned to its own, the body runs with a publisher, and whatever happens -- an
abort is noted, not raised: one broken system must not end the run -- a dead server is noted, the
system is stopped and the load generator unpinned. ``before_stop`` and ``after_stop`` are the
scenario's own tidy-up (its sockets, its streams), in that order around the stop.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from .clients import ClientPool
from .cores import LOADGEN_CPUS, pin_load_generator, server_cpus
from .processes import ServerGroup
from .publisher import RoomsPublisher
from .systems import System

Step = Callable[[], Awaitable[None] | None]


class Scenario(Protocol):
    system: System
    workdir: Any
    pool: ClientPool

    def note(self, line: str) -> None: ...


async def run_on_started_system(scenario: Scenario, env: dict[str, str] | None,
                                body: Callable[[RoomsPublisher], Awaitable[None]],
                                on_started: Callable[[ServerGroup], None] = lambda group: None, *,
                                before_stop: Sequence[Step] = (), after_stop: Sequence[Step] = ()) -> bool:
    """Start the system, run ``body`` with a publisher, then tidy up; return False when it did not start."""
    system = scenario.system
    try:
        group = await asyncio.to_thread(system.start, scenario.workdir, server_cpus(), env)
    except (RuntimeError, OSError) as error:
        scenario.note(f"did not start: {error}")
        if system.group is not None:
            await asyncio.to_thread(system.group.stop)
        return False
    on_started(group)
    pin_load_generator(scenario.pool, LOADGEN_CPUS)
    try:
        async with RoomsPublisher(system) as publisher:
            await body(publisher)
    except Exception as error:  # noqa: BLE001 - one broken system must not end the run
        scenario.note(f"aborted: {type(error).__name__}: {error}")
    finally:
        for step in before_stop:
            await _done(step())
        dead = group.dead()
        if dead:
            scenario.note(f"server died: {dead}")
        await asyncio.to_thread(group.stop)
        for step in after_stop:
            await _done(step())
        pin_load_generator(scenario.pool, None)
    return True


async def _done(outcome: Awaitable[None] | None) -> None:
    if outcome is not None:
        await outcome
