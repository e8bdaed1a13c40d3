"""The subscribe hook live: real gunicorn asks a real Flask application with its own session login.

The application (tests/support/hook_app.py) runs on one loopback port,
sse-rooms on another: the same site (cookies are not port-scoped), so the
session cookie the application sets at login reaches the SSE server, which
passes it to the application's hook. On both stores: a hooked stream gets the
room and a refused one gets nothing; the hook's expiresIn ends the stream.
Then headless Chromium logs in on the application's form and follows a
private room from the application's page. Then a storm: many stream opens at
once make at most AUTH_SUBSCRIBE_MAX_CONCURRENT calls per worker, and one
user's many identical opens are coalesced or cached.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from selenium.webdriver.common.by import By

from tests.support.browser import start_chromium
from tests.support.hook_app import HookApp
from tests.support.sse_client import StreamReader
from tests.support.waiting import quiet_period, wait_until

pytestmark = pytest.mark.slow

ROOM = "team-red"
PUBLISH_TOKEN = "publish-" + "p" * 32
EVENT_SOURCE_CLOSED = 2


@pytest.fixture
def hook() -> Iterator[HookApp]:
    app = HookApp().start()
    yield app
    app.stop()


def hooked_server(start_server, hook, store_env=None, **env):
    server = start_server(**(store_env or {}), AUTH_SUBSCRIBE_URL=hook.hook_url, PUBLISH_TOKEN=PUBLISH_TOKEN,
                          RETRY_MS="500", **env)
    hook.calls.clear()  # the readiness probes' (a history read of a private room, refused: 401)
    return server


def publish(server, text: str, room: str = ROOM) -> dict:
    reply = requests.post(server.url + "/messages", json={"room": room, "text": text}, timeout=5,
                          headers={"Authorization": f"Bearer {PUBLISH_TOKEN}"})
    assert reply.status_code == 201, reply.text
    return reply.json()


def test_a_hooked_stream_gets_its_room_and_a_refused_one_gets_nothing(start_server, store_env, hook):
    """On both stores: ada (team-*) follows the room; bob (team-blue) gets 403, nobody 401, and neither reads."""
    server = hooked_server(start_server, hook, store_env)
    timeout = 5.0 if store_env.get("MONGODB_URI") else 2.0
    ada = hook.login_cookie("ada")

    refused = {who: requests.get(server.url + f"/messages?room={ROOM}", headers=headers, stream=True, timeout=5)
               for who, headers in (("bob", {"Cookie": hook.login_cookie("bob")}), ("nobody", {}))}
    assert (refused["bob"].status_code, refused["nobody"].status_code) == (403, 401)
    for reply in refused.values():
        assert reply.headers["Content-Type"] == "application/json" and reply.json()["code"] == reply.status_code

    stream = StreamReader(server.url + f"/messages?room={ROOM}", headers={"Cookie": ada})  # raises unless 200
    try:
        sent = publish(server, "for ada")
        assert stream.wait_for(lambda events: [event.id for event in events] == [sent["id"]], timeout), stream.events
    finally:
        stream.close()

    history = requests.get(server.url + f"/messages/history?room={ROOM}", headers={"Cookie": ada}, timeout=5)
    assert [message["text"] for message in history.json()["messages"]] == ["for ada"]
    asked = [call["json"]["path"] for call in hook.calls]
    assert asked.count("/messages") == 3 and asked.count("/messages/history") == 1
    assert all(call["json"]["rooms"] == [ROOM] for call in hook.calls)


def test_the_hooks_sub_is_who_is_here_in_the_list_and_in_join_and_leave(start_server, store_env, hook):
    """The seam of issue 16's two parts: the identity the hook answers is the one presence names and announces."""
    server = hooked_server(start_server, hook, store_env)
    timeout = 5.0 if store_env.get("MONGODB_URI") else 3.0
    ada, service = hook.login_cookie("ada"), hook.login_cookie("service")
    watcher = StreamReader(server.url + f"/messages?room={ROOM}&presence=1", headers={"Cookie": ada})
    try:
        def about_service(kind: str):
            return lambda events: any(event.event == kind and json.loads(event.data)["sub"] == "service"
                                      for event in events)

        joined = StreamReader(server.url + f"/messages?room={ROOM}", headers={"Cookie": service})
        try:
            assert watcher.wait_for(about_service("join"), timeout), watcher.events
            # Either worker answers; the one holding neither stream reads the others' entries (right within 2 s).
            def listed() -> dict:
                reply = requests.get(server.url + f"/rooms/{ROOM}/subscribers", headers={"Cookie": ada}, timeout=5)
                assert reply.status_code == 200, reply.text
                return reply.json()

            both = [{"sub": "ada", "streams": 1}, {"sub": "service", "streams": 1}]
            wait_until(lambda: listed()["subscribers"] == both, timeout, f"not both listed: {listed()}")
            assert listed()["anonymous"] == 0
        finally:
            joined.close()
        assert watcher.wait_for(about_service("leave"), timeout + 2), watcher.events
        refused = requests.get(server.url + f"/rooms/{ROOM}/subscribers", timeout=5)  # no login: the hook says 401
        assert refused.status_code == 401, refused.text
    finally:
        watcher.close()


