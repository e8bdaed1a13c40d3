"""Prometheus metrics of this process, and their exposition for ``GET /metrics``.

Under gunicorn every worker is its own process, so each one writes its values
to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess
mode) and a scrape, whichever worker answers it, adds them up. That variable
must be set before prometheus_client is first imported in the worker, which
is why gunicorn.conf.py sets it in the master, cleans the directory on start
and marks a dead worker's live gauges gone (``child_exit``). Without it (tests,
``flask run``) the values live in this process's default registry.

A value reaches a file only when this process creates or touches it. The
master imports this module (gunicorn.conf.py imports the app package) and
on_starting then deletes the files it wrote, so every worker calls
``write_zeros_for_this_worker`` at start: otherwise a scrape lists nothing until
something happens. Labelled metrics are created for their known label values
here, at import, so they too are listed at zero from the start.

Updates stay off the per-subscriber path: a stream counts a whole batch of
events with one ``inc``, and the tailer counts restarts, not messages.
"""
from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

OPEN_STREAMS = Gauge(
    "sse_open_streams", "SSE streams open now (admitted and not yet closed).",
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS = Gauge(
    "sse_hub_subscriptions", "Live subscriptions (bounded queues) held by the per-worker hubs.",
    multiprocess_mode="livesum",
)
MESSAGES_PUBLISHED = Counter("sse_messages_published", "Messages stored through POST /messages.")
EVENTS_DELIVERED = Counter("sse_events_delivered", "Message events handed to client connections (backlog and live).")
STREAMS_DROPPED = Counter(
    "sse_streams_dropped", "Streams ended or refused by the server to protect the worker.", ["reason"],
)
RESETS_SENT = Counter("sse_resets_sent", "reset events sent (the resume point was outside the stored window).")
TAILER_RESTARTS = Counter("sse_tailer_restarts", "Times a worker's tailer lost its store feed and started again.")
STORE_ERRORS = Counter("sse_store_errors", "Store operations that failed as unavailable.", ["operation"])
STORE_QUERIES = Counter(
    "sse_store_queries", "Reads of the store outside publishing and tailing (joins are served from the window).",
    ["operation"],
)
WINDOW_MESSAGES = Gauge(
    "sse_window_messages", "Messages held by the workers' in-memory windows (each worker holds its own copy).",
    multiprocess_mode="livesum",
)
WINDOW_BYTES = Gauge(
    "sse_window_bytes", "Encoded event bytes held by the workers' in-memory windows.",
    multiprocess_mode="livesum",
)
PUBLISH_LATENCY = Histogram(
    "sse_publish_latency_seconds", "Time to store one message (POST /messages, successful or not).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
HOOK_ANSWERS = Counter(
    "sse_subscribe_hook_answers", "Reads decided by the subscribe hook (AUTH_SUBSCRIBE_URL), by outcome.", ["outcome"],
)
HOOK_SECONDS = Histogram(
    "sse_subscribe_hook_seconds", "Time of one call to the subscribe hook, answered or not.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# Reasons for STREAMS_DROPPED, one word each.
DROP_SLOW = "slow"  # its bounded queue overflowed
DROP_STALLED = "stalled"  # a write made no progress, or its backlog was not taken, in STREAM_WRITE_TIMEOUT_SECONDS
DROP_LIMIT = "limit"  # refused: the worker holds MAX_STREAMS_PER_WORKER streams
DROP_CLIENT_LIMIT = "client_limit"  # refused: the client holds MAX_STREAMS_PER_CLIENT streams on this node
DROP_REASONS = (DROP_SLOW, DROP_STALLED, DROP_LIMIT, DROP_CLIENT_LIMIT)

# Outcomes counted by HOOK_ANSWERS: a 2xx that allows; a 401/403; no usable answer (503: timeout, connection,
# 5xx, garbage); no free call slot within the timeout (503); an answer served from the cache.
HOOK_OUTCOMES = ("allowed", "refused", "failed", "busy", "cached")

# Operations counted by STORE_ERRORS (the callers pass these words).
STORE_OPERATIONS = ("publish", "history", "stream", "tailer", "ready", "presence")
# Reads counted by STORE_QUERIES: a join asking whether an id it does not hold
# is in the store; a history page read from the store; a window warmed from it;
# the other workers' presence read (at most twice a second per worker); a
# join with ``backlog`` asking for the store's newest id.
QUERY_RESUME, QUERY_HISTORY, QUERY_WARM, QUERY_PRESENCE = "resume", "history", "warm", "presence"
QUERY_BACKLOG = "backlog"

ALL_METRICS = (
    OPEN_STREAMS, SUBSCRIPTIONS, MESSAGES_PUBLISHED, EVENTS_DELIVERED, STREAMS_DROPPED,
    RESETS_SENT, TAILER_RESTARTS, STORE_ERRORS, STORE_QUERIES, WINDOW_MESSAGES, WINDOW_BYTES, PUBLISH_LATENCY,
    HOOK_ANSWERS, HOOK_SECONDS,
)

for _reason in DROP_REASONS:
    STREAMS_DROPPED.labels(_reason)
for _outcome in HOOK_OUTCOMES:
    HOOK_ANSWERS.labels(_outcome)
for _operation in STORE_OPERATIONS:
    STORE_ERRORS.labels(_operation)
for _operation in (QUERY_RESUME, QUERY_HISTORY, QUERY_WARM, QUERY_PRESENCE, QUERY_BACKLOG):
    STORE_QUERIES.labels(_operation)


def write_zeros_for_this_worker() -> None:
    """Write every metric of this process to its own multiprocess files, zero if untouched."""
    # Reading a value after a fork makes prometheus_client move all of this
    # process's values to files named after the new pid; collect() reads them all.
    for metric in ALL_METRICS:
        metric.collect()


def exposition() -> tuple[bytes, str]:
    """Return every process's metrics in the Prometheus text format, and its content type."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
