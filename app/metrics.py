"""Prometheus metrics of this process, and their exposition for ``GET /metrics``.

Under gunicorn every worker is its own process, so each one writes its values
to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess
mode) and a scrape, whichever worker answers it, adds them up. That variable
must be set before prometheus_client is first imported in the worker, which
is why gunicorn.conf.py sets it in the master, cleans the directory on start
and marks a dead worker's live gauges gone (``child_exit``). Without it (tests,
``flask run``) the values live in this process's default registry.

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
PUBLISH_LATENCY = Histogram(
    "sse_publish_latency_seconds", "Time to store one message (POST /messages, successful or not).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# Reasons for STREAMS_DROPPED, one word each.
DROP_SLOW = "slow"  # its bounded queue overflowed
DROP_STALLED = "stalled"  # a write to it made no progress for STREAM_STALL_SECONDS
DROP_LIMIT = "limit"  # refused: the worker holds MAX_STREAMS_PER_WORKER streams


def exposition() -> tuple[bytes, str]:
    """Return every process's metrics in the Prometheus text format, and its content type."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
