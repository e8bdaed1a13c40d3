"""Micro-benchmark: what the subscribe hook (AUTH_SUBSCRIBE_URL) adds to opening one stream.

    .venv/bin/python bench/hook_cost.py [--opens 500] [--rounds 3]

Real gunicorn with one gevent worker on loopback, and the Flask application of
tests/support/hook_app.py as the hook (werkzeug's threaded server, in this
process: a stand-in for the application, whose own time is its own). A client
opens a stream of one room, reads its first line (``retry:``) and closes it,
one after another, as bench/open_cost.py's ``live`` does, in three cases:

* ``public``: a room in PUBLIC_ROOMS: no hook call (the baseline);
* ``hook``: a private room, AUTH_SUBSCRIBE_CACHE_SECONDS=0: one hook call per open;
* ``hook, cached``: the same with AUTH_SUBSCRIBE_CACHE_SECONDS=60 and the same
  cookie every time: the first open asks, the rest are answered from the cache.

With ``--storm N``: N distinct users open a stream each, all at once, against
two workers with the default AUTH_SUBSCRIBE_MAX_CONCURRENT (32) and a hook
that takes 20 ms: the most calls the hook saw in flight, how many opens were
let in and how many got 503 (and would come back after Retry-After), and how
long the storm took.

For each: wall time per open (client to first line, the hook's own time
included) and the worker's CPU time per open (utime + stime from
/proc/PID/stat: what sse-rooms pays, the urllib3 call included; the worker's
background work too, the same in every case). Needs the project's .venv
(Flask, urllib3); run it from a checkout. Bounded: ``--opens`` per round,
``--rounds`` rounds.
"""
from __future__ import annotations

import argparse
import http.client
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())

from open_cost import process_cpu_seconds  # noqa: E402  (bench/ is this script's directory on sys.path)

ROOM_PUBLIC, ROOM_PRIVATE = "lobby", "team-red"


def _measure(directory: str, hook, opens: int, room: str, cache_seconds: str) -> tuple[float, float, int]:
    """Return (wall us, worker CPU us, hook calls) per open."""
    from tests.support.live import LiveServer

    server = LiveServer({"SQLITE_PATH": os.path.join(directory, f"hook-{time.monotonic_ns()}.sqlite3"),
                         "WEB_CONCURRENCY": "1", "MAX_STREAMS_PER_CLIENT": "100000",
                         "LOG_LEVEL": "info",  # LiveServer waits for the worker's "started with" line
                         "MONGODB_URI": "", "AUTH_SUBSCRIBE_URL": hook.hook_url, "PUBLIC_ROOMS": f"{ROOM_PUBLIC},ready",
                         "AUTH_SUBSCRIBE_CACHE_SECONDS": cache_seconds},
                        Path(directory) / f"gunicorn-{time.monotonic_ns()}.log").start()
    cookie = hook.login_cookie("ada")
    try:
        [pid] = server.worker_pids()

        def worker_cpu() -> float:
            return process_cpu_seconds(pid)

        def run(count: int) -> None:
            for _ in range(count):
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                connection.request("GET", f"/messages?room={room}", headers={"Cookie": cookie})
                response = connection.getresponse()
                assert response.status == 200, (response.status, response.read())
                response.fp.readline()  # retry: -- the stream is open
                connection.close()

        run(50)  # warm: the code paths, the pool's connection to the hook
        calls = len(hook.calls)
        wall, cpu = time.perf_counter(), worker_cpu()
        run(opens)
        return ((time.perf_counter() - wall) / opens * 1e6, (worker_cpu() - cpu) / opens * 1e6,
                len(hook.calls) - calls)
    finally:
        server.stop()


def storm(directory: str, hook, users: int) -> None:
    """Open ``users`` streams at once, each a user of its own; print what the hook and the clients saw."""
    import threading

    from tests.support.live import LiveServer

    server = LiveServer({"SQLITE_PATH": os.path.join(directory, "storm.sqlite3"), "MONGODB_URI": "",
                         "MAX_STREAMS_PER_CLIENT": "100000", "LOG_LEVEL": "info", "AUTH_SUBSCRIBE_URL": hook.hook_url,
                         "PUBLIC_ROOMS": "ready"}, Path(directory) / "gunicorn-storm.log").start()
    cookie = hook.login_cookie("ada")
    hook.behaviour, hook.slow_seconds, hook.in_flight_peak = "slow", 0.02, 0
    statuses: list[int] = []
    go = threading.Event()

    def open_one(n: int) -> None:
        go.wait()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            connection.request("GET", f"/messages?room={ROOM_PRIVATE}", headers={"Cookie": f"{cookie}; user={n}"})
            statuses.append(connection.getresponse().status)
            connection.close()
        except OSError:
            statuses.append(-1)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(users)]
    try:
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        go.set()
        for thread in threads:
            thread.join()
        took = time.perf_counter() - started
        counts = {status: statuses.count(status) for status in sorted(set(statuses))}
        print(f"storm of {users} users at once (2 workers x 32 slots, a 20 ms hook): hook peak "
              f"{hook.in_flight_peak} calls in flight, {len(hook.calls)} calls; statuses {counts}; {took:.1f} s",
              flush=True)
    finally:
        hook.behaviour = "normal"
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--storm", type=int, default=0, help="users opening at once (0: no storm; at most 5000)")
    args = parser.parse_args()
    if not 0 <= args.storm <= 5000:
        parser.error("--storm takes 0 to 5000 users")
    logging.disable(logging.INFO)  # werkzeug's line per hook call
    from tests.support.hook_app import HookApp

    hook = HookApp().start()
    try:
        with tempfile.TemporaryDirectory(prefix="sse-hook-cost-") as directory:
            if args.storm:
                hook.calls.clear()
                storm(directory, hook, args.storm)
                return
            cases = (("public (no hook call)", ROOM_PUBLIC, "0"), ("hook, no cache", ROOM_PRIVATE, "0"),
                     ("hook, cached 60 s", ROOM_PRIVATE, "60"))
            for name, room, cache in cases:
                figures = [_measure(directory, hook, args.opens, room, cache) for _ in range(args.rounds)]
                wall, cpu, calls = zip(*figures, strict=True)
                print(f"{name}: wall {statistics.median(wall):.0f} us, worker CPU {statistics.median(cpu):.0f} us "
                      f"per open; {sum(calls)} hook calls for {args.opens * args.rounds} opens "
                      f"(medians of {args.rounds} rounds of {args.opens})", flush=True)
    finally:
        hook.stop()


if __name__ == "__main__":
    main()
