"""Private rooms: who may read and publish which rooms, from a JWT.

Off unless AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY (RS256 or ES256)
is set; then every room is private except those PUBLIC_ROOMS names, and
publishing needs a token too. A token's claim says which rooms it opens,
as shell-style globs matched with ``fnmatch.fnmatchcase``::

    {"rooms": {"subscribe": ["team-*"], "publish": ["team-red"]}, "exp": 1767225600}

* Verified by PyJWT with the one algorithm the configured key implies, so a
  token cannot pick its own: ``none``, HS256 signed with the public key, or
  any other algorithm is refused. ``exp`` is required (AUTH_JWT_REQUIRE_EXP)
  and ``exp`` and ``nbf`` are honoured (no leeway). ``aud`` and ``iss`` must
  match AUTH_JWT_AUDIENCE and AUTH_JWT_ISSUER when those are set; without
  AUTH_JWT_AUDIENCE a token naming an audience is refused (it was meant for
  someone else). A token may live at most AUTH_JWT_MAX_LIFETIME_SECONDS:
  ``exp - iat``, or ``exp - now`` without ``iat``.
* Where the token is taken from, first found wins and is the only one read
  (an invalid header token is not rescued by a valid cookie): the
  ``Authorization: Bearer`` header, the ``__Host-sse_token`` cookie (what a
  same-site EventSource sends), the old ``sse_token`` cookie (read for one
  release, see LEGACY_TOKEN_COOKIE), the ``access_token`` query parameter
  (EventSource cannot set headers).
* Reading rooms that are all public needs nothing, and a token sent along
  is not looked at. Otherwise: no token or a bad one is 401 with a Bearer
  challenge; a good one that does not open every requested room (public
  ones aside) is 403. A stream ends when its token expires.
* Publishing needs a token whose ``publish`` globs cover the room, or
  PUBLISH_TOKEN in the header (for servers). Taking it from the cookie is
  safe from cross-site forgery because publishing takes JSON only: a
  browser preflights that, and CORS answers only CORS_ORIGINS.

Tokens are never logged and never echoed: error messages are ours, not
PyJWT's.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Flask, current_app, g, request

from ..config import Settings
from .access import PUBLISH_ENDPOINTS, bearer_token_matches
from .errors import ApiError
from .subscribe_hook import SubscribeHook

log = logging.getLogger(__name__)

# __Host-: the browser takes it only with Secure and Path=/ and no Domain, so
# no other host of the site (a sibling subdomain) can set or overwrite it.
TOKEN_COOKIE = "__Host-sse_token"
# The name before issue 18, still read (after TOKEN_COOKIE) for one release;
# remove it in the next one (docs/security.md says so).
LEGACY_TOKEN_COOKIE = "sse_token"
TOKEN_QUERY_PARAMETER = "access_token"
REALM = "sse-rooms"
# Far above any real token; keeps garbage from reaching the decoder.
MAX_TOKEN_CHARS = 4096
MAX_PATTERNS = 256
_TIMES = ("exp", "nbf", "iat")  # NumericDate claims: JSON numbers (RFC 7519, section 2)

# PyJWT's errors, in our words (its own can quote pieces of the token).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAlgorithmError, "the token is not signed with the algorithm this server accepts"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidIssuerError, "the token's issuer (iss) is not the one this server accepts"),
    (jwt.InvalidIssuedAtError, "the token's issued-at time (iat) is not a whole number of seconds"),
    (jwt.DecodeError, "the token is malformed"),
)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one verified token, or the subscribe hook's answer, allows, and until when (Unix time, or None)."""

    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    expires_at: float | None = None
    # The token's "sub", or the hook's: the stream's identity (presence), and the client that per-client
    # limits count (app/edge/clients.py).
    subject: str | None = None

    def may_subscribe(self, room: str) -> bool:
        return any(fnmatchcase(room, pattern) for pattern in self.subscribe)

    def may_publish(self, room: str) -> bool:
        return any(fnmatchcase(room, pattern) for pattern in self.publish)


EVERYTHING = Grant(subscribe=("*",), publish=("*",))


def refuse(message: str, *, token_sent: bool) -> ApiError:
    challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if token_sent else "")
    return ApiError(401, message, headers={"WWW-Authenticate": challenge})


