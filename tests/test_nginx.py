"""Real nginx running deploy/nginx.conf in front of real gunicorn (2 gevent workers)."""
from __future__ import annotations

import http.client
import json
import queue
import re
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from app.config import Settings
from tests.support.live import LiveServer, free_port
from tests.support.nginx import DEPLOY_CONF, LiveNginx
from tests.support.sse_reader import EOF, StreamReader
from tests.support.waiting import wait_until

HEARTBEAT = b": keep-alive\n"


@pytest.fixture
def proxied(start_server, tmp_path: Path) -> Iterator[Callable[..., tuple[LiveServer, LiveNginx]]]:
    """Start gunicorn (env overrides as keywords) and nginx in front of it."""
    started: list[LiveNginx] = []
    readers: list[StreamReader] = []

    def start(read_timeout: str = "60s", tuned: dict[str, str] | None = None,
              **env: str) -> tuple[LiveServer, LiveNginx]:
        server = start_server(**env)
        nginx = LiveNginx(tmp_path / f"nginx-{len(started)}", server.port, read_timeout, tuned).start()
        started.append(nginx)
        return server, nginx

    start.readers = readers  # streams opened by a test, closed here even when it fails
    yield start
    for reader in readers:
        reader.close()
    for nginx in started:
        nginx.stop()


def _open_stream(proxied, nginx: LiveNginx, room: str) -> StreamReader:
    reader = StreamReader(nginx.url, room)
    proxied.readers.append(reader)
    assert reader.response.status == 200
    reader.wait_for(lambda line: line.startswith(b"retry:"), 5.0)
    return reader


def _deploy_directive(name: str) -> str:
    values = re.findall(rf"^\s*{name}\s+([^;]+);", DEPLOY_CONF.read_text(), flags=re.M)
    # Repeated only where two locations must agree (the two stream locations' read timeout).
    assert len(set(values)) == 1, f"expected one value of {name} in deploy/nginx.conf, found {values}"
    return values[0]


# -- the file itself ----------------------------------------------------------

def test_nginx_body_limit_matches_the_apps_default():
    assert int(_deploy_directive("client_max_body_size")) == Settings().max_body_bytes


def test_nginx_read_timeout_is_well_above_the_heartbeat():
    assert int(_deploy_directive("proxy_read_timeout").rstrip("s")) >= 3 * Settings().heartbeat_seconds


def test_nginx_never_compresses_the_event_stream():
    assert "text/event-stream" not in _deploy_directive("gzip_types")


# -- nginx running it ---------------------------------------------------------

@pytest.mark.slow
def test_an_event_published_through_nginx_reaches_a_subscriber_through_nginx_within_500ms(proxied):
    server, nginx = proxied()
    stream = _open_stream(proxied, nginx, "fast")
    time.sleep(0.3)  # let the subscription settle, so what is measured is the live path

    delays = []
    for n in range(5):
        sent = time.monotonic()
        reply = requests.post(nginx.url + "/messages", json={"room": "fast", "text": f"through nginx {n}"}, timeout=5)
        assert reply.status_code == 201
        arrived, _ = stream.wait_for(lambda line, n=n: f'"text":"through nginx {n}"'.encode() in line, 2.0)
        delays.append(arrived - sent)

    print(f"publish -> event through nginx, 5 events: median {statistics.median(delays) * 1000:.1f} ms, "
          f"max {max(delays) * 1000:.1f} ms")
    assert max(delays) < 0.5
    assert stream.response.getheader("Content-Type").startswith("text/event-stream")
    assert stream.response.getheader("Content-Encoding") is None  # asked for gzip, and did not get it


@pytest.mark.slow
def test_heartbeats_keep_a_stream_open_through_nginx_longer_than_its_read_timeout(proxied):
    server, nginx = proxied(read_timeout="2s", HEARTBEAT_SECONDS="1")
    stream = _open_stream(proxied, nginx, "quiet")
    opened = time.monotonic()

    heartbeats = 0
    while time.monotonic() - opened < 5.0:  # 2.5 times the read timeout
        try:
            _, line = stream.next_line(timeout=0.5)
        except queue.Empty:
            continue
        assert line is not EOF, f"nginx closed the stream after {time.monotonic() - opened:.1f} s"
        heartbeats += line == HEARTBEAT

    assert heartbeats >= 3
    server.publish("quiet", "still here")
    stream.wait_for(lambda line: b'"text":"still here"' in line, 2.0)


