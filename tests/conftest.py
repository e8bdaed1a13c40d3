"""Shared fixtures: an app on its own store, its test client, real gunicorn, and a MongoDB wire server."""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient

from app import create_app
from tests.support.ferretdb import FerretDB, FerretDBUnavailable, find_binary
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


# -- MongoDB ---------------------------------------------------------------------
# MONGODB_URI wins (a real mongod, as in .github/workflows/ci.yml); else FerretDB, a
# MongoDB wire-protocol server on SQLite built by .ci/ferretdb-build, stands in; else
# the MongoDB tests are skipped with the reason.


@dataclass(frozen=True)
class MongoServer:
    """The server behind the MongoDB tests: ``kind`` is "mongod" or "ferretdb"."""

    uri: str
    kind: str
    ferretdb: FerretDB | None = None  # the process, when the tests started it


def server_kind(uri: str) -> str:
    """Return "ferretdb" if the server at ``uri`` says it is FerretDB, else "mongod"."""
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        return "ferretdb" if "ferretdbVersion" in client.admin.command("buildInfo") else "mongod"


@pytest.fixture(scope="session")
def ferretdb_binary() -> str:
    """Return the FerretDB binary, or skip with the reason it could not be built."""
    try:
        return find_binary()
    except FerretDBUnavailable as exc:
        pytest.skip(f"no MONGODB_URI and FerretDB could not be built: {exc}")


@pytest.fixture(scope="session")
def mongodb_server(request, tmp_path_factory) -> Iterator[MongoServer]:
    """Return the session's MongoDB wire server: $MONGODB_URI, else a session-wide FerretDB."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield MongoServer(uri, server_kind(uri))
        return
    binary = request.getfixturevalue("ferretdb_binary")  # skips, with the reason, if it cannot be built
    ferretdb = FerretDB(binary, tmp_path_factory.mktemp("ferretdb")).start()
    try:
        yield MongoServer(ferretdb.uri, "ferretdb", ferretdb)
    finally:
        ferretdb.stop()


@pytest.fixture(scope="session")
def mongodb_uri(mongodb_server: MongoServer) -> str:
    return mongodb_server.uri


@pytest.fixture(scope="session")
def mongodb_kind(mongodb_server: MongoServer) -> str:
    """Return "mongod" or "ferretdb", so a test can mark what it does only for FerretDB."""
    return mongodb_server.kind


@pytest.fixture
def mongodb_database(mongodb_uri: str) -> Iterator[str]:
    """Return a database name of this test's own on the session's server, dropped afterwards."""
    name = f"sse_test_{uuid.uuid4().hex[:12]}"
    yield name
    with MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(name)


@pytest.fixture
def start_ferretdb(ferretdb_binary: str, tmp_path_factory) -> Iterator[Callable[[], FerretDB]]:
    """Start private FerretDB instances (each on its own port and data dir) that a test may kill.

    ``start_ferretdb()`` returns a running :class:`FerretDB`: ``.uri``, ``.kill()`` (SIGKILL),
    ``.stop()`` (SIGTERM), ``.restart()`` (same port, same data). All are killed after the test.
    Always FerretDB, even where MONGODB_URI is set: the tests cannot kill someone else's mongod.
    """
    instances: list[FerretDB] = []

    def start() -> FerretDB:
        instance = FerretDB(ferretdb_binary, tmp_path_factory.mktemp("ferretdb-private"))
        instances.append(instance)
        return instance.start()

    yield start
    for instance in instances:
        instance.kill()


# -- A live server on either store ------------------------------------------------
# FerretDB closes a tailable cursor at once when its first batch is smaller than
# batchSize (101), where MongoDB keeps it open; the tailer then reopens it with a
# growing pause (up to 1 s), which is slow delivery, not wrong delivery. So a live
# server on FerretDB starts on a collection that already holds more than a batch
# (in a room no test reads), as a production collection would.
FILLER_ROOM = "_filler"
FILLER_MESSAGES = 150


def prefill_capped(uri: str, database: str, *, count: int = FILLER_MESSAGES,
                   size: int = 5_000_000, max_messages: int = 10_000) -> None:
    """Create the app's capped collection with ``count`` messages in FILLER_ROOM."""
    from datetime import UTC, datetime

    with MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True) as client:
        db = client[database]
        db.create_collection("messages", capped=True, size=size, max=max_messages)
        now = datetime.now(UTC).replace(microsecond=0)
        db.messages.insert_many([{"room": FILLER_ROOM, "text": f"filler {n}", "event": "message",
                                  "createdAt": now} for n in range(count)])


@pytest.fixture(params=["sqlite", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def store_env(request, tmp_path: Path) -> dict[str, str]:
    """Return the environment of a live server on one store: SQLite (a temp file) or MongoDB (its own database).

    Use as ``start_server(**store_env)``; the test's id says which store it ran on.
    """
    if request.param == "sqlite":
        return {"MONGODB_URI": "", "SQLITE_PATH": str(tmp_path / "messages.sqlite3")}
    uri = request.getfixturevalue("mongodb_uri")
    database = request.getfixturevalue("mongodb_database")
    if request.getfixturevalue("mongodb_kind") == "ferretdb":
        prefill_capped(uri, database)
    return {"MONGODB_URI": uri, "MONGODB_DATABASE": database}
