"""Live: a worker that replaces a killed one warms its window, freezes it out of the GC, and resumes exactly.

The reconnect storm's path (bench/ssebench/storm.py) at test size, on each
store: a worker dies by SIGKILL, gunicorn forks a new one, the new one reads
the store's window and then takes ``gc.freeze()`` (app/operations/lifecycle.py);
streams that resume on it with a Last-Event-ID get exactly what followed
that id, and then live messages, once each.
"""
from __future__ import annotations

import os
import re
import signal

import pytest

from tests.support.sse_client import StreamReader
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

FROZEN = re.compile(r"\[(\d+)\] \[INFO\] window warm: (\d+) objects frozen out of the cyclic GC")


def frozen_by_pid(server) -> dict[int, int]:
    """The "objects frozen" line of each worker in the log: {pid: count}."""
    return {int(pid): int(count) for pid, count in FROZEN.findall(server.log_path.read_text(errors="replace"))}


def test_a_replacement_worker_freezes_its_warm_window_and_resumes_streams_exactly(start_server, store_env):
    server = start_server(**store_env)
    room = "warm-replacement"
    first = server.worker_pids()
    wait_until(lambda: set(first) <= set(frozen_by_pid(server)), 20, lambda: f"not frozen: {server.log()}")
    ids = [server.publish(room, f"m{n}")["id"] for n in range(6)]

    victim = first[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(set(server.worker_pids()) - set(first)) == 1, 20, "no replacement worker")
    (replacement,) = set(server.worker_pids()) - set(first)
    wait_until(lambda: replacement in frozen_by_pid(server), 20, lambda: f"replacement not frozen: {server.log()}")
    # It froze after reading the store's window: at least the app and its modules.
    assert frozen_by_pid(server)[replacement] > 10_000

    # Which worker accepts is up to the kernel: resume until the replacement holds some.
    readers: list[StreamReader] = []
    on_replacement = 0
    try:
        while len(readers) < 60 and on_replacement < 3:
            readers.append(StreamReader(f"{server.url}/messages?room={room}", last_event_id=ids[1]))
            on_replacement += server.worker_holding(readers[-1].sock.getsockname()[1]) == replacement
        assert on_replacement >= 3, "the replacement worker took no resumed stream"
        for reader in readers:
            assert reader.wait_for(lambda events: len(events) >= 4, timeout=5.0), reader.events
        live = server.publish(room, "live")["id"]
        for reader in readers:
            assert reader.wait_for(lambda events: any(e.id == live for e in events), timeout=5.0), reader.events
            assert [e.id for e in reader.messages] == ids[2:] + [live]
            assert not [e for e in reader.events if e.event == "reset"]
    finally:
        for reader in readers:
            reader.close()
