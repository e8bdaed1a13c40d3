"""PUBLISH_RATE: 429 JSON with Retry-After, counters shared by every worker through SQLite."""
from __future__ import annotations

import inspect
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from limits.storage import MongoDBStorage, storage_from_string

from app import create_app
from app.config import Settings
from app.edge.ratelimit import limiter_storage
from app.stores.limits_sqlite import SQLiteStorage, storage_uri


def test_publishing_past_the_rate_is_429_json_with_retry_after(sqlite_path):
    client = create_app({"SQLITE_PATH": sqlite_path, "PUBLISH_RATE": "3/minute"}).test_client()
    statuses = [client.post("/messages", json={"room": "r", "text": str(n)}).status_code for n in range(5)]
    limited = client.post("/messages", json={"room": "r", "text": "again"})

    assert statuses == [201, 201, 201, 429, 429]
    assert limited.json == {"code": 429, "status": "Too Many Requests",
                            "message": "too many publishes from this client: at most 3 per 1 minute", "errors": {}}
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    assert len(client.get("/messages/history?room=r").json["messages"]) == 3


def test_invalid_publishes_count_and_reads_do_not(sqlite_path):
    client = create_app({"SQLITE_PATH": sqlite_path, "PUBLISH_RATE": "2/minute"}).test_client()
    for _ in range(5):
        assert client.get("/messages/history?room=r").status_code == 200
    assert client.post("/messages", json={"room": "r"}).status_code == 422
    assert client.post("/messages", json={"room": "r", "text": "ok"}).status_code == 201
    assert client.post("/messages", json={"room": "r", "text": "ok"}).status_code == 429


def test_no_limit_without_publish_rate(client):
    assert {client.post("/messages", json={"room": "r", "text": "x"}).status_code for _ in range(30)} == {201}


def test_sqlite_storage_counts_in_windows_that_end(tmp_path):
    storage = storage_from_string(storage_uri(str(tmp_path / "limits.sqlite3")))
    assert isinstance(storage, SQLiteStorage)

    assert [storage.incr("k", expiry=0.3) for _ in range(3)] == [1, 2, 3]
    assert storage.get("k") == 3 and storage.get("other") == 0
    assert time.time() < storage.get_expiry("k") <= time.time() + 0.3
    time.sleep(0.35)
    assert storage.get("k") == 0
    assert storage.incr("k", expiry=10, amount=2) == 2  # a new window, not 5
    storage.clear("k")
    assert storage.get("k") == 0 and storage.check()


def _hit_from_own_process(path: str, hits: int, queue) -> None:
    storage = SQLiteStorage(storage_uri(path))
    queue.put(max(storage.incr("k", expiry=60) for _ in range(hits)))


def test_sqlite_storage_loses_no_hit_between_processes(tmp_path):
    path = str(tmp_path / "limits.sqlite3")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_hit_from_own_process, args=(path, 200, queue)) for _ in range(3)]
    for process in processes:
        process.start()
    highest = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(10)

    assert SQLiteStorage(storage_uri(path)).get("k") == 600
    assert max(highest) == 600


def test_counters_live_with_the_deployment_store():
    mongo = Settings.from_env({"MONGODB_URI": "mongodb://127.0.0.1:27017/", "MONGODB_DATABASE": "chat"})
    embedded = Settings.from_env({"SQLITE_PATH": "/srv/var/messages-x.sqlite3"})

    assert limiter_storage(embedded) == ("sse-sqlite:////srv/var/messages-x-ratelimit.sqlite3", {})
    uri, options = limiter_storage(mongo)
    assert uri == "mongodb://127.0.0.1:27017/" and options["database_name"] == "chat"
    # Options limits does not name itself go on to MongoClient, which would
    # refuse them: every option must be one of MongoDBStorage's own
    # parameters. (Checked by signature: no MongoDB server exists here.)
    own = inspect.signature(MongoDBStorage.__init__).parameters
    assert set(options) <= {name for name, p in own.items() if p.kind is p.POSITIONAL_OR_KEYWORD}


def _publish_from_own_process(sqlite_path: str, attempts: int, queue) -> None:
    client = create_app({"SQLITE_PATH": sqlite_path, "PUBLISH_RATE": "10/minute"}).test_client()
    queue.put([client.post("/messages", json={"room": "shared", "text": "x"}).status_code for _ in range(attempts)])


def test_the_limit_is_shared_by_separate_worker_processes(sqlite_path):
    # Two processes with their own app, as two gunicorn workers have; a
    # per-process (memory) counter would let 10 through in each.
    context = multiprocessing.get_context("spawn")  # fork would copy gevent's hub threads mid-state
    queue = context.Queue()
    workers = [context.Process(target=_publish_from_own_process, args=(sqlite_path, 15, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    statuses = queue.get(timeout=30) + queue.get(timeout=30)
    for worker in workers:
        worker.join(10)
    assert statuses.count(201) == 10 and statuses.count(429) == 20


@pytest.mark.slow
def test_the_limit_holds_on_real_gunicorn(start_server):
    server = start_server(PUBLISH_RATE="10/minute", WEB_CONCURRENCY="2")

    def publish(n: int) -> requests.Response:
        return requests.post(server.url + "/messages", json={"room": "shared", "text": str(n)},
                             headers={"Connection": "close"}, timeout=10)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(publish, range(40)))
    statuses = [reply.status_code for reply in replies]
    assert statuses.count(201) == 10 and statuses.count(429) == 30, statuses
    limited = next(reply for reply in replies if reply.status_code == 429)
    assert limited.json()["code"] == 429 and int(limited.headers["Retry-After"]) >= 1
