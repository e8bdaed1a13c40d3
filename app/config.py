"""Settings from the environment, read in one place and checked at start-up.

A bad value stops the process with a sentence that names the variable, rather
than surfacing later as a confusing failure under load.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, urlsplit


class ConfigError(ValueError):
    """An environment variable has a value we cannot run with."""


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told from outside, with its defaults."""

    host: str = "127.0.0.1"
    port: int = 8080
    web_concurrency: int = 2
    mongodb_uri: str | None = None
    mongodb_database: str = "sse"
    sqlite_path: str = "var/messages.sqlite3"
    capped_size_bytes: int = 5_000_000
    capped_max_messages: int = 10_000
    heartbeat_seconds: float = 15.0
    retry_ms: int = 3000
    # Each stream's retry: is drawn from RETRY_MS x (1 +- this): the clients of a
    # worker that died come back spread out, not in one wave (0: all exactly RETRY_MS).
    retry_jitter: float = 0.25
    max_text_chars: int = 4096
    max_body_bytes: int = 0  # 0: derived from max_text_chars (see __post_init__)
    stream_queue_limit: int = 1000
    max_streams_per_worker: int = 10_000
    stream_write_timeout_seconds: float = 30.0
    sqlite_poll_ms: int = 10
    log_level: str = "info"
    # Memory and bytes per stream and per history page (docs/operations.md#memory-per-stream).
    stream_chunk_bytes: int = 16_384
    stream_backlog_max_bytes: int = 8 * 2**20
    history_max_bytes: int = 2**20
    stream_send_buffer_bytes: int = 64 * 1024  # 0: the kernel decides
    # Access (see docs/security.md): empty means off.
    publish_token: str | None = None
    publish_rate: str | None = None
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: int = 0
    # Private rooms (docs/security.md): either key turns authorization on.
    auth_jwt_secret: str | None = None
    auth_jwt_public_key: str | None = None  # PEM
    public_rooms: tuple[str, ...] = ()
    # Streams per client on a node (issue 18, app/delivery/client_slots.py): see docs/security.md.
    max_streams_per_client: int = 2000
    client_slots_path: str | None = None  # set by gunicorn.conf.py for each master; None: this process alone
    # Presence (docs/scaling-out.md#presence-across-nodes): the rooms one worker's
    # entry names (those with someone it names already, then with someone to name, then its busiest); the rest
    # are counted, not named.
    presence_max_rooms: int = 1000
    # Issue 16: the (room, identity) pairs one worker's entry names; the rest are counted, not named.
    presence_max_identities: int = 1000
    # Issue 16: how long an identity must be gone before its leave is told (app/delivery/announcer.py).
    presence_leave_grace_seconds: float = 1.5
    # Token claims (issue 18, docs/security.md#token-claims): checked when private rooms are on.
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None
    auth_jwt_require_exp: bool = True
    auth_jwt_max_lifetime_seconds: int = 86_400  # 0: no bound
    # Message expiry (issue 15, app/delivery/expiry.py): None, never.
    message_ttl_seconds: float | None = None
    # The subscribe hook (issue 16, app/edge/subscribe_hook.py, docs/security.md#the-subscribe-hook):
    # the application decides who reads private rooms. None: off.
    auth_subscribe_url: str | None = None
    auth_subscribe_timeout_ms: int = 2000
    auth_subscribe_cache_seconds: float = 0.0  # 0: every stream open asks
    auth_subscribe_max_concurrent: int = 32  # hook calls in flight per worker; the rest wait (bounded)

    def __post_init__(self) -> None:
        if not self.max_body_bytes:
            # Worst case JSON for the text is 6 bytes a character (\uXXXX),
            # plus room, event and punctuation.
            object.__setattr__(self, "max_body_bytes", 6 * self.max_text_chars + 1024)
        if self.auth_jwt_secret and self.auth_jwt_public_key:
            raise ConfigError("AUTH_JWT_SECRET and AUTH_JWT_PUBLIC_KEY are both set: set one of them "
                              "(a shared secret for HS256, or a public key for RS256/ES256)")
        if self.public_rooms and not self.private_rooms:
            # Without a key every room is public already; whoever set this
            # believes the other rooms are private, and they would not be.
            raise ConfigError("PUBLIC_ROOMS is set but neither AUTH_JWT_SECRET nor AUTH_JWT_PUBLIC_KEY is "
                              "(nor AUTH_SUBSCRIBE_URL): without one of them every room is public")
        if not self.auth_subscribe_url:
            for name, value, default in (
                    ("AUTH_SUBSCRIBE_TIMEOUT_MS", self.auth_subscribe_timeout_ms, 2000),
                    ("AUTH_SUBSCRIBE_CACHE_SECONDS", self.auth_subscribe_cache_seconds, 0.0),
                    ("AUTH_SUBSCRIBE_MAX_CONCURRENT", self.auth_subscribe_max_concurrent, 32)):
                if value != default:
                    # Tuned to be used, and nothing would use it.
                    raise ConfigError(f"{name} is set but AUTH_SUBSCRIBE_URL is not: without it there is no hook")
        for name, value in (("AUTH_JWT_AUDIENCE", self.auth_jwt_audience), ("AUTH_JWT_ISSUER", self.auth_jwt_issuer)):
            if value and not self.authorization:
                # Set to be checked, and nothing would check it.
                raise ConfigError(f"{name} is set but neither AUTH_JWT_SECRET nor AUTH_JWT_PUBLIC_KEY is: "
                                  "without one of them no token is read")

    @property
    def authorization(self) -> bool:
        """Tell whether reading private rooms and publishing need a token (a JWT key is set)."""
        return bool(self.auth_jwt_secret or self.auth_jwt_public_key)

    @property
    def private_rooms(self) -> bool:
        """Tell whether rooms outside PUBLIC_ROOMS are private: a JWT key or the subscribe hook is set."""
        return self.authorization or bool(self.auth_subscribe_url)

    @property
    def auth_jwt_algorithm(self) -> str | None:
        """Return the one JWT algorithm tokens must use: pinned by the kind of key configured."""
        if self.auth_jwt_secret:
            return "HS256"
        if self.auth_jwt_public_key:
            return public_key_algorithm(self.auth_jwt_public_key)
        return None

    @property
    def store_kind(self) -> str:
        return "mongodb" if self.mongodb_uri else "sqlite"

    def public_summary(self) -> dict[str, Any]:
        """Return the effective settings for the start-up log, without secrets."""
        summary = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.mongodb_uri:
            summary["mongodb_uri"] = _redact_uri(self.mongodb_uri)
        if self.publish_token:
            summary["publish_token"] = "***"
        if self.auth_jwt_secret:
            summary["auth_jwt_secret"] = "***"
        if self.auth_jwt_public_key:
            summary["auth_jwt_public_key"] = f"{self.auth_jwt_algorithm} public key"
        if self.auth_subscribe_url:
            summary["auth_subscribe_url"] = _redact_hook_url(self.auth_subscribe_url)
        return summary

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (``os.environ`` by default)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, parse in _PARSERS.items():
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name.lower()] = parse(raw.strip())
            except ValueError as exc:
                shown = "'***'" if name in _NOT_ECHOED else repr(_SHOWN_AS.get(name, str)(raw))
                raise ConfigError(f"{name}={shown} is not valid: {exc}") from None
        return cls(**values)


