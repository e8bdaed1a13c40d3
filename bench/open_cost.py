"""Micro-benchmark: what opening (and closing) one stream costs the worker, in microseconds.

    .venv/bin/python bench/open_cost.py [--opens 3000] [--rounds 5]

* ``view``: the stream view in-process (Flask's test client, no socket): the
  request is parsed, the stream admitted, its first chunk (``retry:``) read,
  and the response closed, which gives its slots back. Median of rounds.
* ``wsgi``: the same through the WSGI app called directly with a built environ,
  as gunicorn calls it (no test client, whose own request building costs
  more than the app): the app's share of an open and a close.
* ``live``: real gunicorn with one gevent worker on loopback: a client opens a
  stream, reads its first line and closes it, one after another; wall time
  per open, and the worker's CPU time per open (utime + stime from
  /proc/PID/stat, which includes the worker's own background work: its
  tailer's polls and presence writes, the same before and after). The line
  ``live, net of idle`` takes that out: the worker's CPU per second over 2 s
  with nothing connected (26-34 ms/s on the shared machine, mostly the
  tailer's 10 ms poll), times the wall time of the opens.
* ``wsgi`` closes the body right after its first chunk, before the stream
  joins, subscribes, parks and is woken by the client's close, and it logs no
  end line: ``live`` minus ``wsgi`` is not gunicorn's share alone
  (bench/results/2026-12-06-open-profile.md).
* ``slots``: MAX_STREAMS_PER_CLIENT's take and give-back alone, on a slots
  file in WAL as under gunicorn; ``slots, 2 processes``: the same while a
  second process takes and gives back on the same file as fast as it can
  (two workers opening at once, the worst case for the file's write lock).

Each figure is given twice: wall time, and the process's CPU time (what the
open costs the worker, whatever else the machine runs: on a shared, loaded
machine wall time mostly measures waiting for a core).

Run it from a checkout: it measures the ``app`` package it finds there, so the
same file measures a tree without the per-client slots (``view`` only).
Bounded: ``--opens`` per round, ``--rounds`` rounds.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())


def process_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds (user + system) process ``pid`` has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _timed(run, opens: int) -> tuple[float, float]:
    """Return (wall, CPU) microseconds per open of ``run(opens)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(opens)
    return (time.perf_counter() - wall) / opens * 1e6, (time.process_time() - cpu) / opens * 1e6


def view_cost(directory: str, opens: int) -> tuple[float, float]:
    from app import create_app

    env = {"SQLITE_PATH": os.path.join(directory, "messages.sqlite3"),
           "CLIENT_SLOTS_PATH": os.path.join(directory, f"client-slots-view-{time.monotonic_ns()}"),
           "MAX_STREAMS_PER_CLIENT": "100000", "LOG_LEVEL": "error"}
    client = create_app(env).test_client()

    def run(count: int) -> None:
        for _ in range(count):
            reply = client.get("/messages?room=bench", buffered=False)
            next(iter(reply.response))
            reply.close()

    run(100)  # warm: the window, the code paths
    return _timed(run, opens)


