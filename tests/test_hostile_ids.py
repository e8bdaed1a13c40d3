"""Every resume id, path and header is answered, never crashes, and cannot write a line of its own into the log.

Live, on real gunicorn, once per store. Requests go out on raw sockets: HTTP
client libraries refuse to send most of these (a NUL or a leading space in a
header, a lone CR), and an attacker's client does not.

* Odd ids (``tests/support/odd_ids.py``: a sequence past 64 bits, signs,
  whitespace, other scripts' digits, empty parts, NUL, 256 characters), as the
  ``Last-Event-ID`` header, as ``lastEventId`` and as history's ``after``: the
  stream opens with ``event: reset`` and then the room, history answers 200
  with the same ``reset`` and the room from its oldest message (gunicorn
  itself refuses a header with a control character, with its own 400). A
  hypothesis property test does the same over generated shapes. Then the
  server's log holds no traceback.
* One reason for an unknown id, whatever room the id is of.
* Control characters in a path, a header, an id or a room name are escaped in
  every line of the log (gunicorn's own lines included): no line starts with
  the client's text.
"""
from __future__ import annotations

import json
import re
import socket
import time
from urllib.parse import quote, quote_from_bytes

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.stores.base import UNKNOWN_ID_REASON
from tests.support.odd_ids import id_shapes, odd_ids
from tests.support.waiting import wait_until
from tests.test_hostile_requests import _server_on_store

ROOM = "odd-ids"
OTHER_ROOM = "odd-ids-other"
ODD_ID_NAMES = list(odd_ids("0a1b2c3d-1"))  # the same names whatever the real id
STREAM_PATIENCE = 5.0  # seconds for a stream to send its reset and backlog: they come at once


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def id_server(request, tmp_path_factory):
    """Real gunicorn on one store at LOG_LEVEL=debug (the most lines to forge); a message in ROOM and OTHER_ROOM."""
    for server in _server_on_store(request, tmp_path_factory, LOG_LEVEL="debug"):
        server.kept = server.publish(ROOM, "kept")
        server.other = server.publish(OTHER_ROOM, "other")
        yield server


def raw_request(port: int, target: str | bytes, headers: bytes = b"", *,
                until: bytes | None = None) -> tuple[int, bytes]:
    """Send a GET as raw bytes; return the status and what came back (a stream: until ``until`` or patience)."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=STREAM_PATIENCE) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     + headers + b"\r\n")
        received = b""
        deadline = time.monotonic() + STREAM_PATIENCE
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
            if until is not None and until in received:
                break
    head, _, body = received.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert match, f"no HTTP status line in {received[:200]!r}"
    return int(match.group(1)), body


def header_value(value: str, real_id: str) -> bytes | None:
    """Return the header bytes for ``value`` (UTF-8, as a hostile client sends), or None if no header can hold it.

    HTTP strips spaces and tabs around a header's value: ``" <id>"`` *is* the id there.
    """
    raw = value.encode()
    if b"\r" in raw or b"\n" in raw or value.strip(" \t") in ("", real_id):
        return None  # it would end the header, send none, or send the real id (the log test sends such on purpose)
    return b"Last-Event-ID: " + raw + b"\r\n"


def stream_path(room: str, last_event_id: str | None = None) -> str:
    query = f"room={room}"
    if last_event_id is not None:
        query += "&lastEventId=" + quote(last_event_id, safe="")
    return "/messages?" + query


def dechunk(body: bytes) -> bytes:
    """Return the payload of a chunked body (what arrived of it)."""
    payload = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        payload += rest[:size]
        body = rest[size + 2:]
    return payload


def reset_reasons(body: bytes) -> list[str]:
    """Return the reasons of the reset events in a chunked stream body, in order."""
    reasons = []
    for block in dechunk(body).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in block.split("\n"))
        if fields.get("event") == "reset":
            reasons.append(json.loads(fields["data"])["reason"])
    return reasons


def assert_resets_then_sends_the_room(server, odd: str) -> None:
    """The stream (header and query parameter) sends the one reset, then the room's message."""
    ways = [("query", stream_path(ROOM, odd), b"")]
    header = header_value(odd, server.kept["id"])
    if header is not None:
        ways.append(("header", stream_path(ROOM), header))
    for way, target, headers in ways:
        status, body = raw_request(server.port, target, headers, until=b'"text":"kept"')
        if way == "header" and re.search(r"[\x00-\x08\x0a-\x1f\x7f]", odd):
            # A control character in a header value (RFC 9110 forbids them): gunicorn's own 400, before the app.
            assert (status, b"Invalid HTTP Header" in body) == (400, True), (way, odd, body[:300])
            continue
        assert status == 200, (way, odd, body[:300])
        assert reset_reasons(body) == [UNKNOWN_ID_REASON], (way, odd, body[:300])
        assert body.index(b"event: reset") < body.index(b'"text":"kept"'), (way, odd)


