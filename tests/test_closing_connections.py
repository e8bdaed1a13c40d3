"""A body over MAX_CONTENT_LENGTH is refused with 413 however it is sent, and never drained by the worker."""
from __future__ import annotations

import io
import socket
import time

import pytest
import requests

MAX_BODY = 6 * 4096 + 1024  # the default MAX_BODY_BYTES


def test_a_chunked_body_past_the_limit_is_413_not_a_truncated_json_error(client):
    """Regression: a chunked body was cut at the limit and answered 400 "not valid JSON"."""
    body = b'{"room": "r", "text": "' + b"x" * (MAX_BODY + 10) + b'"}'
    reply = _post_chunked(client, body)
    assert reply.status_code == 413
    assert reply.get_json()["code"] == 413
    assert client.get("/messages/history?room=r").get_json()["messages"] == []


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(client):
    """Regression: asking werkzeug's limited stream for one more byte refused a body of exactly the limit."""
    head, tail = b'{"room": "r", "text": "', b'"}'
    body = head + b"x" * (MAX_BODY - len(head) - len(tail)) + tail
    assert len(body) == MAX_BODY
    assert _post_chunked(client, body).status_code == 422  # read whole: the text is past MAX_TEXT_CHARS


def test_a_chunked_body_within_the_limit_is_published(client):
    body = b'{"room": "r", "text": "' + b"x" * 4096 + b'"}'
    reply = _post_chunked(client, body)
    assert reply.status_code == 201


def _post_chunked(client, body: bytes):
    """POST a body with no Content-Length, as gunicorn hands a chunked body to the app (input terminated)."""
    return client.post("/messages", content_type="application/json", environ_overrides={
        "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True, "CONTENT_LENGTH": ""})


@pytest.mark.slow
def test_an_endless_chunked_body_gets_413_and_its_connection_closed_while_others_are_served(start_server):
    """Regression: gunicorn read an endless body to its end after the 413 (488 MB in 8 s), stalling the worker."""
    server = start_server(WEB_CONCURRENCY="1")  # one worker: a stall would hold every other request
    sender = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sender.sendall(b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    sender.sendall(b"%x\r\n" % 23 + b'{"room": "r", "text": "' + b"\r\n")
    sender.setblocking(False)
    received, closed_at, probe_seconds = b"", None, []
    started = time.monotonic()
    while time.monotonic() - started < 8 and closed_at is None:  # bounded: 8 s at most
        try:
            sender.send(framed)
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.monotonic()
        try:
            data = sender.recv(65536)
            received += data
            if not data:
                closed_at = time.monotonic()
        except BlockingIOError:
            pass
        except ConnectionResetError:
            closed_at = time.monotonic()
        if b"413" in received and not probe_seconds:
            before = time.monotonic()
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
            probe_seconds.append(time.monotonic() - before)
    sender.close()

    assert received.startswith(b"HTTP/1.1 413"), received[:200]
    assert closed_at is not None and closed_at - started < 5, "the server went on reading the endless body"
    assert probe_seconds and probe_seconds[0] < 2
    assert requests.get(server.url + "/messages/history?room=r", timeout=5).json()["messages"] == []


def _open_stream(port: int, room: str) -> socket.socket:
    """A raw HTTP/1.1 stream request that asks to keep its connection alive, as browsers and proxies do."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /messages?room={room} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".encode())
    return sock


def _read_to_end(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Read for at most ``seconds``; return what came and whether the server closed the connection."""
    received, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            return received, True
        received += data
    return received, False


@pytest.mark.slow
def test_a_stream_that_ends_closes_its_connection(start_server):
    """A raw reader sees the end of an ended stream: the connection closes, it is not kept for another request."""
    server = start_server(STREAM_BACKLOG_MAX_BYTES="1024")
    for n in range(3):
        server.publish("ends", f"{n} " + "x" * 900)
    sock = _open_stream(server.port, "ends")
    received, closed = _read_to_end(sock, 10)
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close" in head, head
    assert b"retry: 100" in body  # the backlog bound ended it: EventSource resumes from its id
    assert body.endswith(b"0\r\n\r\n")  # the last chunk, then the close
    assert closed, "the connection was kept open after the stream ended"


@pytest.mark.slow
def test_sigterm_is_not_held_up_by_a_client_that_keeps_its_ended_stream_open(start_server):
    """A client holding the connection of a stream SIGTERM ended cannot make the worker wait out graceful_timeout."""
    server = start_server()
    sock = _open_stream(server.port, "held")
    received, _ = _read_to_end(sock, 1.0)
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    took = server.stop()
    rest, closed = _read_to_end(sock, 5)
    sock.close()
    assert closed and (received + rest).endswith(b"0\r\n\r\n")
    assert took < 5, f"stop took {took:.1f}s: {server.log()}"  # graceful_timeout is 10 s
    assert "Traceback" not in server.log_path.read_text()
