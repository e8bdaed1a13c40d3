"""Debian's headless Chromium, driven through Debian's chromedriver by Selenium.

The driver path is given to Selenium explicitly, so Selenium Manager never
runs (it would try to download a browser and a driver, which fails here).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.waiting import wait_until

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)

# Injected before any page script: remembers every EventSource the page makes,
# so a test can tell whether an old one was really closed (the page's own
# room check would hide a leaked stream from what is shown).
_TRACK_EVENT_SOURCES = """
window.__eventSources = [];
window.EventSource = class extends window.EventSource {
  constructor(...args) { super(...args); window.__eventSources.push(this); }
};
"""


def start_chromium(profile_dir: Path, width: int = 1000, height: int = 760,
                   extra_flags: tuple[str, ...] = ()) -> WebDriver:
    """Start one headless Chromium with a fresh profile (``extra_flags``: e.g. a test certificate to trust)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver "
                           "(make system-deps, as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    for flag in extra_flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _TRACK_EVENT_SOURCES})
    return driver


def png_size(path: Path) -> tuple[int, int]:
    """Return (width, height) of a PNG file; fail if it is not one."""
    with open(path, "rb") as file:
        head = file.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


class DemoPage:
    """The demo page in one browser, seen the way a person would use it."""

    def __init__(self, driver: WebDriver, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def open(self, room: str, query: str = "", timeout: float = 10.0) -> DemoPage:
        self.driver.get(f"{self.base_url}/?room={room}{query}")
        self.wait_until_live(timeout)
        return self

    def state(self) -> str:
        return self.driver.find_element(By.ID, "state").get_attribute("data-state")

    def state_text(self) -> str:
        return self.driver.find_element(By.ID, "state").text

    def wait_until_live(self, timeout: float = 10.0) -> None:
        wait_until(lambda: self.state() == "live", timeout, "the page did not become live")

    def texts(self) -> list[str]:
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages .text'), e => e.textContent)")

    def ids(self) -> list[str]:
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages .message'), e => e.dataset.id)")

    def send(self, text: str, event: str | None = None) -> None:
        """Type into the send box and press Enter."""
        if event is not None:
            field = self.driver.find_element(By.ID, "event-type")
            field.clear()
            field.send_keys(event)
        box = self.driver.find_element(By.ID, "text")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)

    def send_error(self) -> str:
        element = self.driver.find_element(By.ID, "send-error")
        return element.text if element.is_displayed() else ""

    def switch_room(self, room: str) -> None:
        """Type a room name into the room box and press Enter."""
        field = self.driver.find_element(By.ID, "room-input")
        field.clear()
        field.send_keys(room, Keys.ENTER)

    def notice(self) -> str:
        element = self.driver.find_element(By.ID, "notice")
        return element.text if element.is_displayed() else ""

    def event_source_states(self) -> list[tuple[str, int]]:
        """Return (url, readyState) of every EventSource the page has made, oldest first."""
        return [tuple(pair) for pair in self.driver.execute_script(
            "return window.__eventSources.map(s => [s.url, s.readyState])")]
