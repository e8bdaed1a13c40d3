"""Helpers shared by the fault tests: metrics, publishing, reading the store (waiting: tests/support/waiting.py)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

from app.stores.sqlite import SQLiteStore


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of GET /metrics as {(name, sorted labels): value}."""
    text = requests.get(url + "/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(url: str, name: str, **labels: str) -> float:
    """Return one sample's value (0 when it has not been written yet)."""
    return scrape(url).get((name, tuple(sorted(labels.items()))), 0.0)


def stored_ids(sqlite_path: str, room: str) -> list[str]:
    """Return the ids the store holds for a room, in store order (read straight from the file)."""
    store = SQLiteStore(sqlite_path, max_bytes=2**40, max_messages=10**9)
    try:
        return [message.id for message in store.read_room(room).messages]
    finally:
        store.close()


@dataclass
class Publisher:
    """Threads that POST to rooms in turn until stopped, keeping what was acknowledged."""

    url: str
    rooms: list[str]
    threads: int = 2
    pause: float = 0.0
    text: str = "m"
    acked: list[dict] = field(default_factory=list)  # 201 replies, in the order they came back
    statuses: dict[int, int] = field(default_factory=dict)  # status (0: no reply) -> count
    durations: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)]

    def start(self) -> Publisher:
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> Publisher:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)
        return self

    def _run(self, number: int) -> None:
        count = 0
        while not self._stop.is_set():
            room = self.rooms[(number + count) % len(self.rooms)]
            count += 1
            started = time.monotonic()
            try:
                body = {"room": room, "text": f"{self.text}{number}-{count}"}
                reply = requests.post(self.url + "/messages", json=body, timeout=10)
                status = reply.status_code
            except requests.RequestException:
                reply, status = None, 0
            with self._lock:
                self.durations.append(time.monotonic() - started)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 201:
                    self.acked.append(reply.json())
            if self.pause:
                time.sleep(self.pause)