@pytest.mark.slow
def test_without_heartbeats_nginx_cuts_a_silent_stream_at_its_read_timeout(proxied):
    """The control for the test above: the short read timeout is really in force."""
    server, nginx = proxied(read_timeout="2s", HEARTBEAT_SECONDS="30")
    stream = _open_stream(proxied, nginx, "silent")
    opened = time.monotonic()

    while True:
        arrived, line = stream.next_line(timeout=6.0)
        if line is EOF:
            break
    assert 1.5 < arrived - opened < 4.0


@pytest.mark.slow
def test_publish_and_history_through_nginx(proxied):
    server, nginx = proxied()

    reply = requests.post(nginx.url + "/messages", json={"room": "post", "text": "via nginx", "event": "note"},
                          timeout=5)
    history = requests.get(nginx.url + "/messages/history?room=post", timeout=5)

    assert reply.status_code == 201
    message = reply.json()
    assert (message["room"], message["text"], message["event"]) == ("post", "via nginx", "note")
    assert history.status_code == 200
    assert history.json()["messages"] == [message]


@pytest.mark.slow
def test_nginx_logs_no_token_from_the_query_string(proxied):
    from tests.support.tokens import SECRET, claims, mint

    server, nginx = proxied(AUTH_JWT_SECRET=SECRET)
    token = mint(claims(["private"]))
    with requests.get(f"{nginx.url}/messages?room=private&access_token={token}", stream=True, timeout=5) as stream:
        assert stream.status_code == 200
    refused = requests.get(f"{nginx.url}/messages/history?room=private&access_token={token}x", timeout=5)
    assert refused.status_code == 401

    log = nginx.directory / "sse-rooms.access.log"
    # nginx writes a stream's line when the client has gone.
    wait_until(lambda: log.read_text().count("\n") >= 2, 5, "nginx did not write both requests' lines")
    lines = log.read_text()
    assert '"GET /messages HTTP/1.1" 200' in lines and '"GET /messages/history HTTP/1.1" 401' in lines
    for piece in token.split("."):
        assert piece not in lines


def _body_of_exactly(size: int) -> bytes:
    empty = json.dumps({"room": "big", "text": ""}).encode()
    body = json.dumps({"room": "big", "text": "x" * (size - len(empty))}).encode()
    assert len(body) == size
    return body


@pytest.mark.slow
def test_a_body_at_the_limit_reaches_the_app_and_one_byte_more_gets_a_json_413(proxied):
    server, nginx = proxied()
    limit = Settings().max_body_bytes
    headers = {"Content-Type": "application/json"}

    at_limit = requests.post(nginx.url + "/messages", data=_body_of_exactly(limit), headers=headers, timeout=5)
    over_limit = requests.post(nginx.url + "/messages", data=_body_of_exactly(limit + 1), headers=headers, timeout=5)

    # At the limit the app itself answers: the text is longer than MAX_TEXT_CHARS.
    assert at_limit.status_code == 422
    assert at_limit.json()["errors"]["text"]
    assert over_limit.status_code == 413
    assert over_limit.headers["Content-Type"] == "application/json"
    assert over_limit.json() == {"code": 413, "status": "Request Entity Too Large",
                                 "message": f"the request body is larger than {limit} bytes", "errors": {}}


@pytest.mark.slow
def test_the_page_and_its_static_files_through_nginx(proxied):
    server, nginx = proxied()

    page = requests.get(nginx.url + "/?room=lobby", timeout=5)
    script = requests.get(nginx.url + "/static/demo.js", timeout=5)

    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers.get("Content-Encoding") == "gzip"
    assert script.status_code == 200
    assert script.content == (Path(__file__).parents[1] / "app" / "static" / "demo.js").read_bytes()
    # Served by nginx from disk: Flask would have said no-cache, not max-age.
    assert script.headers["Cache-Control"] == "max-age=300"
    assert script.headers.get("Content-Encoding") == "gzip"


# -- per-client limits (issue 18) -------------------------------------------------------------------

