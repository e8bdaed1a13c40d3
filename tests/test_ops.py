"""Operability: /healthz, /readyz, /metrics, and the log lines operators rely on."""
from __future__ import annotations

import logging

import pytest
import requests
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.operations import metrics

OUR_METRICS = {
    "sse_open_streams", "sse_hub_subscriptions", "sse_messages_published", "sse_events_delivered",
    "sse_streams_dropped", "sse_resets_sent", "sse_tailer_restarts", "sse_store_errors",
    "sse_publish_latency_seconds",
}


# Label values known before anything happens, as the metrics table in docs/operations.md lists them.
KNOWN_LABELS = {
    "sse_streams_dropped": {"reason": {"slow", "stalled", "limit", "client_limit"}},
    "sse_store_errors": {"operation": {"publish", "history", "stream", "tailer", "ready", "presence"}},
    "sse_store_queries": {"operation": {"resume", "history", "warm", "presence", "backlog"}},
}


def _samples(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_healthz_answers_without_touching_the_store(client):
    reply = client.get("/healthz")
    assert reply.status_code == 200 and reply.json == {"status": "ok"}


def test_readyz_says_ready_when_the_store_answers(client):
    reply = client.get("/readyz")
    assert reply.status_code == 200 and reply.json == {"status": "ready", "store": "sqlite"}


def test_readyz_is_503_with_retry_after_when_the_store_does_not_answer():
    # Nothing listens on port 1; connect=False lets the app start, server selection then gives up.
    app = create_app({"MONGODB_URI": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200", "HEARTBEAT_SECONDS": "1"})
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"
    assert reply.json == {"code": 503, "status": "Service Unavailable",
                          "message": "the message store cannot take writes right now", "errors": {}}


def test_readyz_says_503_without_the_stores_error_text(app, sqlite_path, caplog):
    """Issue 18: /readyz quoted the store's error (hosts, paths) to whoever asked."""
    import shutil
    from pathlib import Path

    directory = Path(sqlite_path).parent
    shutil.rmtree(directory)  # the store's volume went away under the running app
    with caplog.at_level(logging.WARNING):
        reply = app.test_client().get("/readyz")
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"
    assert reply.json == {"code": 503, "status": "Service Unavailable",
                          "message": "the message store cannot take writes right now", "errors": {}}
    assert str(directory) not in reply.get_data(as_text=True)
    assert f"not ready: SQLite store's directory cannot be checked: [Errno 2] No such file or directory: " \
           f"'{directory}'" in caplog.text  # the operator still learns why


def test_readyz_is_503_while_another_process_holds_the_write_lock_though_reads_still_answer(client, sqlite_path):
    """Issue 18: /readyz probed with a read, which WAL allows under another writer's lock: it said ready."""
    import sqlite3
    import time

    assert client.post("/messages", json={"room": "r", "text": "before"}).status_code == 201
    holder = sqlite3.connect(sqlite_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        reply = client.get("/readyz")
        took = time.monotonic() - started
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"
        assert took < 1.5, took  # the probe's short busy timeout, not a publish's 2 s
        history = client.get("/messages/history?room=r")
        assert history.status_code == 200 and [m["text"] for m in history.json["messages"]] == ["before"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert client.get("/readyz").status_code == 200
    assert client.post("/messages", json={"room": "r", "text": "after"}).status_code == 201


def test_metrics_are_in_prometheus_format_and_count_publishes(client):
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(reply.get_data(as_text=True))}
    assert OUR_METRICS <= names
    before = _samples(client)
    assert client.post("/messages", json={"room": "ops", "text": "counted"}).status_code == 201
    after = _samples(client)
    assert after[("sse_messages_published_total", ())] == before[("sse_messages_published_total", ())] + 1
    assert after[("sse_publish_latency_seconds_count", ())] == before[("sse_publish_latency_seconds_count", ())] + 1


def test_each_request_logs_one_line_with_status_and_duration(client, caplog):
    with caplog.at_level(logging.INFO, logger="app"):
        client.get("/messages/history?room=ops")
    lines = [r.getMessage() for r in caplog.records if r.name == "app.edge.request_log"]
    assert len(lines) == 1
    assert lines[0].startswith("GET /messages/history 200 ") and lines[0].endswith("ms")


def test_startup_logs_the_effective_configuration_without_secrets(caplog):
    with caplog.at_level(logging.INFO, logger="app"):
        create_app({"MONGODB_URI": "mongodb://alice:s3cret@127.0.0.1:1/", "MAX_STREAMS_PER_WORKER": "123"})
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("started with")]
    assert "'max_streams_per_worker': 123" in line
    assert "s3cret" not in line and "alice" not in line and "***@127.0.0.1:1/" in line


@pytest.mark.slow
def test_first_scrape_after_start_lists_every_metric_at_zero(live_server):
    defined = {metric.describe()[0].name for metric in vars(metrics).values() if isinstance(metric, MetricWrapperBase)}
    reply = requests.get(live_server.url + "/metrics", timeout=5)
    assert reply.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(reply.text)}

    assert OUR_METRICS <= defined
    assert defined <= set(families), f"missing from the first scrape: {sorted(defined - set(families))}"
    for name, family in families.items():
        if name not in defined:
            continue
        assert family.samples, f"{name} has no samples"
        # Start-up reads the store: each worker warms its window, and the
        # readiness probe's history may come before a window is warm.
        started = {("sse_store_queries", "warm"), ("sse_store_queries", "history")}
        assert all(sample.value == 0 for sample in family.samples
                   if (name, sample.labels.get("operation")) not in started), f"{name} is not at zero: {family.samples}"
        for label, values in KNOWN_LABELS.get(name, {}).items():
            assert {s.labels[label] for s in family.samples} == values, f"{name} lacks some {label} values"
    histogram = families["sse_publish_latency_seconds"]
    assert {s.labels["le"] for s in histogram.samples if s.name.endswith("_bucket")} >= {"0.001", "5.0", "+Inf"}
