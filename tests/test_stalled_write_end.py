"""A stream whose write passes STREAM_WRITE_TIMEOUT_SECONDS ends with an ordinary close, not a TCP reset.

docs/operations.md ("A stalled write: what the client sees") once said the
connection was reset; the client in fact reads what reached it and then an end
of stream, and over HTTP/1.1 the chunked body lacks its closing chunk.
"""
from __future__ import annotations

import socket

import pytest
import requests

from tests.support.faults import metric
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

ROOM = "stalled"
WRITE_TIMEOUT = 1.0
TEXT_CHARS = 40_000


def test_a_stalled_write_ends_the_stream_with_a_close_the_client_reads_to_its_end(start_server):
    server = start_server(WEB_CONCURRENCY="1", STREAM_WRITE_TIMEOUT_SECONDS=str(WRITE_TIMEOUT),
                          MAX_TEXT_CHARS=str(TEXT_CHARS), STREAM_SEND_BUFFER_BYTES="4096")
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", server.port))
    reader.sendall(f"GET /messages?room={ROOM} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = b""
    while b"retry:" not in received:  # the stream has begun
        received += reader.recv(1024)
    # Far more than both socket buffers hold: the server's write blocks, and this client reads nothing.
    with requests.Session() as session:
        for number in range(20):
            reply = session.post(server.url + "/messages", json={"room": ROOM, "text": f"{number} " + "x" * 39_000},
                                 timeout=5)
            assert reply.status_code == 201
    wait_until(lambda: metric(server.url, "sse_streams_dropped_total", reason="stalled") == 1, WRITE_TIMEOUT + 10)

    reader.settimeout(10)
    try:
        while chunk := reader.recv(65536):  # a TCP reset would raise ConnectionResetError here
            received += chunk
    finally:
        reader.close()

    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert b"retry:" in body and b"data:" in body, "what reached the client before the close is there to read"
    assert not body.endswith(b"0\r\n\r\n"), "the stream was cut off, not finished"
    assert "ended_by=stalled" in server.log_path.read_text()