def _redact_uri(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def _redact_hook_url(url: str) -> str:
    # A query string may carry the application's own key for the hook: the log shows where, not that.
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.partition("?")[0]
    return parts._replace(query="***" if parts.query else "").geturl()


def _hook_url(raw: str) -> str:
    """Check AUTH_SUBSCRIBE_URL: an absolute http(s) URL with a host, that the hook client can call as it is."""
    try:
        parts = urlsplit(raw)
        port = parts.port  # ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        raise ValueError("is not a URL like http://127.0.0.1:5000/sse-auth") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://, e.g. http://127.0.0.1:5000/sse-auth")
    if not parts.hostname:
        raise ValueError("has no host, e.g. http://127.0.0.1:5000/sse-auth")
    if port == 0:
        raise ValueError("names port 0")
    if parts.username is not None or parts.password is not None:
        # urllib3 would not send them: a user:password@ that silently does nothing is refused.
        raise ValueError("carries user:password@, which the hook client does not send: authenticate the server "
                         "to the hook another way (a network it alone reaches, a key in the path)")
    if parts.fragment or "#" in raw:
        raise ValueError("has a #fragment, which is never sent")
    if re.search(r"[\s\x00-\x1f\x7f]", raw):
        raise ValueError("holds spaces or control characters")
    return raw


def _seconds_from_zero(high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")  # not a number: the message below says what is expected
        if not 0 <= value <= high:
            raise ValueError(f"must be a number of seconds from 0 (off) to {high:g}")
        return value
    return parse


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def _claim_value(raw: str) -> str:
    # Compared with the token's claim as it is: visible characters, no spaces around.
    if not re.fullmatch(r"[\x21-\x7e]([\x20-\x7e]{0,254}[\x21-\x7e])?", raw):
        raise ValueError("must be 1 to 256 visible ASCII characters, e.g. https://sse.example.com")
    return raw


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"must be a whole number between {low:,} and {high:,}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low:,} and {high:,}")
        return value
    return parse


def _positive_float(high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")  # not a number: the message below says what is expected
        if not 0 < value <= high:
            raise ValueError(f"must be a number of seconds above 0 and at most {high:g}")
        return value
    return parse


# -- MongoDB over TLS (issue 18) ---------------------------------------------------------
# The files a URI names for TLS (PyMongo's option names, matched as it does: any case).
_TLS_FILE_OPTIONS = ("tlscafile", "tlscertificatekeyfile", "tlscrlfile")


def _mongodb_uri(raw: str) -> str:
    if not raw.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError("must start with mongodb:// or mongodb+srv://")
    # PyMongo opens these when each worker creates its client, and a missing one
    # failed every worker with a traceback; here it is one line, before any fork.
    # (PyMongo itself is not imported here: the master must not import ssl's users.)
    for key, value in parse_qsl(urlsplit(raw).query):
        if key.lower() in _TLS_FILE_OPTIONS and not os.access(value, os.R_OK):
            raise ValueError(f"{key}={value} is not a file this process can read")
    return raw


def _fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")  # not a number: the message below says what is expected
    if not 0 <= value <= 1:
        raise ValueError("must be a fraction from 0 to 1, e.g. 0.25 for +-25 % (0: off)")
    return value


def _log_level(raw: str) -> str:
    if raw.lower() not in {"debug", "info", "warning", "error", "critical"}:
        raise ValueError("must be one of debug, info, warning, error, critical")
    return raw.lower()


def _publish_token(raw: str) -> str:
    # Visible ASCII only: the token travels in an HTTP header and is compared as bytes.
    if not re.fullmatch(r"[\x21-\x7e]{16,512}", raw):
        raise ValueError("must be 16 to 512 visible ASCII characters (no spaces)")
    return raw


def _rate_limits(raw: str) -> str:
    from limits import parse_many  # the same parser Flask-Limiter applies later

    try:
        parse_many(raw)
    except ValueError:
        raise ValueError("must look like '20/second' or '20/second; 600/hour'") from None
    return raw


_ORIGIN = re.compile(r"\Ahttps?://[^/?#@\s]+\Z", re.IGNORECASE)


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(filter(None, re.split(r"[\s,]+", raw)))
    for origin in origins:
        if origin == "*":
            # Credentials are allowed for listed origins, so a wildcard would
            # amount to trusting every site on the web with a user's session.
            raise ValueError("'*' is not allowed: list each origin, e.g. https://app.example.com")
        if not _ORIGIN.match(origin):
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com[:port] (no path)")
    return tuple(origin.rstrip("/").lower() for origin in origins)


MIN_JWT_SECRET_BYTES = 32  # HS256's own output size; shorter secrets can be guessed offline from one token
MIN_RSA_KEY_BITS = 2048


def _jwt_secret(raw: str) -> str:
    if len(raw.encode("utf-8")) < MIN_JWT_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_JWT_SECRET_BYTES} bytes (HS256), e.g. "
                         "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return raw


def _pem_public_key(raw: str) -> str:
    # An .env file often holds the PEM on one line with literal \n escapes.
    pem = raw.replace("\\n", "\n") if "\n" not in raw else raw
    if "PRIVATE KEY" in pem:
        raise ValueError("is a private key: give the server the public key only "
                         "(openssl pkey -in private.pem -pubout)")
    public_key_algorithm(pem)
    return pem + "\n"


def public_key_algorithm(pem: str) -> str:
    """Return RS256 or ES256 for a PEM public key; raise ValueError for anything else."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, TypeError):
        raise ValueError("is not a PEM public key (-----BEGIN PUBLIC KEY----- ...)") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_KEY_BITS:
            raise ValueError(f"is an RSA key of {key.key_size} bits: at least {MIN_RSA_KEY_BITS} are needed")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"is an EC key on {key.curve.name}: ES256 needs P-256 (secp256r1)")
        return "ES256"
    raise ValueError("must be an RSA (RS256) or P-256 EC (ES256) public key")


_ROOM_GLOB = re.compile(r"\A[A-Za-z0-9_.*?\[\]!-]{1,64}\Z")


def _room_globs(raw: str) -> tuple[str, ...]:
    patterns = tuple(filter(None, re.split(r"[\s,]+", raw)))
    for pattern in patterns:
        if not _ROOM_GLOB.match(pattern):
            raise ValueError(f"{pattern!r} is not a room pattern: room characters (A-Z a-z 0-9 _ . -) "
                             "and the shell wildcards * ? [...]")
    return patterns


# Never echoed back, not even in the start-up error that rejects them.
_SECRET_VARIABLES = frozenset({"PUBLISH_TOKEN", "AUTH_JWT_SECRET"})
# Not secret, but a page of PEM says nothing a sentence would not.
_NOT_ECHOED = _SECRET_VARIABLES | {"AUTH_JWT_PUBLIC_KEY"}
# Echoed with their secret part hidden.
_SHOWN_AS: dict[str, Callable[[str], str]] = {"MONGODB_URI": _redact_uri, "AUTH_SUBSCRIBE_URL": _redact_hook_url}

_PARSERS: dict[str, Callable[[str], Any]] = {
    "HOST": str,
    "PORT": _int_in(0, 65535),
    "WEB_CONCURRENCY": _int_in(1, 64),
    "MONGODB_URI": _mongodb_uri,
    "MONGODB_DATABASE": str,
    "SQLITE_PATH": str,
    "CAPPED_SIZE_BYTES": _int_in(4096, 2**50),
    "CAPPED_MAX_MESSAGES": _int_in(1, 10**9),
    "HEARTBEAT_SECONDS": _positive_float(3600),
    "RETRY_MS": _int_in(0, 3_600_000),
    "RETRY_JITTER": _fraction,
    "MAX_TEXT_CHARS": _int_in(1, 1_000_000),
    "MAX_BODY_BYTES": _int_in(1024, 64 * 2**20),
    "STREAM_QUEUE_LIMIT": _int_in(1, 1_000_000),
    "MAX_STREAMS_PER_WORKER": _int_in(1, 1_000_000),
    "STREAM_WRITE_TIMEOUT_SECONDS": _positive_float(3600),
    "SQLITE_POLL_MS": _int_in(1, 10_000),
    "LOG_LEVEL": _log_level,
    # Memory and bytes per stream and per history page.
    "STREAM_CHUNK_BYTES": _int_in(1024, 2**20),
    "STREAM_BACKLOG_MAX_BYTES": _int_in(1024, 2**40),
    "HISTORY_MAX_BYTES": _int_in(1024, 2**30),
    "STREAM_SEND_BUFFER_BYTES": _int_in(0, 2**30),
    "PUBLISH_TOKEN": _publish_token,
    "PUBLISH_RATE": _rate_limits,
    "CORS_ORIGINS": _origins,
    "TRUSTED_PROXIES": _int_in(0, 10),
    "AUTH_JWT_SECRET": _jwt_secret,
    "AUTH_JWT_PUBLIC_KEY": _pem_public_key,
    "PUBLIC_ROOMS": _room_globs,
    # Streams per client on a node (issue 18).
    "MAX_STREAMS_PER_CLIENT": _int_in(1, 1_000_000),
    "CLIENT_SLOTS_PATH": str,
    # Presence: 100,000 rooms of 64 characters make a MongoDB document of ~10.4 MB,
    # under its 16 MB (app/stores/mongo.py presence_document_max_bytes).
    "PRESENCE_MAX_ROOMS": _int_in(1, 100_000),
    # With 100,000 rooms, 10,000 identities of 256 bytes still keep that document under 16 MB (~15.99 MB).
    "PRESENCE_MAX_IDENTITIES": _int_in(0, 10_000),
    "PRESENCE_LEAVE_GRACE_SECONDS": _positive_float(60),
    # Token claims (issue 18).
    "AUTH_JWT_AUDIENCE": _claim_value,
    "AUTH_JWT_ISSUER": _claim_value,
    "AUTH_JWT_REQUIRE_EXP": _boolean,
    "AUTH_JWT_MAX_LIFETIME_SECONDS": _int_in(0, 366 * 86_400),
    # Message expiry (issue 15): unset is no expiry; 0 is refused rather than read as "off".
    "MESSAGE_TTL_SECONDS": _positive_float(366 * 86_400),
    # The subscribe hook (issue 16).
    "AUTH_SUBSCRIBE_URL": _hook_url,
    "AUTH_SUBSCRIBE_TIMEOUT_MS": _int_in(1, 60_000),
    "AUTH_SUBSCRIBE_CACHE_SECONDS": _seconds_from_zero(86_400),
    "AUTH_SUBSCRIBE_MAX_CONCURRENT": _int_in(1, 10_000),
}
