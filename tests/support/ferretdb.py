"""FerretDB on a free loopback port: a MongoDB wire-protocol server the tests can start, kill and restart.

FerretDB (v1.24.2, SQLite backend) stands in for MongoDB where no mongod can be
installed. It is *not* MongoDB; the differences the tests meet are listed in
docs/testing.md ("FerretDB as a stand-in for MongoDB"). `.ci/ferretdb-build` builds the binary into a
cache outside the repository; every instance keeps its data in its own
directory (a pytest temp dir), so nothing lands in the work tree.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.support.live import ROOT, free_port
from tests.support.waiting import wait_until

BUILD_SCRIPT = ROOT / ".ci" / "ferretdb-build"
# Capped collections are trimmed by a background ticker (default 1m) or by `compact`;
# a short tick makes the bound hold within about a second, as a test can wait for.
CLEANUP_INTERVAL = "500ms"
# FerretDB begins its write transactions DEFERRED: the one that reads its snapshot
# before another connection commits cannot upgrade, and SQLite refuses it at once
# with SQLITE_BUSY_SNAPSHOT ("database is locked (517)"), which busy_timeout does
# not retry. Under load that refused a worker's presence write three times in a row
# in CI. MongoDB has no such refusal for writes to different documents, so the
# stand-in takes the write lock when a transaction begins (the SQLite driver's
# _txlock) and waits for it. docs/testing.md, "FerretDB as a stand-in".
SQLITE_URL_QUERY = "_txlock=immediate"


class FerretDBUnavailable(Exception):
    """FerretDB could not be built or found; the message says why."""


def find_binary() -> str:
    """Return the FerretDB binary: $FERRETDB_BIN, else what `.ci/ferretdb-build` builds (or finds cached)."""
    binary = os.environ.get("FERRETDB_BIN")
    if binary:
        if not os.access(binary, os.X_OK):
            raise FerretDBUnavailable(f"FERRETDB_BIN={binary!r} is not an executable file")
        return binary
    # The script is idempotent and answers at once when the pinned binary is cached.
    try:
        built = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise FerretDBUnavailable(f"{BUILD_SCRIPT.name} did not finish within 15 minutes") from None
    lines = built.stdout.strip().splitlines()
    if built.returncode != 0 or not lines:
        why = (built.stderr.strip().splitlines() or [f"exit status {built.returncode}"])[-1]
        raise FerretDBUnavailable(f"{BUILD_SCRIPT.name} failed: {why}")
    return lines[-1]


class FerretDB:
    """One FerretDB process on 127.0.0.1, with its SQLite files and log under ``directory``.

    ``stop()``, ``kill()`` and ``restart()`` keep the port and the data, so a
    client (and a live server) sees the same database go away and come back.
    """

    def __init__(self, binary: str, directory: Path, port: int | None = None) -> None:
        self.binary = binary
        self.data_dir = Path(directory) / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(directory) / "ferretdb.log"
        self._port_chosen = port is None
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [
            self.binary,
            "--handler=sqlite",
            f"--sqlite-url=file:{self.data_dir}/?{SQLITE_URL_QUERY}",
            f"--listen-addr=127.0.0.1:{self.port}",
            "--telemetry=disable",
            "--state-dir=-",
            "--debug-addr=-",
            f"--log-level={os.environ.get('FERRETDB_LOG_LEVEL', 'WARN')}",
            f"--test-capped-cleanup-interval={CLEANUP_INTERVAL}",
        ]

    def start(self, timeout: float = 20.0) -> FerretDB:
        """Start the process and return once it answers a ping."""
        try:
            return self._start(timeout)
        except RuntimeError:
            if not self._port_chosen or "address already in use" not in self.log():
                raise
        # Another process took the free port between our probe and FerretDB's bind.
        self.port = free_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> FerretDB:
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        client = MongoClient(self.uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250, directConnection=True)

        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"ferretdb exited with {self.process.returncode}: {self.log()}")
            try:
                client.admin.command("ping")
            except PyMongoError:
                return False
            return True

        try:
            wait_until(answers, timeout)
        except AssertionError:
            self.kill()
            raise RuntimeError(f"ferretdb did not answer a ping within {timeout} s: {self.log()}") from None
        finally:
            client.close()
        self._port_chosen = False  # from now on the port is ours, restarts keep it
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the process with SIGTERM (SIGKILL if it does not exit in time)."""
        if not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """End the process with SIGKILL, as a crash would."""
        if self.running:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def restart(self, timeout: float = 20.0) -> FerretDB:
        """Start again on the same port and data directory (stopping first if it still runs).

        Not within the second the old process stopped in: FerretDB numbers a
        document's place in natural order by the wall-clock second and a
        counter that starts again from 0 in each process, so a document the
        new process inserts in that second would sort *before* the old one's
        last documents (docs/testing.md, "TLS, tested on FerretDB").
        """
        self.stop()
        time.sleep(1.0 - time.time() % 1.0 + 0.01)  # into the next wall-clock second
        return self.start(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
