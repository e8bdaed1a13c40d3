"""One error shape for every 4xx/5xx: ``{"code", "status", "message", "errors"}``."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

log = logging.getLogger(__name__)

# What every 503 asks a client to wait before it tries again: what they
# answer (a store outage, a full worker, a window still warming) passes in
# seconds, and a client told to come back sooner only adds to the load.
RETRY_AFTER_SECONDS = 2
STORE_UNAVAILABLE = "the message store is unavailable, try again shortly"


class ApiError(Exception):
    """An error we answer on purpose, with a status and details for the client."""

    def __init__(self, code: int, message: str, errors: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.errors = errors or {}
        self.headers = headers or {}


def unavailable(message: str, errors: dict[str, Any] | None = None) -> ApiError:
    """Return the 503 for a refusal that should pass shortly, with ``Retry-After``."""
    return ApiError(503, message, errors, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def error_response(code: int, message: str, errors: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """Build the JSON error response every handler uses."""
    response = jsonify(
        {"code": code, "status": HTTP_STATUS_CODES.get(code, "Error"), "message": message, "errors": errors or {}}
    )
    response.status_code = code
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every error, ours or werkzeug's, in the one JSON shape."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error.code, error.message, error.errors, error.headers)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        headers = dict(error.get_headers()) if error.code == 405 else {}
        headers.pop("Content-Type", None)
        return error_response(error.code or 500, error.description or error.name, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # Never leak a traceback or internals to the client; the log has them.
        log.exception("unhandled error")
        return error_response(500, InternalServerError.description)
