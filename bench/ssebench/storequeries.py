"""Our server's store-query counter, `sse_store_queries_total{operation=...}`, read per worker.

GET /metrics adds up every worker's values (prometheus_client multiprocess
mode), and after a SIGKILL it is not clear what that sum holds: gunicorn's
child_exit marks only a dead worker's *live gauges* gone, so its counter file
stays, frozen at its last value, and is still added in, but a server may also
choose to drop it. A delta of the sum across the kill is then either right or
off by the dead worker's whole count. So the storm reads the counter the way
the server's scrape does, from the per-process files in the server's
PROMETHEUS_MULTIPROC_DIR (the bench gives each run a directory of its own),
but keeps each process apart: `counter_<pid>.db`, a small mmap file of
(JSON key, value, timestamp) entries (prometheus_client's `mmap_dict.py`).
The storm's count is then the surviving worker's delta plus the new worker's
whole count, with the killed worker left out by pid.

GET /metrics is scraped as well, before the kill and at the end, and its
delta is kept in the raw results to cross-check the per-file figure.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

METRIC = "sse_store_queries"
SAMPLE = "sse_store_queries_total"
# {pid: {operation: count}}
PerProcess = dict[int, dict[str, float]]

_SAMPLE_LINE = re.compile(rf'^{SAMPLE}\{{(?P<labels>[^}}]*)\}}\s+(?P<value>\S+)', re.MULTILINE)
_OPERATION = re.compile(r'operation="(?P<operation>[^"]*)"')


def read_counter_files(metrics_dir: Path | None) -> PerProcess | None:
    """Each process's store-query counts from its counter file; None when no file has the metric."""
    if metrics_dir is None or not metrics_dir.is_dir():
        return None
    found: PerProcess = {}
    seen_metric = False
    for path in metrics_dir.glob("counter_*.db"):
        try:
            pid = int(path.stem.split("_", 1)[1])
            data = path.read_bytes()
        except (ValueError, OSError):
            continue
        counts: dict[str, float] = {}
        for key, value in _entries(data):
            try:
                metric_name, name, labels, _help = json.loads(key)
            except (ValueError, TypeError):
                continue
            if metric_name == METRIC or name == SAMPLE:
                seen_metric = True
                operation = labels.get("operation", "")
                counts[operation] = counts.get(operation, 0.0) + value
        found[pid] = counts
    return found if seen_metric else None


def _entries(data: bytes):
    """(key, value) of an mmap_dict file: used:int32, pad, then len:int32, key, pad to 8, value:f64, ts:f64."""
    if len(data) < 8:
        return
    (used,) = struct.unpack_from("i", data, 0)
    pos = 8
    while pos < min(used, len(data)):
        (length,) = struct.unpack_from("i", data, pos)
        if length <= 0 or pos + 4 + length > used:
            return
        pos += 4
        key = data[pos : pos + length].decode("utf-8", "replace")
        pos += length + (8 - (length + 4) % 8)
        value, _timestamp = struct.unpack_from("dd", data, pos)
        pos += 16
        yield key, value


def parse_exposition(text: str) -> dict[str, float] | None:
    """Store-query counts by operation from GET /metrics text; None when the metric is absent."""
    counts: dict[str, float] = {}
    for match in _SAMPLE_LINE.finditer(text):
        operation = _OPERATION.search(match["labels"])
        key = operation["operation"] if operation else ""
        counts[key] = counts.get(key, 0.0) + float(match["value"])
    return counts or None


def storm_delta(before: PerProcess, after: PerProcess, killed_pid: int) -> dict[str, float]:
    """Queries by operation between two readings, over every process but the killed one.

    A process absent before (the respawned worker) counts from zero.
    """
    delta: dict[str, float] = {}
    for pid, counts in after.items():
        if pid == killed_pid:
            continue
        start = before.get(pid, {})
        for operation, value in counts.items():
            delta[operation] = delta.get(operation, 0.0) + value - start.get(operation, 0.0)
    return delta


def total_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    return {op: after.get(op, 0.0) - before.get(op, 0.0) for op in set(before) | set(after)}
