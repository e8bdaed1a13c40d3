"""One log line per request when it ends, with its duration.

Streams are the exception: their response is returned long before they end,
so ``app.delivery.streaming`` writes their line (duration, events sent, why it ended).
"""
from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

log = logging.getLogger(__name__)


def register_request_log(app: Flask) -> None:
    """Log method, path, status and duration of every non-streamed response."""

    @app.before_request
    def _start_clock() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        if response.mimetype == "text/event-stream":
            return response
        started = g.get("request_started")
        elapsed_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
        log.info("%s %s %d %.1fms", request.method, request.path, response.status_code, elapsed_ms)
        return response
