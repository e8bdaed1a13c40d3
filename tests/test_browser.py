"""The demo page in real headless Chromium against real gunicorn (2 gevent workers)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from app.config import Settings
from app.stores import open_store
from tests.support.browser import DemoPage, png_size, start_chromium
from tests.support.live import ROOT, LiveServer
from tests.support.nginx import LiveNginx
from tests.support.waiting import quiet_period, wait_until

pytestmark = pytest.mark.slow

# Where test_demo_page_screenshot writes its picture: a temp dir unless set.
# `make screenshot` sets it to docs/demo.png; a plain test run leaves the tree alone.
SCREENSHOT_ENV = "DEMO_SCREENSHOT"
EVENT_SOURCE_OPEN, EVENT_SOURCE_CLOSED = 1, 2


@pytest.fixture(scope="module")
def browsers(tmp_path_factory) -> Iterator[Callable[[int], WebDriver]]:
    """Start Chromium instances on demand (at most two) and share them across this module."""
    started: list[WebDriver] = []

    def browser(index: int) -> WebDriver:
        while len(started) <= index:
            started.append(start_chromium(tmp_path_factory.mktemp("chromium-profile")))
        return started[index]

    yield browser
    for driver in started:
        driver.quit()


@pytest.fixture
def open_page(browsers) -> Iterator[Callable[..., DemoPage]]:
    """Open the demo page for a room in browser 0 or 1; leave it blank afterwards."""
    used: list[WebDriver] = []

    def open_page(server: LiveServer | LiveNginx, room: str, browser: int = 0, query: str = "") -> DemoPage:
        driver = browsers(browser)
        used.append(driver)
        return DemoPage(driver, server.url).open(room, query)

    yield open_page
    for driver in used:
        driver.get("about:blank")  # closes the page's stream before its server goes


def test_a_message_sent_from_one_page_appears_on_the_other_within_a_second(start_server, store_env, open_page):
    """On both stores (``[sqlite]``, ``[mongodb]``): the page does not care which one holds the messages."""
    server = start_server(**store_env)
    page_a = open_page(server, "pair", browser=0)
    page_b = open_page(server, "pair", browser=1)

    sent_at = time.monotonic()
    page_a.send("hello from A")
    wait_until(lambda: "hello from A" in page_b.texts(), 1.0, "page B did not show A's message within 1 s")
    delay_b = time.monotonic() - sent_at
    wait_until(lambda: "hello from A" in page_a.texts(), 1.0, "page A did not show its own message")

    print(f"[{'mongodb' if store_env.get('MONGODB_URI') else 'sqlite'}] "
          f"A -> B delay as a person would see it: {delay_b * 1000:.0f} ms")
    assert page_a.texts() == page_b.texts() == ["hello from A"]
    assert page_a.send_error() == ""


def test_one_page_follows_several_rooms_in_one_stream_in_store_order(start_server, store_env, open_page):
    """Several rooms, one EventSource: each message shows its room; other rooms stay out; sends pick a room."""
    server = start_server(**store_env)
    page = open_page(server, "north", query="&room=south")
    sent = [server.publish(room, f"{room} {n}")["id"] for n, room in enumerate(["north", "south", "east", "north"])]
    wanted = [sent[0], sent[1], sent[3]]
    wait_until(lambda: page.ids() == wanted, 5.0, "the page did not show north and south in store order")
    assert page.driver.execute_script(
        "return Array.from(document.querySelectorAll('#messages .room'), e => e.textContent)") == [
        "#north", "#south", "#north"]
    sources = page.event_source_states()
    assert len(sources) == 1 and "room=north&room=south" in sources[0][0]  # one connection for both
    Select(page.driver.find_element(By.ID, "send-room")).select_by_value("south")
    page.send("from the page")
    wait_until(lambda: "from the page" in page.texts(), 2.0, "the page's own message did not come back")
    assert server.history("south")[-1]["text"] == "from the page"


def test_markup_in_a_message_is_shown_as_literal_text(live_server, open_page):
    payload = '<img src=x onerror="window.__xss=1">'
    page_a = open_page(live_server, "xss", browser=0)
    page_b = open_page(live_server, "xss", browser=1)

    page_a.send(payload)
    wait_until(lambda: page_b.texts() == [payload], 2.0, "page B did not show the markup as text")
    wait_until(lambda: page_a.texts() == [payload], 2.0, "page A did not show the markup as text")
    quiet_period(0.3)  # an <img src=x> would have failed to load and run onerror by now

    for page in (page_a, page_b):
        assert page.driver.execute_script("return typeof window.__xss") == "undefined"
        assert page.driver.execute_script("return document.querySelectorAll('#messages img').length") == 0


def test_validation_errors_from_the_server_are_shown_next_to_the_send_box(live_server, open_page):
    page = open_page(live_server, "errors")

    page.send("fine text", event="not a valid type!")
    wait_until(page.send_error, 2.0, "no error was shown for a bad event type")
    assert "event must be" in page.send_error()

    page.driver.find_element("id", "text").clear()
    page.send("   ", event="")
    wait_until(lambda: "non-whitespace" in page.send_error(), 2.0, "no error was shown for blank text")
    assert page.texts() == []


def test_page_reconnects_after_a_restart_and_shows_each_message_once_in_order(start_server, sqlite_path, open_page):
    server = start_server(RETRY_MS="500")
    room = "restart"
    before = server.publish(room, "before the restart")
    page = open_page(server, room)
    wait_until(lambda: page.ids() == [before["id"]], 5.0, "the page did not show the first message")

    stop_seconds = server.stop()
    wait_until(lambda: page.state() == "reconnecting", 5.0, "the page did not say it is reconnecting")
    reconnecting_label = page.state_text()
    store = open_store(Settings.from_env({"SQLITE_PATH": sqlite_path}))
    while_down = [store.append(room, f"while down {n}", "message").id for n in (1, 2)]
    store.close()
    server.start()
    after_up = [server.publish(room, f"after the restart {n}")["id"] for n in (3, 4, 5)]

    expected = [before["id"], *while_down, *after_up]
    wait_until(lambda: page.ids() == expected, 10.0, "the page did not catch up exactly once, in order")
    quiet_period(1.0)  # a duplicate would arrive late, after a second reconnect
    print(f"graceful stop took {stop_seconds:.1f} s; state while down: {reconnecting_label!r}")
    assert page.ids() == expected
    assert page.texts() == ["before the restart", "while down 1", "while down 2",
                            "after the restart 3", "after the restart 4", "after the restart 5"]
    assert page.state() == "live"
    assert reconnecting_label == "reconnecting (retry in 0.5 s)"


def test_a_reset_is_shown_as_a_notice_and_the_list_is_rebuilt(start_server, sqlite_path, open_page):
    server = start_server(RETRY_MS="500")
    room = "reset"
    server.publish(room, "from the old store")
    page = open_page(server, room)
    wait_until(lambda: page.texts() == ["from the old store"], 5.0, "the page did not show the first message")

    server.kill()
    for leftover in Path(sqlite_path).parent.glob(Path(sqlite_path).name + "*"):
        leftover.unlink()  # a new store: the page's last event id is unknown to it
    server.start()
    server.publish(room, "from the new store")

    wait_until(lambda: page.texts() == ["from the new store"], 10.0, "the list was not rebuilt from the replay")
    assert "some messages were missed" in page.notice().lower()
    assert page.state() == "live"


def test_page_behind_nginx_opens_a_new_stream_itself_after_502s(start_server, sqlite_path, tmp_path, open_page):
    """While gunicorn is down nginx answers 502, and EventSource gives up for good on an error status."""
    server = start_server(RETRY_MS="300")
    nginx = LiveNginx(tmp_path / "nginx", server.port).start()
    try:
        room = "proxied"
        before = server.publish(room, "before")
        page = open_page(nginx, room)
        wait_until(lambda: page.ids() == [before["id"]], 5.0, "the page did not show the first message")

        server.kill()
        wait_until(lambda: EVENT_SOURCE_CLOSED in [state for _, state in page.event_source_states()], 5.0,
                   "the browser did not give up on the stream after nginx's 502")
        assert page.state() == "reconnecting"
        store = open_store(Settings.from_env({"SQLITE_PATH": sqlite_path}))
        while_down = store.append(room, "while down", "message").id
        store.close()
        server.start()
        after_up = server.publish(room, "after")["id"]

        expected = [before["id"], while_down, after_up]
        wait_until(lambda: page.ids() == expected, 15.0, "the page did not resume exactly once, in order")
        quiet_period(0.5)  # a duplicate would arrive now
        assert page.ids() == expected
        assert page.state() == "live"
        sources = page.event_source_states()
        assert len(sources) >= 2 and sources[-1][1] == EVENT_SOURCE_OPEN
        assert f"lastEventId={before['id']}" in sources[-1][0]
    finally:
        nginx.stop()


def test_switching_rooms_stops_messages_from_the_old_room(live_server, open_page):
    page = open_page(live_server, "old")
    live_server.publish("old", "old 1")
    wait_until(lambda: page.texts() == ["old 1"], 2.0, "the page did not show the old room's message")

    page.switch_room("new")
    wait_until(lambda: page.driver.current_url.endswith("/?room=new"), 2.0, "the URL did not name the new room")
    page.wait_until_live()
    live_server.publish("old", "old 2")
    live_server.publish("new", "new 1")
    wait_until(lambda: page.texts() == ["new 1"], 2.0, "the page did not show the new room's message")
    quiet_period(0.3)  # "old 2" would arrive now

    assert page.texts() == ["new 1"]
    sources = page.event_source_states()
    assert [state for _, state in sources] == [EVENT_SOURCE_CLOSED, EVENT_SOURCE_OPEN]
    assert "/messages?room=old&" in sources[0][0] and "/messages?room=new&" in sources[1][0]

    page.driver.back()  # the room is in the URL, so history works too
    wait_until(lambda: page.texts() == ["old 1", "old 2"], 5.0, "going back did not follow the old room again")


def test_the_page_shows_how_many_listen_on_every_worker(live_server, open_page):
    """Presence: the page polls GET /rooms/<room> every 2 s (the two pages may sit on either worker)."""
    def listening(page) -> str:
        element = page.driver.find_element(By.ID, "listening")
        return element.text if element.is_displayed() else ""

    page_a = open_page(live_server, "count", browser=0)
    page_b = open_page(live_server, "count", browser=1)
    wait_until(lambda: listening(page_a) == listening(page_b) == "2 listening", 5.0,
               "the pages did not both show 2 listening")
    page_b.driver.find_element(By.ID, "toggle").click()  # Stop: closes its EventSource
    wait_until(lambda: listening(page_a) == "1 listening", 5.0, "page A did not show page B stopping")

    page_a.switch_room("count, elsewhere")
    wait_until(lambda: listening(page_a) == "#count 1 · #elsewhere 1 listening", 5.0,
               "the page did not count each of its rooms")


def test_the_page_starts_with_the_newest_50_and_loads_older_ones_when_scrolled_to_the_top(
        start_server, store_env, open_page):
    """Issue 15 (parts 1 and 2), on both stores: backlog=50 on connect, history before= on scrolling up."""
    server = start_server(**store_env)
    room = "scrollback"
    sent = [server.publish(room, f"old {n}")["id"] for n in range(120)]
    page = open_page(server, room)
    wait_until(lambda: page.ids() == sent[-50:], 10.0, "the page did not start with the newest 50")
    quiet_period(0.5)  # an older one, loaded without a scroll up, would arrive now
    assert page.ids() == sent[-50:]
    source_url = page.event_source_states()[0][0]
    assert "backlog=50" in source_url and "untyped=true" in source_url

    def scroll_to_top() -> None:
        page.driver.execute_script("document.querySelector('.feed').scrollTop = 0")

    looked_at = page.driver.execute_script("return document.querySelector('#messages .message').dataset.id")
    scroll_to_top()
    wait_until(lambda: page.ids() == sent[-100:], 10.0, "scrolling to the top did not load the 50 before")
    # What the reader looked at stays in view: the list grew above it.
    assert page.driver.execute_script(
        "const feed = document.querySelector('.feed');"
        "const item = document.querySelector(`#messages [data-id='${arguments[0]}']`);"
        "return item.offsetTop >= feed.scrollTop - 1 && feed.scrollTop > 0", looked_at)
    scroll_to_top()
    wait_until(lambda: page.ids() == sent, 10.0, "scrolling up again did not load the oldest 20")
    older = page.driver.find_element(By.ID, "older")
    wait_until(lambda: older.get_attribute("data-state") == "done", 5.0, "the page did not say none are older")
    assert older.text == "No older messages are kept."

    live = server.publish(room, "live one")["id"]
    wait_until(lambda: page.ids() == [*sent, live], 5.0, "a live message did not follow the loaded ones")
    quiet_period(0.3)
    assert page.ids() == [*sent, live]


def test_a_page_without_its_last_id_in_the_window_gets_reset_and_only_the_newest_50(start_server, open_page):
    """Stopped, the window moved on past its last message: Resume gets reset, then the newest 50 (not 200)."""
    server = start_server(CAPPED_MAX_MESSAGES="200")
    room = "moved-on"
    first = server.publish(room, "seen")["id"]
    page = open_page(server, room)
    wait_until(lambda: page.ids() == [first], 5.0, "the page did not show the first message")
    page.driver.find_element(By.ID, "toggle").click()  # Stop
    sent = [server.publish(room, f"missed {n}")["id"] for n in range(250)]
    page.driver.find_element(By.ID, "toggle").click()  # Resume after `first`: evicted by now
    wait_until(lambda: page.ids() == sent[-50:], 10.0, "the page did not rebuild from the newest 50")
    assert "some messages were missed" in page.notice().lower()


def test_the_page_shows_every_type_and_opens_rooms_named_with_commas(live_server, open_page):
    """Issue 15 (part 7): curl posts an "announcement" to ops; /?room=lobby,ops shows it, untold of the type."""
    page = open_page(live_server, "lobby,ops")
    assert page.driver.find_element(By.ID, "room-input").get_attribute("value") == "lobby, ops"
    sources = page.event_source_states()
    assert len(sources) == 1 and "room=lobby&room=ops" in sources[0][0]

    sent = [live_server.publish("ops", "deploy done", event="announcement")["id"],
            live_server.publish("lobby", "hello")["id"],
            live_server.publish("ops", "rolled back", event="alert")["id"]]
    wait_until(lambda: page.ids() == sent, 5.0, "the page did not show every message of both rooms")
    assert page.texts() == ["deploy done", "hello", "rolled back"]
    assert page.driver.execute_script(
        "return Array.from(document.querySelectorAll('#messages .message'),"
        " e => (e.querySelector('.type') || {}).textContent || '')") == ["announcement", "", "alert"]


def test_demo_page_screenshot(live_server, open_page, tmp_path):
    room = "lobby"
    for text, event in [
        ("Morning! The deploy window opens at 10:00.", "message"),
        ("Release 2.4 is tagged; notes are in the tracker.", "announcement"),
        ("Rollout finished on all hosts.\nNo errors in the last 5 minutes.", "message"),
        ("<b>Markup</b> stays text here.", "message"),
    ]:
        live_server.publish(room, text, event=event)
    page = open_page(live_server, room)  # every type shows, with no ?types= (issue 15)
    page.send("Thanks, following along from the demo page.")
    wait_until(lambda: len(page.texts()) == 5, 2.0, "the page did not show all five messages")

    assert page.driver.execute_script("return document.querySelector('#messages .type').textContent") \
        == "announcement"
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "demo.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert page.driver.save_screenshot(str(screenshot))
    viewport = page.driver.execute_script(
        "return [innerWidth * devicePixelRatio, innerHeight * devicePixelRatio].map(Math.round)")
    assert png_size(screenshot) == tuple(viewport)
    assert screenshot.stat().st_size > 10_000


def test_a_test_run_leaves_the_tracked_docs_demo_png_alone(tmp_path):
    """The screenshot test used to overwrite docs/demo.png, leaving every checkout dirty after `make test`."""
    docs = ROOT / "docs"

    def snapshot() -> dict[str, tuple[str, int]]:
        return {str(path): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
                for path in docs.rglob("*") if path.is_file()}

    before = snapshot()
    env = {name: value for name, value in os.environ.items() if name != SCREENSHOT_ENV}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'run'}",
         "tests/test_browser.py::test_demo_page_screenshot"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert snapshot() == before, "the screenshot test wrote into docs/"