def wsgi_cost(directory: str, opens: int) -> tuple[float, float]:
    import io

    from app import create_app

    env = {"SQLITE_PATH": os.path.join(directory, "messages-wsgi.sqlite3"),
           "CLIENT_SLOTS_PATH": os.path.join(directory, f"client-slots-{time.monotonic_ns()}"),
           "MAX_STREAMS_PER_CLIENT": "100000", "LOG_LEVEL": "error"}
    app = create_app(env)

    def start_response(status, headers, exc_info=None):
        return lambda data: None

    def environ(n: int) -> dict:
        return {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/messages",
                "QUERY_STRING": f"room=r{n % 50}", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
                "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": f"127.0.0.{2 + n % 50}", "REMOTE_PORT": "5555",
                "HTTP_HOST": "127.0.0.1:8000", "HTTP_ACCEPT": "text/event-stream", "wsgi.input": io.BytesIO(),
                "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
                "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False}

    def run(count: int) -> None:
        for n in range(count):
            body = app(environ(n), start_response)
            next(iter(body))
            body.close()

    run(300)
    return _timed(run, opens)


def slots_cost(path: str, opens: int) -> tuple[float, float]:
    from app.delivery.client_slots import ClientSlots

    slots = ClientSlots(path, limit=10**9)

    def run(count: int) -> None:
        for n in range(count):
            client = f"ip:192.0.2.{n % 250}"
            slots.take(client)
            slots.give_back(client)

    return _timed(run, opens)


def live_cost(directory: str, opens: int, background: list[float] | None = None) -> tuple[float, float]:
    import http.client

    from tests.support.live import LiveServer

    server = LiveServer({"SQLITE_PATH": os.path.join(directory, "live.sqlite3"), "WEB_CONCURRENCY": "1",
                         "MAX_STREAMS_PER_CLIENT": "100000", "LOG_LEVEL": "info", "MONGODB_URI": ""},
                        Path(directory) / f"gunicorn-{time.monotonic_ns()}.log").start()
    try:
        [pid] = server.worker_pids()

        def worker_cpu() -> float:
            return process_cpu_seconds(pid)

        def run(count: int) -> None:
            for _ in range(count):
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                connection.request("GET", "/messages?room=bench")
                response = connection.getresponse()
                assert response.status == 200, response.status
                response.fp.readline()  # retry: -- the stream is open
                connection.close()

        run(100)
        if background is not None:  # the worker's CPU per second with nothing connected
            time.sleep(0.5)
            idle_wall, idle_cpu = time.perf_counter(), worker_cpu()
            time.sleep(2.0)
            background.append((worker_cpu() - idle_cpu) / (time.perf_counter() - idle_wall))
        wall, cpu = time.perf_counter(), worker_cpu()
        run(opens)
        return (time.perf_counter() - wall) / opens * 1e6, (worker_cpu() - cpu) / opens * 1e6
    finally:
        server.stop()


def _summary(figures: list[tuple[float, float]]) -> str:
    wall, cpu = zip(*figures, strict=True)
    return (f"wall {statistics.median(wall):.1f} us, CPU {statistics.median(cpu):.1f} us per stream "
            f"(medians of {len(figures)} rounds)")


def _hammer(path: str, stop) -> None:
    from app.delivery.client_slots import ClientSlots

    slots = ClientSlots(path, limit=10**9)
    while not stop.is_set():
        slots.take("ip:198.51.100.1")
        slots.give_back("ip:198.51.100.1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)  # a stream's end line per open would be measured too
    has_slots = Path("app/delivery/client_slots.py").exists()
    with tempfile.TemporaryDirectory(prefix="sse-open-cost-") as directory:
        view = [view_cost(directory, args.opens) for _ in range(args.rounds)]
        print(f"view (open, first chunk, close): {_summary(view)}")
        wsgi = [wsgi_cost(directory, args.opens) for _ in range(args.rounds)]
        print(f"wsgi (the app called as gunicorn calls it): {_summary(wsgi)}")
        background: list[float] = []
        live = [live_cost(directory, args.opens, background) for _ in range(args.rounds)]
        print(f"live (gunicorn, 1 worker; CPU is the worker's): {_summary(live)}")
        net = [(wall, cpu - idle * wall) for (wall, cpu), idle in zip(live, background, strict=True)]
        print(f"live, net of idle (the worker's idle CPU, median {statistics.median(background) * 1e3:.1f} ms/s, "
              f"times the wall time): {_summary(net)}")
        if not has_slots:
            return
        path = os.path.join(directory, "slots-bench")
        alone = [slots_cost(path, args.opens) for _ in range(args.rounds)]
        print(f"slots (take + give back): {_summary(alone)}")
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        other = context.Process(target=_hammer, args=(path, stop))
        other.start()
        time.sleep(1.0)  # it is up and writing
        try:
            contended = [slots_cost(path, args.opens) for _ in range(args.rounds)]
        finally:
            stop.set()
            other.join(10)
        print(f"slots, 2 processes at once: {_summary(contended)}")


if __name__ == "__main__":
    main()