def assert_history_resets(server, odd: str) -> None:
    """History: 200 with the one reset and the page from the oldest (the newest, for ``before``), as on the stream."""
    for point in ("after", "before"):
        reply = requests.get(server.url + "/messages/history", params={"room": ROOM, point: odd}, timeout=5)
        assert reply.status_code == 200, (point, odd, reply.status_code, reply.text[:300])
        page = reply.json()
        assert page["reset"] == UNKNOWN_ID_REASON, (point, odd, page)
        assert [message["text"] for message in page["messages"]] == ["kept"], point


def assert_no_traceback_in_the_log(server) -> None:
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", ODD_ID_NAMES)
def test_an_odd_resume_id_gets_reset_on_the_stream_and_on_history(id_server, name):
    """`<epoch>-9999999999999999999` broke the stream mid-response with a traceback; history answered 500."""
    odd = odd_ids(id_server.kept["id"])[name]
    assert_resets_then_sends_the_room(id_server, odd)
    assert_history_resets(id_server, odd)
    assert_no_traceback_in_the_log(id_server)


@pytest.mark.slow
def test_no_generated_id_shape_gets_a_5xx_or_a_traceback(id_server):
    """Property: whatever id a client sends, in any of the three places, the answer is the one reset."""
    kept = id_server.kept["id"]

    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(id_shapes(kept))
    def any_id(odd: str) -> None:
        assert_resets_then_sends_the_room(id_server, odd)
        assert_history_resets(id_server, odd)

    any_id()
    assert_no_traceback_in_the_log(id_server)


@pytest.mark.slow
def test_an_id_of_another_room_gets_the_same_answer_as_an_unknown_one(id_server):
    """Two reasons ("belongs to another room") let anyone tell which ids a private room holds."""
    other = id_server.other["id"]
    unknown = "0" * 24 if "-" not in other else other.rsplit("-", 1)[0] + "-999999"
    answers = []
    for resume_id in (other, unknown):
        status, body = raw_request(id_server.port, stream_path(ROOM, resume_id), until=b'"text":"kept"')
        page = requests.get(id_server.url + "/messages/history", params={"room": ROOM, "after": resume_id},
                            timeout=5).json()
        answers.append((status, reset_reasons(body), page["reset"], [m["text"] for m in page["messages"]]))
    assert answers[0] == answers[1] == (200, [UNKNOWN_ID_REASON], UNKNOWN_ID_REASON, ["kept"])


# Where a client's bytes go: path prefixes (the rest of the path or the query value is generated) and headers.
PATH_PREFIXES = ["/rooms/", "/messages?room=", "/messages/history?room=", "/messages/history?room=a&limit=",
                 "/messages/history?room=a&after=", "/messages/history?room=a&before=",
                 "/messages?room=a&lastEventId=", "/messages?room=a&backlog=", "/", "/healthz/",
                 "/openapi.json?", "/messages/", "/static/"]
HEADERS = [b"Last-Event-ID", b"Authorization", b"Cookie", b"Origin", b"X-Forwarded-For", b"Accept",
           b"Content-Type", b"Accept-Encoding", b"If-None-Match", b"Range", b"X-Request-Id"]


# Most without control characters, so that they reach the app (gunicorn refuses the others: that is tried too).
HEADER_VALUES = st.one_of(
    st.binary(max_size=60).map(lambda value: bytes(byte for byte in value if byte >= 0x20 and byte != 0x7F)),
    st.binary(max_size=60).filter(lambda value: b"\r" not in value and b"\n" not in value),
)