def test_the_hooks_expires_in_ends_the_stream(start_server, hook):
    server = hooked_server(start_server, hook)
    hook.expires_in = 2
    opened = time.monotonic()
    stream = StreamReader(server.url + f"/messages?room={ROOM}", headers={"Cookie": hook.login_cookie("ada")})
    try:
        wait_until(stream.ended, 6.0, "the stream outlived the hook's expiresIn")
    finally:
        stream.close()
    ended_after = time.monotonic() - opened
    print(f"the stream ended {ended_after:.2f} s after it opened (expiresIn 2)")
    assert ended_after >= 2.0


def test_a_browser_logs_in_on_the_application_and_follows_a_private_room(start_server, hook, tmp_path):
    """Headless Chromium: the application's login form, then its page follows the room on the SSE server."""
    server = hooked_server(start_server, hook, CORS_ORIGINS=hook.url)
    browser = start_chromium(tmp_path / "profile")
    try:
        follow_page = f"{hook.url}/follow?server={server.url}&room={ROOM}"
        browser.get(follow_page)  # not logged in yet: the stream is refused, and EventSource gives up
        wait_until(lambda: browser.execute_script("return window.__source.readyState") == EVENT_SOURCE_CLOSED,
                   5.0, "the browser did not give up on the refused stream")
        assert browser.execute_script("return window.__opened") == 0

        browser.get(f"{hook.url}/login")
        browser.find_element(By.ID, "user").send_keys("ada")
        browser.find_element(By.ID, "password").send_keys("ada-password")
        browser.find_element(By.ID, "log-in").click()
        wait_until(lambda: browser.find_elements(By.ID, "who"), 5.0, "the login did not lead to the page")
        browser.get(follow_page)
        assert browser.find_element(By.ID, "who").text == "ada"
        wait_until(lambda: browser.execute_script("return window.__opened") == 1, 5.0, "the stream did not open")
        publish(server, "seen by the browser")
        wait_until(lambda: browser.execute_script("return window.__received") == ["seen by the browser"], 3.0,
                   "the page did not get the message")
        # The SSE server passed the application's own session cookie: the hook saw who logged in.
        assert any(call["cookie"] and "session=" in call["cookie"] for call in hook.calls)
        publish(server, "not for team-blue", room="team-blue")
        quiet_period(0.3)  # it would arrive now, were the room leaking
        assert browser.execute_script("return window.__received") == ["seen by the browser"]
    finally:
        browser.get("about:blank")
        browser.quit()


def _open_many(url: str, cookies: list[str]) -> list[int]:
    """Open one stream per cookie at once; return the statuses (each stream closed once its head is read)."""
    statuses: list[int] = [0] * len(cookies)

    def open_one(index: int) -> None:
        try:
            with requests.get(url, headers={"Cookie": cookies[index]}, stream=True, timeout=10) as reply:
                statuses[index] = reply.status_code
        except requests.RequestException:
            statuses[index] = -1

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(len(cookies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_a_storm_of_opens_is_bounded_per_worker_and_one_users_questions_are_shared(start_server, hook):
    """120 users at once against a slow hook: at most 2 workers x 3 calls in flight; 60 tabs of one user: few calls."""
    server = hooked_server(start_server, hook, AUTH_SUBSCRIBE_MAX_CONCURRENT="3", AUTH_SUBSCRIBE_TIMEOUT_MS="5000",
                           AUTH_SUBSCRIBE_CACHE_SECONDS="30")
    ada = hook.login_cookie("ada")
    # Distinct credentials (a cookie the hook ignores makes each question its own): no sharing, only the bound.
    hook.behaviour, hook.slow_seconds = "slow", 0.05
    statuses = _open_many(server.url + f"/messages?room={ROOM}", [f"{ada}; tab={n}" for n in range(120)])
    print(f"120 users: hook peak {hook.in_flight_peak} in flight, statuses {sorted(set(statuses))}")
    assert hook.in_flight_peak <= 2 * 3
    assert statuses.count(200) == 120, statuses

    hook.calls.clear()
    hook.slow_seconds = 0.5  # the first question is still in flight when the others arrive
    statuses = _open_many(server.url + f"/messages?room={ROOM}", [ada] * 60)
    print(f"60 tabs of one user: {len(hook.calls)} hook calls")
    assert statuses.count(200) == 60, statuses
    assert len(hook.calls) <= 2  # one per worker: the rest waited for it, or found it cached
