"""A few lines that say what the numbers were measured on."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import psutil

from .cores import LOADGEN_CPUS, SERVER_CPUS

DEBIAN_PACKAGES = ("nginx-light", "libnginx-mod-nchan", "pushpin", "redis-server")
# The Python peers' packages, from bench/.venv.
PYTHON_PACKAGES = ("sse-starlette", "starlette", "uvicorn", "broadcaster", "flask-sse", "redis", "gunicorn", "gevent")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _package_versions() -> str:
    versions = []
    for package in DEBIAN_PACKAGES:
        try:
            version = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", package],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            version = ""
        versions.append(f"{package} {version or 'not installed'}")
    return ", ".join(versions)


def _python_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for package in PYTHON_PACKAGES:
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} not installed")
    return ", ".join(versions)


def _go_versions() -> str:
    from .systems import CENTRIFUGO_VERSION, MERCURE_VERSION, _caddy_version

    go = subprocess.run(["go", "version"], capture_output=True, text=True, timeout=10).stdout.strip() \
        if shutil.which("go") else "no Go"
    return (f"Centrifugo {CENTRIFUGO_VERSION}, Mercure {MERCURE_VERSION} in Caddy {_caddy_version()}"
            f" (built here with {go.removeprefix('go version ') or 'Go'})")


def _git_commit(root: Path) -> str:
    """The commit of the server measured, and whether its files differed from it."""
    snapshot_of = os.environ.get("BENCH_COMMIT")
    if snapshot_of:  # run.sh BENCH_SNAPSHOT=1: `git archive HEAD` into a temp dir
        return f"`{snapshot_of}` (exactly as committed: a `git archive` snapshot)"
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%h %s"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip() or "unknown"
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "app", "gunicorn.conf.py", "wsgi.py"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "`unknown`"
    return f"`{commit}`" + (" plus uncommitted changes to the server's files" if changed else "")


def describe_machine(server_root: Path) -> list[str]:
    memory_gib = psutil.virtual_memory().total / 2**30
    return [
        f"{os.cpu_count()} cores ({_cpu_model()}), {memory_gib:.0f} GiB RAM,"
        f" {platform.system()} {platform.release()}, Python {platform.python_version()}",
        "Shared machine: other jobs may run at the same time (see the Other CPU column).",
        f"Peers from Debian: {_package_versions()}",
        f"Peers built from the Go module proxy: {_go_versions()}",
        f"Python peers (bench/.venv): {_python_versions()}",
        f"Core split: servers on core {SERVER_CPUS}, load generator on core(s)"
        f" {', '.join(map(str, sorted(LOADGEN_CPUS)))} (taskset / sched_setaffinity), every scenario",
        f"Our server: {server_root} at {_git_commit(server_root)}",
    ]