STREAM_CONN_LIMIT = "limit_conn sse_streams 2000;"
STREAM_OPEN_LIMIT = "limit_req zone=sse_stream_opens burst=2000 nodelay;"
HISTORY_LIMIT = "limit_req zone=sse_history burst=2000 nodelay;"
PRESENCE_LIMIT = "limit_req zone=sse_presence burst=2000 nodelay;"
NGINX_429 = {"code": 429, "status": "Too Many Requests", "errors": {},
             "message": "too many streams or requests from this client at once, try again later"}


def test_nginx_stream_limits_match_max_streams_per_client():
    text = DEPLOY_CONF.read_text()
    limit = Settings().max_streams_per_client
    assert _deploy_directive("limit_conn") == f"sse_streams {limit}"
    for line in (STREAM_OPEN_LIMIT, HISTORY_LIMIT, PRESENCE_LIMIT):
        assert text.count(line) == 1 and f"burst={limit} " in line


def _stream_from(nginx: LiveNginx, source: str = "127.0.0.1") -> tuple[http.client.HTTPConnection,
                                                                       http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10, source_address=(source, 0))
    connection.request("GET", "/messages?room=limits", headers={"Accept": "text/event-stream"})
    return connection, connection.getresponse()


def _assert_nginx_429(response, body: bytes, retry_after: str) -> None:
    assert response.status == 429
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Retry-After") == retry_after
    assert json.loads(body) == NGINX_429


@pytest.mark.slow
def test_nginx_refuses_a_clients_stream_past_its_limit_in_the_apps_shape_and_counts_streams_only(proxied):
    # nginx's limit lowered to 3 (2000 streams cannot be opened here); the app's above it, so nginx answers.
    server, nginx = proxied(tuned={STREAM_CONN_LIMIT: "limit_conn sse_streams 3;"}, MAX_STREAMS_PER_CLIENT="50")
    held = [_stream_from(nginx) for _ in range(3)]
    try:
        assert [response.status for _, response in held] == [200] * 3
        connection, response = _stream_from(nginx)
        _assert_nginx_429(response, response.read(), "15")
        connection.close()
        # Publishing shares the location, and is not counted; nor is another client.
        for n in range(5):
            assert requests.post(nginx.url + "/messages", json={"room": "limits", "text": str(n)},
                                 timeout=5).status_code == 201
        other = _stream_from(nginx, "127.0.0.2")
        assert other[1].status == 200
        held.append(other)
        # A stream that ends gives nginx's slot back.
        held.pop(0)[0].close()
        deadline = time.monotonic() + 5
        while True:
            connection, response = _stream_from(nginx)
            if response.status == 200:
                held.append((connection, response))
                break
            response.read()
            connection.close()
            assert time.monotonic() < deadline, "nginx did not free the slot of a closed stream"
            time.sleep(0.05)
    finally:
        for connection, _ in held:
            connection.close()


@pytest.mark.slow
def test_behind_nginx_the_app_counts_each_client_by_its_own_address(proxied):
    """TRUSTED_PROXIES=1: the app's limit (2) meets each client, not nginx's one address for all."""
    server, nginx = proxied(TRUSTED_PROXIES="1", MAX_STREAMS_PER_CLIENT="2")
    held = []
    try:
        for source in ("127.0.0.2", "127.0.0.3"):
            streams = [_stream_from(nginx, source) for _ in range(3)]
            held += streams
            assert [response.status for _, response in streams] == [200, 200, 429]
            refused = streams[-1][1]
            assert refused.getheader("Retry-After") == "15"
            assert json.loads(refused.read())["message"].startswith("this client holds its maximum of 2 streams")
    finally:
        for connection, _ in held:
            connection.close()
    assert "TRUSTED_PROXIES=0" not in server.log()


@pytest.mark.slow
def test_without_trusted_proxies_behind_nginx_every_worker_warns_once(proxied):
    server, nginx = proxied()
    for _ in range(20):
        assert requests.get(nginx.url + "/messages/history?room=r", headers={"Connection": "close"},
                            timeout=5).status_code == 200
    log = server.log()
    warnings = [line for line in log.splitlines() if "TRUSTED_PROXIES=0" in line]
    assert 1 <= len(warnings) <= 2, warnings  # one per worker that answered, never one per request
    assert "carries X-Forwarded-For" in warnings[0]