def forbid(message: str) -> ApiError:
    return ApiError(403, message, headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'})


def _is_text(value: str) -> bool:
    """Say whether ``value`` encodes as UTF-8: no lone surrogate, which a JSON ``\\uD800`` escape can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _patterns(rooms: dict[str, Any], name: str) -> tuple[str, ...]:
    patterns = rooms.get(name, [])
    if (not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS
            or not all(isinstance(pattern, str) and pattern for pattern in patterns)):
        raise ValueError(name)
    return tuple(patterns)


class Authorization:
    """Checks tokens against one key with one algorithm; the views ask it about rooms."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.private_rooms  # a JWT key, the subscribe hook, or both
        self.tokens = settings.authorization  # a JWT key: tokens are read
        self.hook = SubscribeHook(settings) if settings.auth_subscribe_url else None
        self.algorithm = settings.auth_jwt_algorithm
        self.public_rooms = settings.public_rooms
        self.publish_token = settings.publish_token
        self.audience = settings.auth_jwt_audience
        self.issuer = settings.auth_jwt_issuer
        self.max_lifetime = settings.auth_jwt_max_lifetime_seconds
        self._required = [claim for claim, needed in (("exp", settings.auth_jwt_require_exp),
                                                       ("aud", bool(self.audience)),
                                                       ("iss", bool(self.issuer))) if needed]
        self._key: Any = None
        if settings.auth_jwt_secret:
            self._key = settings.auth_jwt_secret.encode("utf-8")
        elif settings.auth_jwt_public_key:
            self._key = load_pem_public_key(settings.auth_jwt_public_key.encode("utf-8"))

    def is_public(self, room: str) -> bool:
        return any(fnmatchcase(room, pattern) for pattern in self.public_rooms)

    def verify(self, token: str) -> Grant:
        """Return what a token allows, or raise the 401 it deserves."""
        if len(token) > MAX_TOKEN_CHARS:
            raise refuse(f"the token is longer than {MAX_TOKEN_CHARS} characters", token_sent=True)
        try:
            claims = jwt.decode(token, self._key, algorithms=[self.algorithm], audience=self.audience,
                                issuer=self.issuer, options={"require": self._required})
        except jwt.MissingRequiredClaimError as exc:
            raise refuse(f"the token has no {exc.claim!r} claim, which this server requires",
                          token_sent=True) from None
        except jwt.InvalidAudienceError:
            raise refuse("the token names an audience, which this server does not accept" if self.audience is None
                          else "the token's audience (aud) is not this server", token_sent=True) from None
        except jwt.PyJWTError as exc:  # InvalidKeyError too: a secret that looks like a PEM
            reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "the token is invalid")
            raise refuse(reason, token_sent=True) from None
        for claim in _TIMES:
            # PyJWT reads "1767225600" (a string) as a time too; RFC 7519 says a number.
            if claim in claims and (isinstance(claims[claim], bool) or not isinstance(claims[claim], int | float)):
                raise refuse(f"the token's {claim!r} claim is not a number of seconds", token_sent=True)
        self._check_lifetime(claims)
        rooms = claims.get("rooms", {})
        try:
            if not isinstance(rooms, dict):
                raise ValueError("rooms")
            subscribe, publish = _patterns(rooms, "subscribe"), _patterns(rooms, "publish")
        except ValueError:
            raise refuse('the token\'s "rooms" claim must be {"subscribe": [patterns], "publish": [patterns]}',
                          token_sent=True) from None
        expires_at = int(claims["exp"]) if "exp" in claims else None  # as PyJWT read it
        subject = claims.get("sub")  # PyJWT checks it is a string when present
        if subject is not None and not _is_text(subject):
            # JSON lets "\ud800" through; as an identity it failed every UTF-8 encoding downstream (a worker's
            # presence loop died on it: its entry expired, GET /rooms/R/subscribers answered 500).
            raise refuse("the token's 'sub' claim is not valid Unicode text (a lone surrogate)", token_sent=True)
        return Grant(subscribe, publish, expires_at, subject or None)

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """Refuse a token meant to live longer than AUTH_JWT_MAX_LIFETIME_SECONDS.

        A token without ``exp`` gets here only with AUTH_JWT_REQUIRE_EXP off:
        the operator chose tokens that never expire, and the bound leaves them be.
        """
        if not self.max_lifetime or "exp" not in claims:
            return
        expires_at = int(claims["exp"])  # both already read as whole numbers by PyJWT
        start = int(claims["iat"]) if "iat" in claims else int(time.time())
        if expires_at - start > self.max_lifetime:
            raise refuse(f"the token lives longer than this server accepts (at most {self.max_lifetime} seconds "
                          f"from iat, or from now without iat)", token_sent=True)

    def read_grant(self, rooms: tuple[str, ...]) -> Grant:
        """Return the grant to read these rooms with, or raise 401/403 (EVERYTHING when off or all public)."""
        private = [room for room in rooms if not self.is_public(room)] if self.enabled else []
        if not private:
            return EVERYTHING
        token = token_from_request() if self.tokens else None
        if token is not None:
            # A token decides alone, valid or not: see "beside JWTs" in docs/security.md#the-subscribe-hook.
            grant, decided_by = self.verify(token), "the token"
        elif self.hook is not None:
            grant, decided_by = self._hook_grant(tuple(private)), "the application's subscribe hook"
        else:
            raise refuse(f"reading room {private[0]!r} needs a token: Authorization: Bearer <token>, "
                         f"the {TOKEN_COOKIE} cookie, or the {TOKEN_QUERY_PARAMETER} query parameter",
                         token_sent=False)
        refused = [room for room in private if not grant.may_subscribe(room)]
        if refused:
            raise forbid(f"{decided_by} does not allow reading room {refused[0]!r}"
                         + (f" (nor {len(refused) - 1} more)" if len(refused) > 1 else ""))
        return grant

    def _hook_grant(self, private: tuple[str, ...]) -> Grant:
        """Ask the application (AUTH_SUBSCRIBE_URL) about the request's private rooms; raise its 401/403, or 503."""
        assert self.hook is not None
        allowed = self.hook.ask(private, request.method, request.path, request.headers)
        return Grant(subscribe=allowed.rooms, expires_at=allowed.expires_at, subject=allowed.subject)

    def publish_grant(self) -> Grant:
        """Return what the request's credentials may publish to, or raise 401."""
        if self.publish_token and bearer_token_matches(request.headers.get("Authorization"), self.publish_token):
            return EVERYTHING
        token = token_from_request()
        if token is None:
            raise refuse("publishing needs a token: Authorization: Bearer <token>", token_sent=False)
        return self.verify(token)


