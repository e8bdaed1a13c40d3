"""A body over MAX_CONTENT_LENGTH is refused with 413 however it is sent, and never drained by the worker."""
from __future__ import annotations

import http.client
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


CHUNK = b"x" * 65536
ENDLESS_CHUNKS = b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"
# Request heads whose body goes on for ever, and the status each is answered with first.
ENDLESS_BODIES = {
    "publish, chunked: 413": (b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 23 + b'{"room": "r", "text": "'
                              + b"\r\n", ENDLESS_CHUNKS, b"413"),
    "GET /healthz with a chunked body: answered unread": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", ENDLESS_CHUNKS, b"200"),
    "publish, not JSON: 415 unread": (b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n", ENDLESS_CHUNKS, b"415"),
    "history with a terabyte Content-Length": (
        b"GET /messages/history?room=r HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n", CHUNK,
        b"200"),
}


@pytest.mark.slow
@pytest.mark.parametrize("head, more, status", ENDLESS_BODIES.values(), ids=ENDLESS_BODIES.keys())
def test_an_endless_body_is_never_drained_its_connection_closes_while_others_are_served(start_server, head,
                                                                                      more, status):
    """gunicorn reads what is left of a body before the next request, unbounded: 488 MB in 8 s stalled a worker.

    Whatever the answer -- a 413, or one given without reading the body -- the
    connection closes once the rest proves longer than MAX_BODY_BYTES.
    """
    server = start_server(WEB_CONCURRENCY="1")  # one worker: a stall would hold every other request
    sender = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sender.sendall(head)
    sender.setblocking(False)
    received, closed_at, probe_seconds, unsent = b"", None, [], b""
    started = time.monotonic()
    while time.monotonic() - started < 8 and closed_at is None:  # bounded: 8 s at most
        try:
            unsent = unsent or more  # whole chunks: a broken framing would be refused as such
            unsent = unsent[sender.send(unsent):]
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
        if b"\r\n\r\n" in received and not probe_seconds:
            before = time.monotonic()
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
            probe_seconds.append(time.monotonic() - before)
    sender.close()

    assert received.startswith(b"HTTP/1.1 " + status), received[:200]
    assert closed_at is not None and closed_at - started < 5, "the server went on reading the endless body"
    assert probe_seconds and probe_seconds[0] < 2
    assert requests.get(server.url + "/messages/history?room=r", timeout=5).json()["messages"] == []
    assert "Traceback" not in server.log_path.read_text()


@pytest.mark.slow
def test_a_short_unread_body_keeps_its_connection_alive(start_server):
    """A body within MAX_BODY_BYTES that the app did not need is read here, and the connection goes on."""
    server = start_server()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(3):
        connection.request("GET", "/healthz", body=b"x" * 4096)  # a Content-Length body nobody reads
        reply = connection.getresponse()
        assert reply.status == 200 and reply.getheader("Connection") != "close"
        reply.read()
    local = connection.sock.getsockname()
    connection.request("POST", "/messages", body=b"{}", headers={"Content-Type": "text/plain"})
    reply = connection.getresponse()
    assert reply.status == 415
    reply.read()
    assert connection.sock is not None and connection.sock.getsockname() == local  # one connection throughout
    connection.close()


# Chunked bodies the server's reader may refuse: a 4xx in the one error shape, never a 500 and a traceback.
MALFORMED_CHUNKED = {
    "chunk size not hex": b"zz\r\n{}\r\n0\r\n\r\n",
    "chunk without its CRLF": b"2\r\n{}XX0\r\n\r\n",
    "chunk extension 9,000 bytes long": b"2;" + b"a" * 9000 + b"\r\n{}\r\n0\r\n\r\n",
    "a control character in a trailer": b"2\r\n{}\r\n0\r\nX\x01Y: z\r\n\r\n",
    "the client stops sending mid-chunk": b"2\r\n{}",
}


@pytest.mark.slow
def test_a_malformed_chunked_body_is_a_4xx_never_a_500_with_a_traceback(start_server):
    server = start_server()
    for name, body in MALFORMED_CHUNKED.items():
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)  # and nothing more: the last case ends mid-chunk
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        sock.close()
        status = received[9:12]  # 400, or 422 where the reader took the chunks after all (the extension)
        assert received.startswith(b"HTTP/1.1 4") and status in (b"400", b"422"), (name, received[:300])
        assert b'"code":' + status in received.replace(b" ", b""), (name, received[-300:])
    log = server.log_path.read_text()
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
    assert requests.get(server.url + "/messages/history?room=r", timeout=5).json()["messages"] == []


def test_json_nested_thousands_deep_is_400(client):
    reply = client.post("/messages", data="[" * 5000 + "]" * 5000, content_type="application/json")
    assert reply.status_code == 400
    assert reply.get_json()["message"] == "request body is not valid JSON: nested too deeply"


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
