"""The demo page shows who is here and says who joins and leaves (issue 16), in real headless Chromium.

The server runs with private rooms (AUTH_JWT_SECRET); the page's visitor is
"alice", through the token cookie; "bob" comes and goes with a stream of his
own from outside the browser, on whichever worker the kernel gives him.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import DemoPage, start_chromium
from tests.support.sse_client import StreamReader
from tests.support.tokens import SECRET, claims, mint
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

ROOM = "team-demo"


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[WebDriver]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def token(sub: str) -> str:
    return mint(claims(subscribe=["team-*"], publish=["team-*"], expires_in=3600, sub=sub))


def who(driver: WebDriver) -> str:
    element = driver.find_element(By.ID, "who")
    return element.text if element.is_displayed() else ""


def notes(driver: WebDriver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#messages .presence-note span'), e => e.textContent)")


def test_the_page_lists_who_is_here_and_announces_joins_and_leaves(start_server, browser, tmp_path):
    server = start_server(AUTH_JWT_SECRET=SECRET)
    browser.get(f"{server.url}/healthz")  # on the server's origin, to set its cookie
    browser.add_cookie({"name": "sse_token", "value": token("alice"), "path": "/"})
    page = DemoPage(browser, server.url).open(ROOM)
    bob = None
    try:
        wait_until(lambda: who(browser) == "here: alice", 5, lambda: f"the page shows {who(browser)!r}")
        bob = StreamReader(f"{server.url}/messages?room={ROOM}&backlog=0&access_token={token('bob')}")
        wait_until(lambda: notes(browser) == ["bob joined"], 5, lambda: f"notes: {notes(browser)}")
        wait_until(lambda: who(browser) == "here: alice, bob", 3, lambda: f"the page shows {who(browser)!r}")
        wait_until(lambda: browser.find_element(By.ID, "listening").text == "2 listening", 3, "not 2 listening")
        page.send("hello bob")
        wait_until(lambda: page.texts() == ["hello bob"], 5, "the message did not arrive")
        browser.save_screenshot(str(tmp_path / "who-is-here.png"))
        bob.close()
        wait_until(lambda: notes(browser) == ["bob joined", "bob left"], 6, lambda: f"notes: {notes(browser)}")
        wait_until(lambda: who(browser) == "here: alice", 3, lambda: f"the page shows {who(browser)!r}")
        assert page.texts() == ["hello bob"] and page.state() == "live"
    finally:
        if bob is not None:
            bob.close()
        browser.get("about:blank")
        browser.delete_all_cookies()
