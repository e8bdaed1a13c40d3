"""How big and how long each scenario is, in full and in quick mode."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Plan:
    mode: str
    repeats: int
    # Scenario 1: streams held open, cumulative steps.
    idle_steps: tuple[int, ...]
    # Scenario 2: one message, then a burst, to this many subscribers.
    broadcast_sizes: tuple[int, ...]
    burst_size: int
    # Scenarios 3 and 4 share one set of subscribers.
    fanout_subscribers: int
    ladder_rates: tuple[float, ...]  # messages/s, tried in order until one fails
    ladder_step_seconds: float
    cross_rate: float
    cross_seconds: float
    latency_budget_ms: float = 100.0
    settle_seconds: float = 2.0
    open_timeout_seconds: float = 90.0
    drain_timeout_seconds: float = 10.0
    broadcast_timeout_seconds: float = 60.0
    # Wall-clock allowance for one repetition of one system; past it the
    # remaining scenarios of that repetition are skipped and say so.
    repetition_budget_seconds: float = 150.0


FULL = Plan(
    mode="full",
    repeats=3,
    idle_steps=(1000, 5000, 10000, 20000),
    broadcast_sizes=(10000, 1000),
    burst_size=100,
    fanout_subscribers=1000,
    ladder_rates=(10, 20, 50, 100, 200, 400, 800),
    ladder_step_seconds=3.0,
    cross_rate=100,
    cross_seconds=8.0,
    open_timeout_seconds=20.0,
    drain_timeout_seconds=8.0,
    broadcast_timeout_seconds=20.0,
    repetition_budget_seconds=120.0,
)

QUICK = Plan(
    mode="quick",
    repeats=1,
    idle_steps=(1000, 5000),
    broadcast_sizes=(5000, 1000),
    burst_size=20,
    fanout_subscribers=1000,
    ladder_rates=(10, 30, 100, 300, 1000),
    ladder_step_seconds=2.0,
    cross_rate=100,
    cross_seconds=4.0,
    settle_seconds=1.0,
    open_timeout_seconds=45.0,
    drain_timeout_seconds=5.0,
    broadcast_timeout_seconds=20.0,
    repetition_budget_seconds=60.0,
)


def choose_plan(quick: bool, repeats: int | None = None) -> Plan:
    plan = QUICK if quick else FULL
    return replace(plan, repeats=repeats) if repeats else plan