@pytest.mark.slow
@pytest.mark.parametrize("path, zone", [
    ("/messages/history?room=r", "sse_history"),
    ("/rooms/r", "sse_presence"),
    ("/rooms", "sse_presence"),
], ids=["history", "presence", "rooms"])
def test_nginx_limits_the_rate_of_history_and_presence_per_client_in_the_apps_shape(proxied, path, zone):
    # Lowered to 1 a second and a burst of 5: the deployed 1000/s is faster than one client here can ask.
    deployed = DEPLOY_CONF.read_text()
    zone_line = next(line.strip() for line in deployed.splitlines() if f"zone={zone}:" in line)
    limit_line = next(line.strip() for line in deployed.splitlines() if f"limit_req zone={zone} " in line)
    server, nginx = proxied(tuned={
        zone_line: re.sub(r"rate=\d+r/s", "rate=1r/s", zone_line),
        limit_line: f"limit_req zone={zone} burst=5 nodelay;",
    })
    with requests.Session() as session:
        replies = [session.get(nginx.url + path, timeout=5) for _ in range(7)]
    other_client = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=5, source_address=("127.0.0.2", 0))
    other_client.request("GET", path)

    assert [reply.status_code for reply in replies] == [200] * 6 + [429]  # the first, then a burst of 5
    assert replies[-1].headers["Retry-After"] == "1"
    assert replies[-1].json() == NGINX_429
    assert other_client.getresponse().status == 200
    other_client.close()
    time.sleep(1.1)  # quiet on purpose: the rate refills
    assert requests.get(nginx.url + path, timeout=5).status_code == 200


@pytest.mark.slow
def test_nginx_counts_an_ipv6_client_by_its_64_and_an_ipv4_mapped_one_by_its_ipv4(tmp_path):
    """The $sse_client map, read back from the access log (nginx writes its bytes as \\xHH)."""
    nginx = LiveNginx(tmp_path / "nginx", upstream_port=free_port())  # no upstream: 502s are enough here
    log_format = next(line.strip() for line in DEPLOY_CONF.read_text().splitlines() if line.startswith("log_format"))
    nginx.tuned = {
        # Dual-stack, so an IPv4 client arrives as ::ffff:127.0.0.1, as behind "listen [::]:80 ipv6only=off".
        f"listen 127.0.0.1:{nginx.port};": f"listen [::]:{nginx.port} ipv6only=off;",
        log_format: log_format.replace("'$remote_addr", "'client=$sse_client $remote_addr"),
    }
    nginx.start()
    try:
        for host in ("[::1]", "127.0.0.1"):
            requests.get(f"http://{host}:{nginx.port}/rooms", timeout=5)
    finally:
        nginx.stop()
    lines = (nginx.directory / "sse-rooms.access.log").read_text().splitlines()

    assert lines[0].startswith("client=" + "\\x00" * 8 + " ::1 ")  # ::1's /64, 8 bytes
    assert lines[1].startswith("client=\\x7F\\x00\\x00\\x01 ::ffff:127.0.0.1 ")  # the IPv4 address, 4 bytes


# -- issue 18: tokens in nginx's logs, and the operators' paths ------------------------------------

def _received_until(sock: socket.socket, wanted: bytes) -> bytes:
    """Read from ``sock`` until ``wanted`` has arrived (b"": until the peer closes); return what was read."""
    received = b""
    while True:
        chunk = sock.recv(65536)
        received += chunk
        if (wanted and wanted in received) or not chunk:
            assert wanted in received, received[-500:]
            return received


