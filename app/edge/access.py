"""Who may call us: the client address behind proxies, cross-origin access, the publish token.

* Client address: ``X-Forwarded-For`` is believed only for the number of
  proxy hops TRUSTED_PROXIES names (werkzeug's ProxyFix); with 0, the default,
  it is ignored, so a client cannot pick its own rate-limit key. The first
  request of a worker that carries a proxy's header while it is 0 logs one
  warning: behind a proxy every client would then be the proxy's address,
  one rate-limit bucket and one MAX_STREAMS_PER_CLIENT for everybody.
* CORS (flask-cors): only origins listed in CORS_ORIGINS get
  ``Access-Control-Allow-Origin``, always their own exact origin, never ``*``
  and never an unlisted origin reflected back. Each origin is handed over as
  an escaped, anchored pattern, because flask-cors reads strings with regex
  characters in them as unanchored regular expressions.
* PUBLISH_TOKEN: when set, ``POST /messages`` needs ``Authorization: Bearer
  <token>``, compared in constant time. With private rooms on
  (``app.edge.authorization``) a JWT with publish rights will do as well.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from typing import Any

from flask import Flask, request
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from ..config import Settings
from .errors import ApiError

log = logging.getLogger(__name__)

# The views that publish; the token guards these and nothing else.
PUBLISH_ENDPOINTS = frozenset({"messages.publish"})
CORS_METHODS = ["GET", "HEAD", "POST", "OPTIONS"]
CORS_ALLOWED_HEADERS = ["Content-Type", "Authorization", "Last-Event-ID", "Idempotency-Key"]
CORS_EXPOSED_HEADERS = ["Retry-After", "Idempotent-Replayed"]
CORS_PREFLIGHT_MAX_AGE = 600
# What a proxy in front adds to a request; one of them with TRUSTED_PROXIES=0 means the setting is wrong.
PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def exact_origin_pattern(origin: str) -> re.Pattern[str]:
    """Return a pattern that matches this one origin and nothing longer."""
    return re.compile(re.escape(origin) + r"\Z", re.IGNORECASE)


def init_cors(app: Flask, origins: tuple[str, ...]) -> None:
    """Allow the listed origins (with credentials) on the API; nothing when none are listed."""
    if not origins:
        return  # same-origin only: browsers block every cross-origin read
    CORS(
        app,
        resources={r"/messages.*": {}, r"/openapi\.json": {}},
        origins=[exact_origin_pattern(origin) for origin in origins],
        supports_credentials=True,
        methods=CORS_METHODS,
        allow_headers=CORS_ALLOWED_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
        max_age=CORS_PREFLIGHT_MAX_AGE,
        vary_header=True,
    )


def bearer_token_matches(header: str | None, token: str) -> bool:
    """Tell whether an Authorization header carries this bearer token (constant time)."""
    scheme, _, credentials = (header or "").partition(" ")
    candidate = credentials.strip() if scheme.lower() == "bearer" else ""
    # compare_digest takes as long for a wrong first byte as for a wrong last
    # one; comparing digests also hides the token's length.
    return hmac.compare_digest(_digest(candidate), _digest(token))


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def require_publish_token(token: str, view: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a view so that it answers 401 unless the request carries the bearer token."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization")
        if not bearer_token_matches(header, token):
            challenge = 'Bearer realm="publish"' + (', error="invalid_token"' if header else "")
            raise ApiError(401, "publishing needs a valid bearer token (Authorization: Bearer <token>)",
                           headers={"WWW-Authenticate": challenge})
        return view(*args, **kwargs)

    return guarded


def init_publish_token(app: Flask, token: str | None) -> None:
    """Require the bearer token on the publish endpoints when one is configured."""
    if token:
        for endpoint in PUBLISH_ENDPOINTS:
            app.view_functions[endpoint] = require_publish_token(token, app.view_functions[endpoint])


def warn_once_about_an_untrusted_proxy(app: Flask) -> None:
    """Log one warning, on the first request that shows it, when requests come through a proxy we do not trust."""
    warned = False

    @app.before_request
    def _look_for_a_proxy() -> None:
        nonlocal warned
        if warned:
            return
        # The WSGI names, looked up in the environ: werkzeug's headers object pays for
        # an exception per header that is absent, and this runs on every request.
        header = next((name for name in PROXY_HEADERS if _environ_key(name) in request.environ), None)
        if header is not None:
            warned = True
            # The header's value is the client's to choose: only its name and the socket's peer are logged.
            log.warning("a request from %s carries %s but TRUSTED_PROXIES=0: behind a proxy every client "
                        "is the proxy's address, so all share one publish rate limit and one "
                        "MAX_STREAMS_PER_CLIENT; set TRUSTED_PROXIES to the number of proxies in front "
                        "(1 behind deploy/nginx.conf)", request.remote_addr, header)


def init_access(app: Flask, settings: Settings) -> None:
    """Wire client addresses, CORS and the publish token from the settings."""
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)
    else:
        warn_once_about_an_untrusted_proxy(app)
    init_cors(app, settings.cors_origins)
    if not settings.authorization:  # otherwise app.edge.authorization checks it, beside the JWTs
        init_publish_token(app, settings.publish_token)
