"""Endpoints for operators: liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from ..operations.metrics import STORE_ERRORS, exposition
from ..services import services
from ..stores.base import StoreUnavailable
from .errors import unavailable

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Answer while the process can serve requests at all (no store access)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Answer 200 when the store can take writes, 503 otherwise.

    The store's own error stays in the log: it can name hosts, paths and
    users, and whoever asks here is told only what to do (come back).
    """
    svc = services()
    try:
        svc.store.ping()
    except StoreUnavailable as exc:
        STORE_ERRORS.labels("ready").inc()
        log.warning("not ready: %s", exc)
        raise unavailable("the message store cannot take writes right now") from None
    return jsonify({"status": "ready", "store": svc.settings.store_kind})


@bp.get("/metrics")
def metrics() -> Response:
    """Return every worker's metrics in the Prometheus text format."""
    body, content_type = exposition()
    return Response(body, content_type=content_type)
