"""How far a stream open can go down under the fixed design: floors beside our server, paired.

    .venv/bin/python bench/open_floor.py [--batches 12] [--per-batch 200]

Issue 17 asks for a stream open at half its cost. This puts our server's open
beside the least any open can cost with the same parts (``bench/open_floor_apps.py``):
a bare WSGI generator and a do-nothing Flask blueprint stream, each under
gunicorn's ``gevent`` worker (ours) and its ``gevent_pywsgi`` worker. If half
of our open is below a floor, no trimming of our own code reaches it.

Every server runs at once, one worker each, on core 0 (when there are two
cores; the client on core 1), and a client opens a stream on each in turn,
``--per-batch`` at a time (request, read the ``retry:`` line, close),
alternating the order every batch, as ``bench/open_ab.py`` does. Printed per
server: the median over batches of the worker's CPU per open (utime + stime
from /proc) and its quartiles. Ours is measured as it runs (SQLite store,
LOG_LEVEL info), background included: its idle tailer polls cost ~100 us per
open at this rate (``bench/open_ab.py`` prints the figure net of them).
Bounded: ``--batches`` x ``--per-batch`` opens per server.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.open_ab import TreeServer, open_streams  # noqa: E402
from bench.open_cost import process_cpu_seconds  # noqa: E402
from tests.support.live import GUNICORN, ROOT, LiveServer  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

SERVER_CORE, CLIENT_CORE = {0}, {1}
FLOORS = {
    "bare WSGI, gevent": ("gevent", "raw_app"),
    "bare WSGI, gevent_pywsgi": ("gevent_pywsgi", "raw_app"),
    "Flask stream, gevent": ("gevent", "flask_app"),
    "Flask stream, gevent_pywsgi": ("gevent_pywsgi", "flask_app"),
}


class FloorServer(LiveServer):
    """gunicorn, one worker of ``worker_class``, serving one of the floor apps."""

    def __init__(self, worker_class: str, app: str, log_path: Path) -> None:
        super().__init__({"WEB_CONCURRENCY": "1"}, log_path)
        self.command = [str(GUNICORN), "--worker-class", worker_class, "--workers", "1",
                        "--bind", f"127.0.0.1:{self.port}", "--worker-connections", "5000",
                        f"open_floor_apps:{app}"]

    def start(self, timeout: float = 20.0) -> FloorServer:
        self.process = subprocess.Popen(self.command, cwd=ROOT / "bench", env=self.env,
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_until(self._answers, timeout, interval=0.1)
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {self.log_path.read_text(errors='replace')}")
        try:
            open_streams(self.port, 1)
        except OSError:
            return False
        return len(self.worker_pids()) == 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--per-batch", type=int, default=200)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="sse-open-floor-"))
    servers: dict[str, LiveServer] = {}
    try:
        for name, (worker_class, app) in FLOORS.items():
            servers[name] = FloorServer(worker_class, app, directory / f"{app}-{worker_class}.log").start()
        servers["ours (SQLite)"] = TreeServer(ROOT, {
            "WEB_CONCURRENCY": "1", "MAX_STREAMS_PER_CLIENT": "100000", "LOG_LEVEL": "info",
            "MONGODB_URI": "", "SQLITE_PATH": str(directory / "ours.sqlite3")}, directory / "ours.log").start()
        split = (os.cpu_count() or 1) >= 2
        workers = {name: server.worker_pids()[0] for name, server in servers.items()}
        if split:
            for server in servers.values():
                for pid in [server.process.pid, *server.worker_pids()]:
                    os.sched_setaffinity(pid, SERVER_CORE)
            os.sched_setaffinity(0, CLIENT_CORE)
        for server in servers.values():
            open_streams(server.port, 100)  # warm: every code path once
        per_open: dict[str, list[float]] = {name: [] for name in servers}
        order = list(servers)
        for number in range(args.batches):
            for name in (order if number % 2 == 0 else order[::-1]):
                before = process_cpu_seconds(workers[name])
                open_streams(servers[name].port, args.per_batch)
                time.sleep(0.05)  # the last close handled
                per_open[name].append((process_cpu_seconds(workers[name]) - before) / args.per_batch * 1e6)
    finally:
        for server in servers.values():
            server.stop()
    print(f"{args.batches} batches x {args.per_batch} opens per server, alternating;"
          f" {'servers on core 0, client on core 1' if split else 'one core: no split'}")
    ours = statistics.median(per_open["ours (SQLite)"])
    for name, figures in per_open.items():
        low, _, high = statistics.quantiles(figures, n=4)
        median = statistics.median(figures)
        print(f"  {name:>28}: worker CPU per open, median {median:5.0f} us (IQR {low:.0f}-{high:.0f});"
              f" {median / ours:.2f} x ours")
    print(f"  half of ours: {ours / 2:.0f} us")


if __name__ == "__main__":
    main()
