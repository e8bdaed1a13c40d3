"""Per-client rate limit on publishing (PUBLISH_RATE), with Flask-Limiter.

Counters are shared by every gunicorn worker: with MongoDB they live in the
same database (``limits``' own MongoDB storage); with the embedded store they
live in a SQLite file beside it (``app.stores.limits_sqlite``). The client is its
address, which is the forwarded one only when TRUSTED_PROXIES says so, and an
IPv6 address counts as its /64 (``app/edge/clients.py``).

Every publish attempt counts, accepted or not, so a client cannot hammer the
endpoint with bad bodies or guessed tokens for free. If the counter storage
fails, publishing goes on unlimited and the error is logged (fail open):
the message store, not the limiter, decides whether a publish can succeed.
"""
from __future__ import annotations

import math
import os
import time

from flask import Flask, Response
from flask_limiter import Limiter, RateLimitExceeded

from ..config import Settings
from ..stores import limits_sqlite
from .access import PUBLISH_ENDPOINTS
from .clients import remote_address_key
from .errors import error_response


def limiter_storage(settings: Settings) -> tuple[str, dict[str, str]]:
    """Return the storage URI and options shared by all workers for this deployment."""
    if settings.mongodb_uri:
        return settings.mongodb_uri, {"database_name": settings.mongodb_database,
                                      "counter_collection_name": "rate_limit_counters",
                                      "window_collection_name": "rate_limit_windows"}
    base, _ = os.path.splitext(settings.sqlite_path)
    return limits_sqlite.storage_uri(base + "-ratelimit.sqlite3"), {}


def init_rate_limit(app: Flask, settings: Settings) -> Limiter | None:
    """Limit publishing per client when PUBLISH_RATE is set."""
    if not settings.publish_rate:
        return None
    uri, options = limiter_storage(settings)
    limiter = Limiter(
        remote_address_key, app=app, storage_uri=uri, storage_options=options,
        strategy="fixed-window", swallow_errors=True, headers_enabled=False,
    )
    # Wrap the view as registered (maybe already token-guarded): the limit counts first.
    for endpoint in PUBLISH_ENDPOINTS:
        app.view_functions[endpoint] = limiter.limit(settings.publish_rate, methods=["POST"])(
            app.view_functions[endpoint])

    @app.errorhandler(RateLimitExceeded)
    def _too_many(error: RateLimitExceeded) -> Response:
        window = limiter.current_limit
        wait = math.ceil(window.reset_at - time.time()) if window else 1
        return error_response(429, f"too many publishes from this client: at most {error.description}",
                              headers={"Retry-After": str(max(wait, 1))})

    return limiter
