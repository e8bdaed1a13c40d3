"""The killed worker's replacement in the storm: kill -> forked -> serving, per store.

Watched from outside, every `POLL_SECONDS` from the kill, so the figures
carry that much resolution and no instrumentation of the server:

  forked   a worker pid of the master that was not there before the kill
           appears (gunicorn forks the replacement at once; its boot --
           imports, create_app, warming the window -- follows)
  serving  the replacement has admitted its first stream: `sse_open_streams`
           in its own prometheus_client gauge file
           (`gauge_livesum_<pid>.db` in the run's PROMETHEUS_MULTIPROC_DIR)
           is above 0. A stream is admitted once the worker has accepted
           the connection and the app has run its checks (the join may still
           wait for the window to be warm: that wait is in the resume times).

Only for systems with such per-process files (ours, on either store); the
one-process Go servers have no replacement worker to tell apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .storequeries import _entries

POLL_SECONDS = 0.02
OPEN_STREAMS = "sse_open_streams"


def open_streams(metrics_dir: Path, pid: int) -> float | None:
    """The worker's `sse_open_streams` from its gauge file; None while it has written none."""
    try:
        data = (metrics_dir / f"gauge_livesum_{pid}.db").read_bytes()
    except OSError:
        return None
    for key, value in _entries(data):
        try:
            metric_name = json.loads(key)[0]
        except (ValueError, TypeError, IndexError):
            continue
        if metric_name == OPEN_STREAMS:
            return value
    return None


def listen_overflows() -> int | None:
    """The machine's TcpExt ListenOverflows: connections a full accept queue turned away (any server)."""
    try:
        lines = [line.split() for line in open("/proc/net/netstat", encoding="ascii")]
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names and names[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(values[names.index("ListenOverflows")])
    return None


async def watch_replacement(worker_pids: Callable[[], list[int]], metrics_dir: Path | None,
                            before: set[int], kill_ns: int, timeout: float, out: dict[str, Any]) -> None:
    """Fill `out` until the replacement serves (or `timeout`); times in ms from the kill.

    `out` is filled as the figures come, so a caller that stops waiting keeps what was seen.
    """
    out.update({"pid": None, "forked_ms": None, "serving_ms": None,
                "measured": ("kill -> a new worker pid (forked); kill -> its first admitted stream"
                             f" (sse_open_streams > 0 in its gauge file); polled every"
                             f" {POLL_SECONDS * 1000:.0f} ms")})
    if metrics_dir is None:
        out["measured"] = "n/a: no per-worker metrics files"
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now_ms = (time.monotonic_ns() - kill_ns) / 1e6
        if out["pid"] is None:
            new = [pid for pid in await asyncio.to_thread(worker_pids) if pid not in before]
            if new:
                out["pid"], out["forked_ms"] = new[0], round(now_ms)
        if out["pid"] is not None:
            streams = await asyncio.to_thread(open_streams, metrics_dir, out["pid"])
            if streams:
                out["serving_ms"] = round(now_ms)
                return
        await asyncio.sleep(POLL_SECONDS)
