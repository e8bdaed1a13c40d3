"""Endpoints for operators: liveness, readiness and Prometheus metrics."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..operations.metrics import STORE_ERRORS, exposition
from ..services import services
from ..stores.base import StoreUnavailable
from .errors import ApiError

bp = Blueprint("ops", __name__)

READY_RETRY_AFTER = "2"


@bp.get("/healthz")
def healthz() -> Response:
    """Answer while the process can serve requests at all (no store access)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Answer 200 when the store answers, 503 otherwise."""
    svc = services()
    try:
        svc.store.ping()
    except StoreUnavailable as exc:
        STORE_ERRORS.labels("ready").inc()
        raise ApiError(503, f"the message store is not reachable: {exc}",
                       headers={"Retry-After": READY_RETRY_AFTER}) from None
    return jsonify({"status": "ready", "store": svc.settings.store_kind})


@bp.get("/metrics")
def metrics() -> Response:
    """Return every worker's metrics in the Prometheus text format."""
    body, content_type = exposition()
    return Response(body, content_type=content_type)
