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
