"""Paired A/B of what a stream open costs a live worker: every variant's server up at once.

    .venv/bin/python bench/open_ab.py [--batches 30] [--per-batch 200] NAME=TREE[:K=V,...] NAME=TREE ...

Each variant is a checkout (TREE, with its own ``.venv`` from ``make install``:
a venv's editable install points at one tree) and optional environment
settings for its gunicorn (``GUNICORN_CMD_ARGS=...`` too). All variants are
started first, one gevent worker each; then a client opens a stream on each
in turn, ``--per-batch`` opens at a time, reads its ``retry:`` line and closes
it, alternating the order every batch. So every variant sees the same machine
load, which on a shared machine moves the CPU per open by a quarter within
minutes -- far more than the changes measured (``bench/open_cost.py``'s
``live`` runs one variant after another).

Printed per variant: the worker's CPU per open (utime + stime from /proc),
the same net of the worker's idle background (its CPU per second while no one
connects, measured first: the tailer's polls, the presence loop, gunicorn's
heartbeat, times the wall time of the opens), and, against the first variant,
the median of the batch-by-batch differences and in how many batches it was
lower. Bounded: ``--batches`` x ``--per-batch`` opens per variant.
"""
from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.open_cost import process_cpu_seconds  # noqa: E402
from tests.support.live import LiveServer  # noqa: E402


class TreeServer(LiveServer):
    """gunicorn of another checkout, with that checkout's venv and gunicorn.conf.py."""

    def __init__(self, tree: Path, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.tree = tree

    def start(self, timeout: float = 60.0) -> TreeServer:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(self.tree / ".venv/bin/gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=self.tree, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log()}")
            try:
                answered = requests.get(self.url + "/messages/history?room=ready", timeout=1).status_code == 200
            except requests.RequestException:
                answered = False
            if answered and len(self.worker_pids()) == 1:
                time.sleep(2.0)  # the window warm, the worker settled (whatever its LOG_LEVEL prints)
                return self
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not become ready: {self.log()}")


def open_streams(port: int, count: int) -> None:
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/messages?room=bench")
        response = connection.getresponse()
        assert response.status == 200, response.status
        response.fp.readline()  # retry: -- the stream is open
        connection.close()


def parse_variant(text: str) -> tuple[str, Path, dict[str, str]]:
    name, _, rest = text.partition("=")
    tree, _, settings = rest.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, Path(tree).resolve(), env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--per-batch", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("variants", nargs="+", help="NAME=TREE[:K=V,...]")
    args = parser.parse_args()
    servers: list[tuple[str, TreeServer, int]] = []
    try:
        for name, tree, settings in map(parse_variant, args.variants):
            directory = Path(tempfile.mkdtemp(prefix=f"sse-open-ab-{name}-"))
            env = {"WEB_CONCURRENCY": "1", "MAX_STREAMS_PER_CLIENT": "100000", "LOG_LEVEL": "info",
                   "MONGODB_URI": "", "SQLITE_PATH": str(directory / "live.sqlite3"), **settings}
            server = TreeServer(tree, env, directory / "gunicorn.log").start()
            [pid] = server.worker_pids()
            servers.append((name, server, pid))
        for _, server, _ in servers:
            open_streams(server.port, 200)  # warm: the code paths
        time.sleep(1.0)
        before = {name: process_cpu_seconds(pid) for name, _, pid in servers}
        started = time.perf_counter()
        time.sleep(args.idle_seconds)
        idle_for = time.perf_counter() - started
        idle = {name: (process_cpu_seconds(pid) - before[name]) / idle_for for name, _, pid in servers}
        batches: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in servers}
        for number in range(args.batches):
            for name, server, pid in (servers if number % 2 == 0 else servers[::-1]):
                cpu, wall = process_cpu_seconds(pid), time.perf_counter()
                open_streams(server.port, args.per_batch)
                batches[name].append((process_cpu_seconds(pid) - cpu, time.perf_counter() - wall))
    finally:
        for _, server, _ in servers:
            server.stop()
    opens = args.batches * args.per_batch
    print(f"{args.batches} batches x {args.per_batch} opens per variant, alternating; idle background: "
          + ", ".join(f"{name} {rate * 1e3:.1f} ms/s" for name, rate in idle.items()))
    for name, figures in batches.items():
        cpu, wall = sum(c for c, _ in figures), sum(w for _, w in figures)
        per_batch = [c / args.per_batch * 1e6 for c, _ in figures]
        quartiles = statistics.quantiles(per_batch, n=4)
        net = (cpu - idle[name] * wall) / opens * 1e6
        print(f"  {name:>12}: CPU per open {cpu / opens * 1e6:6.0f} us (batches: median "
              f"{statistics.median(per_batch):.0f}, IQR {quartiles[0]:.0f}-{quartiles[2]:.0f}); "
              f"net of idle {net:6.0f} us; wall {wall / opens * 1e6:5.0f} us")
    first = servers[0][0]
    for name in list(batches)[1:]:
        differences = [(c - c0) / args.per_batch * 1e6 for (c, _), (c0, _) in zip(batches[name], batches[first],
                                                                                   strict=True)]
        print(f"  {name} - {first}: median batch difference {statistics.median(differences):+.0f} us; "
              f"lower in {sum(d < 0 for d in differences)} of {len(differences)} batches")


if __name__ == "__main__":
    main()
