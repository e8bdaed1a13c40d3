"""Fault 4: clients that vanish without closing are detected within about two heartbeats."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.support.faults import metric
from tests.support.waiting import wait_until

HEARTBEAT = 1.0
STREAMS = 100

# A client process that opens streams, reads their headers, and then just sits there.
_VANISHING_CLIENT = r"""
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for n in range(count):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /messages?room=vanish-{n % 5} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    held.append(sock)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_vanished_clients_release_their_streams_within_two_heartbeats(start_server):
    server = start_server(HEARTBEAT_SECONDS=str(HEARTBEAT))
    baseline = {name: metric(server.url, name) for name in ("sse_open_streams", "sse_hub_subscriptions")}
    client = subprocess.Popen([sys.executable, "-c", _VANISHING_CLIENT, str(server.port), str(STREAMS)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "ready"
        wait_until(lambda: metric(server.url, "sse_hub_subscriptions") == baseline["sse_hub_subscriptions"] + STREAMS,
                   10)
        assert metric(server.url, "sse_open_streams") == baseline["sse_open_streams"] + STREAMS
        client.send_signal(signal.SIGKILL)  # no close, no goodbye: the kernel tidies up
        client.wait()
        vanished_at = time.monotonic()
        wait_until(lambda: all(metric(server.url, name) == value for name, value in baseline.items()), 10)
        released_after = time.monotonic() - vanished_at
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    print(f"\n{STREAMS} streams of a killed client released after {released_after:.2f}s "
          f"(heartbeat {HEARTBEAT:g}s)")
    assert released_after <= 2 * HEARTBEAT + 1.0  # the second write after the peer left fails
    assert server.log_path.read_text().count("ended_by=client gone") >= STREAMS
