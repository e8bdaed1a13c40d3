"""A private room read from a page on another origin, in real headless Chromium.

The page is a small static file served by a second HTTP server on this
machine (another port: another origin, the same site, so the browser's
default SameSite=Lax cookies still go along). It opens an EventSource to
gunicorn, which runs with AUTH_JWT_SECRET and lists the page's origin in
CORS_ORIGINS. The token travels in the query string (``access_token``,
from a page on ``localhost``: another site altogether) or in the
``__Host-sse_token`` cookie with ``withCredentials: true``. Messages are published
with a JWT that has publish rights, from outside the browser.
"""
from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import start_chromium
from tests.support.live import free_port
from tests.support.tokens import SECRET, claims, mint
from tests.support.waiting import quiet_period, wait_until

pytestmark = pytest.mark.slow

ROOM = "team-red"
EVENT_SOURCE_CLOSED = 2
# No CSP here: this page stands for someone else's site, not ours.
READER_PAGE = """<!doctype html>
<meta charset="utf-8"><title>private room reader</title>
<p id="state">starting</p>
<script>
const asked = new URLSearchParams(location.search);
let url = asked.get("server") + "/messages?room=" + encodeURIComponent(asked.get("room"));
if (asked.get("token")) url += "&access_token=" + encodeURIComponent(asked.get("token"));
window.__streamUrl = url;
window.__credentials = asked.get("credentials") === "1";
window.__received = [];
window.__opened = 0;
window.__errors = 0;
const source = new EventSource(url, {withCredentials: window.__credentials});
source.onopen = () => { window.__opened += 1; document.getElementById("state").textContent = "open"; };
source.onmessage = (event) => { window.__received.push(JSON.parse(event.data).text); };
source.onerror = () => { window.__errors += 1; document.getElementById("state").textContent = "error"; };
window.__source = source;
</script>
"""
# Runs in the page: the status of the stream request the EventSource made (which it cannot show).
STATUS_OF_THE_STREAM = """
const done = arguments[arguments.length - 1];
const abort = new AbortController();
fetch(window.__streamUrl, {credentials: window.__credentials ? "include" : "same-origin", signal: abort.signal})
  .then((reply) => { done(reply.status); abort.abort(); }, (error) => done(String(error)));
"""


