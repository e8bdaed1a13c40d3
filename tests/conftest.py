"""Shared fixtures: an app on its own store, its test client, and real gunicorn."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app import create_app
from tests.support.live import LiveServer


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    return str(tmp_path / "messages.sqlite3")


@pytest.fixture
def app(sqlite_path: str):
    return create_app({"SQLITE_PATH": sqlite_path, "HEARTBEAT_SECONDS": "1"})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def start_server(tmp_path: Path, sqlite_path: str) -> Iterator[Callable[..., LiveServer]]:
    """Start real gunicorn with 2 gevent workers; env overrides are keyword arguments."""
    servers: list[LiveServer] = []

    def start(**env: str) -> LiveServer:
        server = LiveServer({"SQLITE_PATH": sqlite_path, **env}, tmp_path / f"gunicorn-{len(servers)}.log")
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def live_server(start_server) -> LiveServer:
    return start_server()
