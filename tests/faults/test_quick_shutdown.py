"""Ctrl-C (SIGINT to the whole process group) with streams open stops the server without a traceback.

Each worker gets the terminal's SIGINT and then the master's SIGQUIT. gunicorn's
gevent worker obeyed both, and the second exit landed in the middle of the
interpreter's shutdown: gevent printed ``failed with SystemExit`` and, on
MongoDB, PyMongo's exit handler a traceback too (issue 18: 3 of 5 stops here).
"""
from __future__ import annotations

import asyncio
import os
import signal
import types

import pytest

from tests.support.eventsource import EventSourceClient

STOPS = 2
STREAMS = 20


async def _ctrl_c_under_streams(server, clients: list[EventSourceClient]) -> None:
    tasks = [asyncio.ensure_future(client.run()) for client in clients]
    await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 30)
    os.killpg(server.process.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the master and every worker
    await asyncio.wait_for(asyncio.gather(*tasks), 20)


@pytest.mark.slow
def test_ctrl_c_with_streams_open_stops_every_process_without_a_traceback(start_server, store_env):
    for stop in range(STOPS):
        server = start_server(HEARTBEAT_SECONDS="1", **store_env)
        clients = [EventSourceClient("127.0.0.1", server.port, f"quick-{n % 3}", reconnect=False)
                   for n in range(STREAMS)]
        asyncio.run(_ctrl_c_under_streams(server, clients))
        assert server.process.wait(20) == 0
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log and "failed with" not in log, f"stop {stop + 1}: {log[-3000:]}"


def test_a_worker_quits_once_whatever_number_of_quit_signals():
    """gunicorn's gevent worker ran its exit once per SIGINT/SIGQUIT; the second failed mid-shutdown."""
    from app.operations.lifecycle import quit_once

    quits: list[int] = []
    worker = types.SimpleNamespace(handle_quit=lambda signum, frame: quits.append(signum))
    quit_once(worker)  # what gunicorn then installs for SIGINT and SIGQUIT is worker.handle_quit
    worker.handle_quit(signal.SIGINT, None)  # the terminal's Ctrl-C
    worker.handle_quit(signal.SIGQUIT, None)  # the master's quick shutdown
    worker.handle_quit(signal.SIGINT, None)  # a second Ctrl-C
    assert quits == [signal.SIGINT]