def _wait_for_workers(server: LiveServer, old: set[int], timeout: float = 20.0) -> None:
    """Wait until gunicorn has replaced every killed worker and the app answers."""
    def replaced_and_answering() -> bool:
        pids = set(server.worker_pids())
        if len(pids) != 2 or pids & old:
            return False
        try:
            return requests.get(server.url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(replaced_and_answering, timeout, lambda: f"gunicorn did not replace its killed workers: "
               f"{server.worker_pids()}", interval=0.1)


@pytest.mark.slow
def test_killing_workers_under_token_streams_writes_no_token_into_any_nginx_log(proxied):
    """Issue 18: nginx's error log quoted the request line (?access_token=...) of a stream whose worker died."""
    import os
    import signal

    from tests.support.tokens import SECRET, claims, mint

    server, nginx = proxied(AUTH_JWT_SECRET=SECRET, HEARTBEAT_SECONDS="1")
    query_token, cookie_token = mint(claims(["private"], publish=["private"])), mint(claims(["private"]))
    streams: list[socket.socket] = []
    for n in range(4):  # several of each, so that both workers hold both kinds
        for how in ("query", "cookie", "encoded query name"):
            query = {"query": f"&access_token={query_token}", "cookie": "",
                     "encoded query name": f"&access%5Ftoken={query_token}"}[how]
            cookie = f"Cookie: __Host-sse_token={cookie_token}\r\n" if how == "cookie" else ""
            stream = socket.create_connection(("127.0.0.1", nginx.port), timeout=10)
            stream.sendall(f"GET /messages?room=private&n={n}{query} HTTP/1.1\r\nHost: x\r\n{cookie}\r\n".encode())
            streams.append(stream)
            assert _received_until(stream, b"retry:").startswith(b"HTTP/1.1 200"), how
    # Publishing with the query token goes through the same location (a body, unlike a stream).
    sent = requests.post(f"{nginx.url}/messages?access_token={query_token}", json={"room": "private", "text": "hi"},
                         timeout=5)
    assert sent.status_code == 201
    for stream in streams:  # each stream is live: the message arrives through nginx
        _received_until(stream, f"id: {sent.json()['id']}".encode())

    old = set(server.worker_pids())
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    for stream in streams:  # nginx ends each response when its upstream dies
        _received_until(stream, b"")
        stream.close()
    _wait_for_workers(server, old)
    history = requests.get(f"{nginx.url}/messages/history?room=private&access_token={query_token}", timeout=5)
    assert history.status_code == 200

    error_log = nginx.directory / "error.log"
    access_log = nginx.directory / "sse-rooms.access.log"
    wait_until(lambda: "prematurely closed" in error_log.read_text(), 5, "nginx did not log the workers' deaths")
    errors = error_log.read_text(errors="replace")
    # The kill did reach nginx's error log: the cookie streams' lines are there, with their request line.
    assert re.search(r'upstream prematurely closed connection.*request: "GET /messages\?room=private&n=\d '
                     r'HTTP/1.1"', errors), errors[-3000:]
    logs = errors + access_log.read_text(errors="replace") + server.log_path.read_text(errors="replace")
    for token in (query_token, cookie_token):
        for piece in token.split("."):
            assert piece not in logs, f"a piece of a token is in a log: {piece[:12]}..."
    assert "access_token" not in logs and "access%5Ftoken" not in logs


def _get_from(address: str, url: str) -> tuple[int, str, bytes]:
    """GET ``url`` from a loopback ``address`` of our choosing (127.0.0.2 is not on the allowlist)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5, source_address=(address, 0))
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        reply = connection.getresponse()
        return reply.status, reply.getheader("Content-Type", ""), reply.read()
    finally:
        connection.close()


@pytest.mark.slow
def test_metrics_and_readyz_answer_the_allowlist_only(proxied):
    """Issue 18: /metrics (rooms, counts) and /readyz were open to anyone through nginx."""
    server, nginx = proxied()
    for path in ("/metrics", "/readyz"):
        status, _, body = _get_from("127.0.0.1", nginx.url + path)
        assert status == 200, body
        status, content_type, body = _get_from("127.0.0.2", nginx.url + path)
        assert status == 403 and content_type == "application/json"
        assert json.loads(body) == {"code": 403, "status": "Forbidden",
                                    "message": "this path answers allowlisted addresses only", "errors": {}}
    # A token in the query string takes another location (see the log test): the allowlist holds there too.
    for address in ("127.0.0.1", "127.0.0.2"):
        for path in ("/metrics?access_token=x", "/readyz?access%5Ftoken=x"):
            status, content_type, body = _get_from(address, nginx.url + path)
            assert status == 403 and json.loads(body)["code"] == 403, (address, path)
    # Everything else answers everyone.
    for path in ("/healthz", "/messages/history?room=lobby", "/rooms/lobby"):
        assert _get_from("127.0.0.2", nginx.url + path)[0] == 200, path
    assert "sse_open_streams" in _get_from("127.0.0.1", nginx.url + "/metrics")[2].decode()