def token_from_request() -> str | None:
    """Return the request's token: the Bearer header, else a cookie (the new name first), else the query parameter."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        # Another scheme (Basic ...) is no token of ours: answered as an invalid one.
        return credentials.strip() if scheme.lower() == "bearer" else ""
    for name in (TOKEN_COOKIE, LEGACY_TOKEN_COOKIE):
        cookie = request.cookies.get(name)
        if cookie is not None:
            return cookie
    return request.args.get(TOKEN_QUERY_PARAMETER)


def authorization() -> Authorization:
    return current_app.extensions["authorization"]


def authorize_reading(rooms: tuple[str, ...]) -> float | None:
    """Raise 401/403 unless the request may read every one of these rooms; return when that ends (Unix time)."""
    return authorization().read_grant(rooms).expires_at


def reading_grant(rooms: tuple[str, ...]) -> Grant:
    """Raise 401/403 unless the request may read every one of these rooms; return the grant it reads them with."""
    return authorization().read_grant(rooms)


def public_rooms(rooms: tuple[str, ...]) -> frozenset[str]:
    """Return the rooms among these that anyone may read: a stream is anonymous there, whatever its token says.

    A token is not looked at for them, so a stream of them alone has no
    identity; one that also follows a private room must not carry its ``sub``
    into them (``GET /rooms/lobby/subscribers`` and the lobby's joins are for anyone to read).
    """
    auth = authorization()
    return frozenset(room for room in rooms if auth.enabled and auth.is_public(room))


def authorize_publishing(room: str) -> None:
    """Raise 403 unless the request's credentials (checked before the body was read) may publish to this room."""
    grant: Grant | None = g.get("publish_grant")
    if grant is not None and not grant.may_publish(room):
        raise forbid(f"the token does not allow publishing to room {room!r}")


def require_publisher(auth: Authorization, view: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a publishing view: 401 before its body is read, unless the request carries credentials."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        g.publish_grant = auth.publish_grant()
        return view(*args, **kwargs)

    return guarded


def init_authorization(app: Flask, settings: Settings) -> None:
    """Keep the checker on the app; when on, guard publishing with it (it takes PUBLISH_TOKEN's place)."""
    auth = app.extensions["authorization"] = Authorization(settings)
    if auth.hook is not None and not auth.tokens and not settings.publish_token:
        # Allowed (a server on a private network may publish openly), but rarely meant: reads are private.
        log.warning("AUTH_SUBSCRIBE_URL is set without a JWT key or PUBLISH_TOKEN: reading private rooms asks the "
                    "hook, but anyone who reaches the server may publish to any room (set PUBLISH_TOKEN)")
    if auth.tokens:  # the hook decides reads only: without a JWT key publishing is PUBLISH_TOKEN's (access.py)
        for endpoint in PUBLISH_ENDPOINTS:
            app.view_functions[endpoint] = require_publisher(auth, app.view_functions[endpoint])
