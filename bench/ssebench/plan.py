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
    # Scenario 5, the reconnect storm (storm.py): streams spread over rooms,
    # on a store filled first with a full window (CAPPED_MAX_MESSAGES) of
    # other rooms' messages; one worker is SIGKILLed while storm_rate
    # messages/s keep arriving. Run once per system, whatever `repeats` says.
    storm_streams: int = 10000
    storm_rooms: int = 50
    storm_fill: int = 10000
    storm_rate: float = 40.0
    storm_fill_timeout_seconds: float = 180.0
    storm_open_timeout_seconds: float = 120.0
    storm_join_timeout_seconds: float = 60.0  # until every stream has its room's first message
    storm_baseline_seconds: float = 5.0  # publishing, no kill: background store queries
    storm_timeout_seconds: float = 120.0  # kill -> every dropped stream reconnected
    storm_tail_seconds: float = 3.0  # publishing goes on this long after the last reconnect
    storm_drain_timeout_seconds: float = 30.0
    # Scenario 6, hostile readers (hostile.py): one room filled with
    # JSON-expensive text (hostile_text_chars x U+0001: 4 KB stored, ~24 KB
    # once JSON-escaped), then streams that ask for the room's whole history
    # and never read. hostile_fill is more than our default window holds
    # (CAPPED_SIZE_BYTES 5 MB / 4,096 bytes = 1,221 messages) and less than
    # any peer's history bound here, so every system holds the same backlog.
    # Opening stops at hostile_rss_cap_bytes of server RSS (a server that
    # copies the backlog per stream would otherwise take the machine down).
    hostile_streams: int = 1000
    hostile_fill: int = 1300
    hostile_text_chars: int = 4096
    hostile_rss_cap_bytes: int = 4 * 2**30
    hostile_min_available_bytes: int = 3 * 2**30  # of the machine's memory, whoever uses it
    hostile_fill_timeout_seconds: float = 180.0
    hostile_backlog_timeout_seconds: float = 120.0  # one reader gets the whole fill (Mercure: ~1 min)
    hostile_open_timeout_seconds: float = 60.0
    hostile_settle_timeout_seconds: float = 15.0
    hostile_probe_timeout_seconds: float = 15.0
    # Scenario 7, the soak (soak.py): a full window of other rooms first, then
    # soak_clients clients that come and go (each opens a stream on one of
    # soak_rooms rooms, reads for soak_read_seconds, drops it, again),
    # soak_kept streams held throughout and checked exact, soak_rate
    # messages/s round the rooms. The workers' RSS after the warm-up and at
    # the end must be within soak_target_bytes. BENCH_SOAK_MINUTES lengthens
    # the measured part.
    soak_clients: int = 300
    soak_rooms: int = 20
    soak_kept: int = 5
    soak_rate: float = 50.0
    soak_read_seconds: tuple[float, float] = (0.1, 3.0)
    soak_fill: int = 10000
    soak_warmup_seconds: float = 120.0
    soak_measure_seconds: float = 360.0
    soak_sample_seconds: float = 30.0
    soak_target_bytes: int = 5 * 2**20


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
    storm_streams=2000,
    storm_rooms=20,
    storm_fill=2000,
    storm_open_timeout_seconds=30.0,
    storm_join_timeout_seconds=30.0,
    storm_baseline_seconds=3.0,
    storm_timeout_seconds=60.0,
    storm_drain_timeout_seconds=15.0,
    hostile_streams=300,
    soak_fill=2000,
    # Not shorter: in a 4-minute quick soak the workers' heap still grew ~1 MB
    # in the minute after a 20 s warm-up, then stayed flat.
    soak_warmup_seconds=60.0,
    soak_measure_seconds=40.0,
    soak_sample_seconds=10.0,
)


def choose_plan(quick: bool, repeats: int | None = None) -> Plan:
    plan = QUICK if quick else FULL
    return replace(plan, repeats=repeats) if repeats else plan
