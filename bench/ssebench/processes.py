"""Starting, measuring and stopping the server processes of one system."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil


class ServerGroup:
    """Every process a system runs, each started in a process group of its own.

    A process group per launched command means one `killpg` reaches the
    command and anything it forked (gunicorn workers, nginx workers, Pushpin's
    condure/proxy/handler), and nothing of ours.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.launched: list[subprocess.Popen] = []

    def launch(
        self, name: str, argv: list[str], cwd: Path, env: dict[str, str], cpus: str | None = None
    ) -> subprocess.Popen:
        """Start `argv` in a session of its own, on the cores `cpus` ("0") if given."""
        if cpus is not None:
            # taskset execs the command: same pid, and its children inherit the mask.
            argv = ["taskset", "-c", cpus, *argv]
        log = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.launched.append(process)
        return process

    def pids(self) -> list[int]:
        """All live processes of the system: the launched ones and their descendants."""
        pids: list[int] = []
        for launched in self.launched:
            try:
                root = psutil.Process(launched.pid)
                pids.append(root.pid)
                pids.extend(child.pid for child in root.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return pids

    def rss_bytes(self) -> int:
        """Resident memory summed over all the system's processes."""
        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the live processes (utime+stime in /proc/<pid>/stat)."""
        total = 0.0
        for pid in self.pids():
            try:
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_by_pid(self) -> dict[int, float]:
        """User + system CPU seconds of each live process of the system."""
        times: dict[int, float] = {}
        for pid in self.pids():
            try:
                cpu = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            times[pid] = cpu.user + cpu.system
        return times

    def dead(self) -> list[str]:
        return [
            f"{' '.join(p.args[:2])} exited {p.returncode}"  # type: ignore[index]
            for p in self.launched
            if p.poll() is not None
        ]

    def stop(self) -> None:
        """TERM every group, then KILL what is left after a grace period."""
        for process in reversed(self.launched):
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 8
        for process in self.launched:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.launched:
            _signal_group(process.pid, signal.SIGKILL)
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                pass


def pin_process(pid: int, cpus: set[int] | None) -> None:
    """Set the CPU affinity of every thread of `pid` (None: all cores).

    sched_setaffinity acts on one thread; threads made later inherit the mask
    of the thread that makes them, so each thread alive now is set.
    """
    cpus = cpus if cpus is not None else set(range(os.cpu_count() or 1))
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            pass


def streams_held(pids: list[int], port: int, sources: set[str]) -> dict[int, int]:
    """Client connections each of `pids` holds open on `port` from the addresses `sources`.

    Counted on the server's side, so a stream the server has ended counts no
    more even while its client, which may never read, has not noticed.
    """
    held = {}
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        held[pid] = sum(
            1 for c in connections
            if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED"
            # A Go server's dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d.
            and c.raddr and c.raddr.ip.removeprefix("::ffff:") in sources
        )
    return held


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def free_port() -> int:
    """Ask the kernel for a loopback port nobody is using right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, group: ServerGroup, timeout: float = 20.0) -> None:
    """Return once something accepts on `port`; raise if the server died or never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group.dead():
            raise RuntimeError(f"server exited during start-up: {group.dead()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:.0f}s")
