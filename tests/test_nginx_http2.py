"""HTTP/2 through the real nginx running deploy/nginx.conf's TLS listener (issue 15 part 6).

Over HTTP/1.1 a browser gives one origin 6 connections, and each EventSource
holds one: the 7th tab of the demo page hung. Over HTTP/2 they share one
connection. The certificate is self-signed and made for each nginx
(tests/support/tls.py); curl is given it as its CA, Chromium trusts its key.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import start_chromium
from tests.support.live import LiveServer
from tests.support.nginx import LiveNginx
from tests.support.waiting import quiet_period, wait_until

pytestmark = pytest.mark.slow

STREAMS = 10  # past HTTP/1.1's 6 connections per origin
HTTP1_CONNECTIONS_PER_ORIGIN = 6  # Chromium's, as every browser's
CURL = "/usr/bin/curl"


@pytest.fixture
def fronted(start_server, tmp_path: Path) -> Iterator[Callable[..., tuple[LiveServer, LiveNginx]]]:
    """Start gunicorn (env overrides as keywords) and nginx, with its TLS listener, in front of it."""
    started: list[LiveNginx] = []

    def start(**env: str) -> tuple[LiveServer, LiveNginx]:
        server = start_server(**env)
        nginx = LiveNginx(tmp_path / f"nginx-{len(started)}", server.port).start()
        started.append(nginx)
        return server, nginx

    yield start
    for nginx in started:
        nginx.stop()


def _established_connections_to(port: int) -> int:
    """Count the machine's established TCP connections whose far end is 127.0.0.1:``port`` (the clients' side)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        count += remote.endswith(f":{port:04X}") and state == "01"
    return count


def _curl(nginx: LiveNginx, *args: str) -> list[str]:
    return [CURL, "--http2", "--silent", "--show-error", "--cacert", str(nginx.certificate.cert_path), *args]


def test_curl_supports_http2_here():
    """The tests below mean nothing with a curl that quietly falls back to HTTP/1.1."""
    assert "HTTP2" in subprocess.run([CURL, "--version"], capture_output=True, text=True, check=True).stdout


def test_curl_http2_streams_share_one_connection_and_each_gets_live_messages(fronted, tmp_path):
    server, nginx = fronted()
    rooms = [f"h2-{n}" for n in range(STREAMS)]
    outputs = [tmp_path / f"stream-{n}.txt" for n in range(STREAMS)]
    headers = tmp_path / "headers.txt"
    targets = [arg for room, out in zip(rooms, outputs, strict=True)
               for arg in ("-o", str(out), f"{nginx.tls_url}/messages?room={room}")]
    # --parallel: curl multiplexes the transfers over one HTTP/2 connection when it can.
    curl = subprocess.Popen(_curl(nginx, "--no-buffer", "--parallel", "--parallel-max", str(STREAMS),
                                  "--max-time", "60", "-D", str(headers), *targets),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: all(out.exists() and out.read_bytes().startswith(b"retry: ") for out in outputs), 15,
                   lambda: f"not every stream opened: {[out.exists() and out.read_bytes()[:20] for out in outputs]}")
        assert headers.read_text().count("HTTP/2 200") == STREAMS
        assert _established_connections_to(nginx.tls_port) == 1  # all ten over one connection

        for room in rooms:
            posted = subprocess.run(
                _curl(nginx, "-w", "%{http_version} %{response_code}", "-o", "/dev/null",
                      "-H", "content-type: application/json", "--data", f'{{"room": "{room}", "text": "to {room}"}}',
                      f"{nginx.tls_url}/messages"),
                capture_output=True, text=True, timeout=15)
            assert posted.stdout == "2 201", posted
        for room, out in zip(rooms, outputs, strict=True):
            wait_until(lambda out=out, room=room: f'"text":"to {room}"'.encode() in out.read_bytes(), 5,
                       f"the stream of {room} did not get its message over HTTP/2")
            assert out.read_bytes().count(b'"text":"to ') == 1  # its room's message alone
    finally:
        curl.terminate()
        curl.wait(10)
    # nginx logs the protocol the client spoke; gunicorn was spoken to in HTTP/1.1 as ever.
    log = nginx.directory / "sse-rooms.access.log"
    wait_until(lambda: log.read_text().count('"GET /messages HTTP/2.0" 200') == STREAMS, 5,
               lambda: f"nginx did not log the {STREAMS} streams as HTTP/2: {log.read_text()[-2000:]}")


