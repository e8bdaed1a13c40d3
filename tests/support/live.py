"""Real gunicorn (gevent workers) on a free loopback port, for live tests."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LiveServer:
    """A gunicorn master with its workers; ``url`` is where it listens."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env.get("PORT") or free_port())
        self.env = {**os.environ, "HOST": "127.0.0.1", "WEB_CONCURRENCY": "2", **env, "PORT": str(self.port)}
        # Beside the log, not a fresh /tmp directory per start: tests kill gunicorn
        # with SIGKILL, so its own on_exit clean-up never runs.
        metrics_dir = log_path.with_name(log_path.stem + "-metrics")
        metrics_dir.mkdir(exist_ok=True)
        self.env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
        # The same for the node's client slots (gunicorn.conf.py would make a temp dir).
        self.env.setdefault("CLIENT_SLOTS_PATH", str(log_path.with_name(log_path.stem + "-client-slots.lmdb")))
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> LiveServer:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_until(self._ready, timeout, interval=0.1)
        except AssertionError:
            raise RuntimeError(f"gunicorn did not become ready: {self.log()}") from None
        return self

    def _ready(self) -> bool:
        """Say whether the app answers and every worker has booted; fail at once if gunicorn exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.process.returncode}: {self.log()}")
        try:
            # 401: private rooms are on (AUTH_JWT_*) and "ready" is one of them; the app answers all the same.
            answered = requests.get(self.url + "/messages/history?room=ready", timeout=1).status_code in (200, 401)
        except requests.RequestException:
            return False
        return answered and self._every_worker_booted()

    def _every_worker_booted(self) -> bool:
        """Say whether each worker has made its app: one answering is not enough (the other may be booting)."""
        pids = self.worker_pids()
        if len(pids) < int(self.env["WEB_CONCURRENCY"]):
            return False
        log = self.log_path.read_text(errors="replace")
        return all(f"[{pid}] [INFO] started with " in log for pid in pids)

    def worker_holding(self, local_port: int) -> int:
        """Return the pid of the worker that holds the connection from the client's ``local_port`` (``ss``)."""
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{self.port} )"],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            if re.search(rf":{local_port}\s", line + " "):
                return int(re.search(r"pid=(\d+)", line).group(1))
        raise AssertionError(f"no server socket for client port {local_port}:\n{out}")

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> float:
        """Stop the master and its workers; return how long it took."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def history(self, room: str) -> list[dict]:
        reply = requests.get(self.url + "/messages/history", params={"room": room, "limit": 1000}, timeout=5)
        reply.raise_for_status()
        return reply.json()["messages"]

    def publish(self, room: str, text: str, **extra: str) -> dict:
        reply = requests.post(self.url + "/messages", json={"room": room, "text": text, **extra}, timeout=5)
        reply.raise_for_status()
        return reply.json()
