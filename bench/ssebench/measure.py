"""Small pure helpers that turn raw numbers into reported figures."""

from __future__ import annotations

import os
import resource
import statistics
from array import array
from collections.abc import Sequence
from typing import Any

import psutil


def percentiles_ms(latencies_ns: array | Sequence[int]) -> dict[str, float | None]:
    """p50, p99 and max of a latency sample, in milliseconds."""
    if not latencies_ns:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies_ns)

    def pick(fraction: float) -> float:
        index = min(len(ordered) - 1, int(fraction * len(ordered)))
        return ordered[index] / 1e6

    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": ordered[-1] / 1e6}


def own_cpu_seconds() -> float:
    """CPU time of the orchestrator itself (it is the publisher)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine, to spot a noisy neighbour."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def median_of(values: Sequence[Any]) -> Any:
    """Median of the numbers present; None when there are none."""
    numbers = [value for value in values if isinstance(value, (int, float))]
    if not numbers:
        return None
    return statistics.median(numbers)


def tcp_buffer_bytes() -> int:
    """Memory the kernel holds in TCP buffers, machine-wide (`mem` of /proc/net/sockstat, in pages).

    Not any process's RSS: what a server hands to its sockets lands here.
    Every job on the machine adds to it.
    """
    try:
        for line in open("/proc/net/sockstat"):
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    return 0