@pytest.mark.slow
def test_no_generated_path_or_header_gets_a_5xx_or_a_traceback(id_server):
    """Property: any bytes in a path, a query value or a header's value are answered below 500, and logged escaped."""
    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(prefix=st.sampled_from(PATH_PREFIXES), raw=st.binary(max_size=40), percent_encoded=st.booleans(),
           header=st.sampled_from(HEADERS), value=HEADER_VALUES)
    def anything(prefix: str, raw: bytes, percent_encoded: bool, header: bytes, value: bytes) -> None:
        # Or raw: every byte as is (NUL, ESC, bytes past ASCII) but those that would end the request line.
        tail = quote_from_bytes(raw, safe="").encode() if percent_encoded else b"".join(
            b"%%%02X" % byte if byte in b" \r\n" else bytes([byte]) for byte in raw)
        status, body = raw_request(id_server.port, prefix.encode() + tail, header + b": " + value + b"\r\n",
                                   until=b"\r\n\r\n")
        assert status < 500, (prefix, raw, header, value, body[:300])

    anything()
    assert_no_traceback_in_the_log(id_server)
    log = id_server.log_path.read_text(errors="replace")
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]", log), "a raw control character in the log"


# -- the log ------------------------------------------------------------------------------------------

FORGED = "FORGED line the client wrote"
GUNICORN_REFUSED = "Invalid request from ip=127.0.0.1"
# target, header lines, and what the log must then show (so the row cannot pass by logging nothing).
FORGERIES = {
    "LF in the path": ("/rooms/x%0A" + quote(FORGED), b"", "GET /rooms/x\\nFORGED line the client wrote 400"),
    "CR in the path": ("/rooms/x%0D" + quote(FORGED), b"", "GET /rooms/x\\rFORGED line the client wrote 400"),
    "CRLF in the path of history": ("/messages/history%0D%0A" + quote(FORGED), b"",
                                    "GET /messages/history\\r\\nFORGED line the client wrote 404"),
    "NUL and ESC in the path": ("/rooms/x%00%1B[2K" + quote(FORGED), b"",
                                "GET /rooms/x\\x00\\x1b[2KFORGED line the client wrote 400"),
    "line separator in the path": ("/rooms/x%E2%80%A8" + quote(FORGED), b"",
                                   "GET /rooms/x\\u2028FORGED line the client wrote 400"),
    "LF in a room name": ("/messages/history?room=x%0A" + quote(FORGED), b"", "GET /messages/history 400"),
    "LF in a stream's id": (stream_path(ROOM, "1\n" + FORGED), b"", "stream end room=odd-ids"),
    "lone CR in a header": ("/healthz", b"X-Note: a\r" + FORGED.encode() + b"\r\n", GUNICORN_REFUSED),
    "lone CR in Last-Event-ID": (stream_path(ROOM), b"Last-Event-ID: 1\r" + FORGED.encode() + b"\r\n",
                                 GUNICORN_REFUSED),
    "NUL in Last-Event-ID": (stream_path(ROOM), b"Last-Event-ID: 1\x00" + FORGED.encode() + b"\r\n", GUNICORN_REFUSED),
    "LF in the request line": ("/healthz\n" + FORGED, b"", GUNICORN_REFUSED),
    "control characters in a header's name": ("/healthz", b"\x01\n" + FORGED.encode() + b": x\r\n", GUNICORN_REFUSED),
}


@pytest.mark.slow
@pytest.mark.parametrize("target, headers, expected", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_client_cannot_write_a_line_of_its_own_into_the_log(id_server, target, headers, expected):
    """`GET /rooms/x%0AFORGED` wrote the line `FORGED ...` into the server's log."""
    before = id_server.log_path.stat().st_size
    status, _ = raw_request(id_server.port, target, headers, until=b"\r\n\r\n")
    assert status < 500, target
    # A request's line is written when it ends (a stream's once the server sees the client gone).
    def log_since_the_request() -> str:
        with open(id_server.log_path, "rb") as log:
            log.seek(before)
            return log.read().decode("utf-8", errors="replace")

    wait_until(lambda: expected in log_since_the_request(), 5, log_since_the_request)
    written = log_since_the_request()
    for line in written.split("\n"):
        assert not line.lstrip().startswith("FORGED"), written
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]", line), repr(line)