class PageServer:
    """A static-file HTTP server for the reader page, on a port of its own."""

    def __init__(self, directory: Path) -> None:
        (directory / "reader.html").write_text(READER_PAGE)
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def origin(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output for the tests
        pass


@pytest.fixture(scope="module")
def page_server(tmp_path_factory) -> Iterator[PageServer]:
    server = PageServer(tmp_path_factory.mktemp("reader-page"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[WebDriver]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture
def reader(browser, page_server) -> Iterator:
    """Open the reader page (from 127.0.0.1 or localhost) against a server; leave it blank afterwards."""

    def open_reader(server, *, token: str | None = None, credentials: bool = False, host: str = "127.0.0.1",
                    room: str = ROOM) -> WebDriver:
        query = f"server={server.url}&room={room}&credentials={int(credentials)}"
        browser.get(f"{page_server.origin(host)}/reader.html?{query}" + (f"&token={token}" if token else ""))
        return browser

    yield open_reader
    browser.get("about:blank")  # closes the page's stream before its server goes
    browser.delete_all_cookies()


def private_server(start_server, page_server, store_env=None, **env):
    origins = f"{page_server.origin()},{page_server.origin('localhost')}"
    return start_server(**(store_env or {}), AUTH_JWT_SECRET=SECRET, CORS_ORIGINS=origins, RETRY_MS="500", **env)


def publish(server, text: str) -> dict:
    reply = requests.post(server.url + "/messages", json={"room": ROOM, "text": text}, timeout=5,
                          headers={"Authorization": f"Bearer {mint(claims(publish=[ROOM]))}"})
    assert reply.status_code == 201, reply.text
    return reply.json()


def received(driver: WebDriver) -> list[str]:
    return driver.execute_script("return window.__received")


def set_token_cookie(driver: WebDriver, token: str) -> None:
    """Set __Host-sse_token for 127.0.0.1 from the page itself, as a site's own login would (cookies ignore ports).

    A __Host- cookie is taken only with Secure and Path=/ and without Domain,
    and a Secure cookie only from a secure context: Chromium counts
    http://127.0.0.1 as one (a loopback address), so the test needs no TLS.
    """
    driver.execute_script("document.cookie = '__Host-sse_token=' + arguments[0] + '; Path=/; Secure; SameSite=Lax'",
                          token)
    assert "__Host-sse_token=" in driver.execute_script("return document.cookie"), "Chromium refused the cookie"


def test_a_page_on_another_origin_reads_a_private_room_with_the_query_token_or_the_cookie(
        start_server, store_env, page_server, reader):
    """On both stores: the query token from another site, then the cookie with withCredentials."""
    server = private_server(start_server, page_server, store_env)
    timeout = 5.0 if store_env.get("MONGODB_URI") else 2.0

    page = reader(server, token=mint(claims([ROOM])), host="localhost")
    wait_until(lambda: page.execute_script("return window.__opened") == 1, 5.0, "the query-token stream did not open")
    publish(server, "for the query token")
    wait_until(lambda: received(page) == ["for the query token"], timeout, "the query-token page got nothing")

    page = reader(server)  # load the page first: the cookie is set for its host
    set_token_cookie(page, mint(claims([ROOM])))
    page = reader(server, credentials=True)
    wait_until(lambda: page.execute_script("return window.__opened") == 1, 5.0, "the cookie stream did not open")
    publish(server, "for the cookie")
    wait_until(lambda: received(page) == ["for the query token", "for the cookie"], timeout,  # the backlog, then live
               "the cookie page did not get the room")
    assert page.execute_async_script(STATUS_OF_THE_STREAM) == 200


@pytest.mark.parametrize("how", ["no token", "cookie without withCredentials", "forged token"])
def test_without_a_valid_token_the_page_gets_401_and_nothing(start_server, page_server, reader, how):
    server = private_server(start_server, page_server)
    if how == "forged token":
        page = reader(server, token=mint(claims([ROOM]), "forged-" + SECRET))
    else:
        page = reader(server)
        if how == "cookie without withCredentials":
            set_token_cookie(page, mint(claims([ROOM])))
            page = reader(server)  # a cross-origin request without credentials carries no cookie

    wait_until(lambda: page.execute_script("return window.__source.readyState") == EVENT_SOURCE_CLOSED, 5.0,
               "the browser did not give up on the refused stream")
    publish(server, "not for this page")
    quiet_period(0.5)  # it would arrive now
    assert received(page) == [] and page.execute_script("return window.__opened") == 0
    assert page.execute_async_script(STATUS_OF_THE_STREAM) == 401


def test_when_the_token_expires_the_stream_ends_and_the_browser_is_refused(start_server, page_server, reader):
    server = private_server(start_server, page_server)
    expires_at = int(time.time()) + 4
    page = reader(server, token=mint(claims([ROOM], expires_in=None, exp=expires_at)))
    wait_until(lambda: page.execute_script("return window.__opened") == 1, 5.0, "the stream did not open")
    publish(server, "before the token expires")
    wait_until(lambda: received(page) == ["before the token expires"], 2.0, "the page got nothing")

    # The stream ends at exp; EventSource reconnects after retry (500 ms), gets 401 and gives up.
    wait_until(lambda: page.execute_script("return window.__source.readyState") == EVENT_SOURCE_CLOSED,
               expires_at - time.time() + 3.0, "the browser's stream outlived its token")
    closed_after = time.time() - expires_at
    print(f"EventSource closed {closed_after:.2f} s after exp")
    assert page.execute_script("return window.__opened") == 1
    publish(server, "after the token expired")
    quiet_period(0.5)  # it would arrive now
    assert received(page) == ["before the token expires"]