# -- Chromium: 10 EventSources on one page -------------------------------------------------------------

@pytest.fixture
def chromium_for(tmp_path) -> Iterator[Callable[[LiveNginx], WebDriver]]:
    """Start headless Chromium trusting one nginx's test certificate (by its key, not by ignoring errors)."""
    started: list[WebDriver] = []

    def start(nginx: LiveNginx) -> WebDriver:
        flag = f"--ignore-certificate-errors-spki-list={nginx.certificate.spki_sha256}"
        driver = start_chromium(tmp_path / f"chromium-{len(started)}", extra_flags=(flag,))
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()


_OPEN_EVENT_SOURCES = """
const [rooms] = arguments;
window.__received = {};
window.__streams = rooms.map(room => {
  const source = new EventSource(`/messages?room=${encodeURIComponent(room)}`);
  window.__received[room] = [];
  source.onmessage = event => window.__received[room].push(JSON.parse(event.data).text);
  return source;
});
"""


def _open_states(driver: WebDriver) -> list[int]:
    return driver.execute_script("return window.__streams.map(s => s.readyState)")


def _received(driver: WebDriver) -> dict[str, list[str]]:
    return driver.execute_script("return window.__received")


def _ten_event_sources(driver: WebDriver, origin: str, rooms: list[str]) -> None:
    driver.get(f"{origin}/healthz")  # any page of the origin: the EventSources are same-origin
    driver.execute_script(_OPEN_EVENT_SOURCES, rooms)


def _publish(nginx: LiveNginx, room: str, text: str) -> None:
    reply = requests.post(f"{nginx.url}/messages", json={"room": room, "text": text}, timeout=10)
    assert reply.status_code == 201, reply.text


def test_chromium_keeps_10_event_sources_to_one_origin_live_over_http2(fronted, chromium_for):
    server, nginx = fronted()
    driver = chromium_for(nginx)
    rooms = [f"tab-{n}" for n in range(STREAMS)]

    _ten_event_sources(driver, nginx.tls_url, rooms)
    assert driver.execute_script("return performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
    wait_until(lambda: _open_states(driver) == [1] * STREAMS, 15,
               lambda: f"not every EventSource opened over HTTP/2: readyState {_open_states(driver)}")
    sent = time.monotonic()
    for room in rooms:
        _publish(nginx, room, f"live in {room}")

    wait_until(lambda: _received(driver) == {room: [f"live in {room}"] for room in rooms}, 10,
               lambda: f"not every EventSource got its live message: {_received(driver)}")
    print(f"10 EventSources over one HTTP/2 connection: all live messages within {time.monotonic() - sent:.2f} s")
    assert _established_connections_to(nginx.tls_port) == 1


def test_the_control_over_http1_chromium_opens_only_6_of_the_10(fronted, chromium_for):
    """The limit the test above gets past is real here: the same page over plain HTTP/1.1 stalls at 6."""
    server, nginx = fronted()
    driver = chromium_for(nginx)
    rooms = [f"tab-{n}" for n in range(STREAMS)]

    _ten_event_sources(driver, nginx.url, rooms)
    assert driver.execute_script("return performance.getEntriesByType('navigation')[0].nextHopProtocol") == "http/1.1"
    wait_until(lambda: _open_states(driver).count(1) == HTTP1_CONNECTIONS_PER_ORIGIN, 15,
               lambda: f"expected {HTTP1_CONNECTIONS_PER_ORIGIN} open: readyState {_open_states(driver)}")
    for room in rooms:
        _publish(nginx, room, f"live in {room}")
    quiet_period(2.0)  # what the 4 waiting streams must not get

    states, received = _open_states(driver), _received(driver)
    # 0: CONNECTING, waiting for a connection that never frees.
    assert states.count(1) == HTTP1_CONNECTIONS_PER_ORIGIN, states
    assert states.count(0) == STREAMS - HTTP1_CONNECTIONS_PER_ORIGIN, states
    assert sum(1 for texts in received.values() if texts) == HTTP1_CONNECTIONS_PER_ORIGIN, received
