"""The subscribe hook: the application's own login decides who reads private rooms (AUTH_SUBSCRIBE_URL).

Before a read of rooms that are not all public (a stream, history, a room's
presence) by a request without a JWT, the server asks the application::

    POST AUTH_SUBSCRIBE_URL   {"rooms": [the private rooms asked], "method": "GET", "path": "/messages"}
    Cookie: <the client's, as sent>          Authorization: <the client's, as sent>

* **2xx** with a JSON object ``{"sub"?, "rooms"?: [globs], "expiresIn"?: seconds}``
  allows: ``rooms`` (shell-style globs, as a token's ``subscribe`` claim;
  left out: exactly the rooms asked) must cover every private room asked,
  else the client gets 403 (app/edge/authorization.py checks that, as for
  a token); ``expiresIn`` ends a stream that many seconds after the answer,
  as a token's ``exp`` does; ``sub`` is the stream's identity
  (``Grant.subject``: presence, per-client stream limits).
* **401/403** is passed to the client as a 401/403 in the one error shape.
* Anything else -- a timeout (AUTH_SUBSCRIBE_TIMEOUT_MS), a refused
  connection, a 5xx, a redirect, another 4xx, a 2xx whose body is not that
  object -- is a **503 with Retry-After**: never an open door, and never
  cached.

Bounded per worker: at most AUTH_SUBSCRIBE_MAX_CONCURRENT calls in flight
(a gevent semaphore, and a connection pool of that size kept alive between
calls); a request waits for a slot at most the timeout, then gets 503. The
same question (credentials, rooms, method and path) asked again while it is
in flight waits for that one call's answer instead of asking again, so a
reconnect storm of one user's tabs is one call. Answers (allowed or 401/403)
are kept AUTH_SUBSCRIBE_CACHE_SECONDS (0: not at all), at most
CACHE_MAX_ENTRIES and CACHE_MAX_BYTES per worker, the oldest dropped first,
and never past the answer's own ``expiresIn``. The cache key is a SHA-256 of
the question: no cookie is kept in memory as it was sent. A question the
hook's kept-alive connection drops unanswered is asked once more (see
ONE_RETRY_IF_NOT_ANSWERED); nothing else is retried.

The client is urllib3 (what requests is built on): under gunicorn's gevent
worker its sockets are gevent's, so a call parks only the greenlet that
waits for it; a gevent.Timeout bounds the whole call, the body's trickle
included, on top of urllib3's per-read timeout.

Nothing of the client's credentials or of the hook's body is logged; a
failing hook is logged once a second at most per worker, with a count.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gevent
import urllib3
from gevent.event import AsyncResult
from gevent.lock import BoundedSemaphore

from ..config import Settings
from ..operations.metrics import HOOK_ANSWERS, HOOK_SECONDS
from .errors import ApiError, unavailable

log = logging.getLogger(__name__)

CACHE_MAX_ENTRIES = 10_000  # per worker: ~5 MB of small answers (a key, a sub, a glob or two: ~500 bytes each)
# And at most this many bytes of answers per worker, as weighed by _weight: an answer may name 256 globs of 256
# characters (~78 kB kept), and 10,000 of those would be 750 MB.
CACHE_MAX_BYTES = 16 * 2**20
MAX_ANSWER_BYTES = 64 * 1024  # a real answer is a few hundred bytes
MAX_PATTERNS = 256  # as a token's claim
MAX_SUB_CHARS = 256
MAX_EXPIRES_IN_SECONDS = 366 * 86_400
LOG_EVERY_SECONDS = 1.0
# The headers passed through: what a login is made of. Nothing else of the client's is sent.
PASSED_HEADERS = ("Cookie", "Authorization")
# Ours, on every call (urllib3 would not merge a pool's default headers with a call's own).
SENT_HEADERS = {"Content-Type": "application/json", "Accept": "application/json",
                "User-Agent": "sse-rooms subscribe hook"}

# One retry, on another connection, for a question the hook dropped before answering: a kept-alive connection
# that the hook closes just as a question arrives (its keep-alive timer fired then) is a ProtocolError before
# any status, and was a 503 -- which closes a browser's EventSource for good -- for a user who did nothing
# wrong. Nothing else is retried: not a refused connection (connect=0: the hook is down), not a status (its
# own Retry-After included), not a read timeout (a slow hook), not a body cut short (read after urlopen
# returns); the gevent timeout still bounds the whole call, the retry included.
class _RetryUnanswered(urllib3.Retry):
    """A Retry whose read retries are for a dropped connection only, never for a read timeout (a slow hook)."""

    def _is_read_error(self, err: Exception) -> bool:
        return isinstance(err, urllib3.exceptions.ProtocolError)


ONE_RETRY_IF_NOT_ANSWERED = _RetryUnanswered(total=1, connect=0, read=1, redirect=0, status=0, other=0,
                                             allowed_methods=frozenset({"POST"}), respect_retry_after_header=False,
                                             raise_on_redirect=False, raise_on_status=False)

UNAVAILABLE = "the application's subscribe hook did not answer, try again shortly"
BUSY = "the application's subscribe hook is busy, try again shortly"


@dataclass(frozen=True, slots=True)
class Allowed:
    """What a 2xx answer allows (the absolute expiry: Unix time, or None)."""

    rooms: tuple[str, ...]
    expires_at: float | None
    subject: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    """The hook's answer to one question: allowed, or refused (401/403), or failed (503: never cached)."""

    allowed: Allowed | None = None
    refusal: ApiError | None = None
    cacheable: bool = True

    def result(self) -> Allowed:
        if self.refusal is not None:
            # A fresh exception each time: re-raising the one kept would chain every raise's frames onto its
            # traceback, for as long as the cache (or the waiters) keep it.
            refusal = self.refusal
            raise ApiError(refusal.code, refusal.message, refusal.errors, refusal.headers)
        assert self.allowed is not None
        return self.allowed


# "rooms" left out allows exactly the rooms asked; "rooms": null does not. An application that means "none" and
# serialises None must not open every room asked: null is not the shape (a 503), never an open door.
_LEFT_OUT = object()


class NotTheShape(ValueError):
    """A 2xx body that is not the answer's JSON object."""


def parse_allowed(body: bytes, asked: tuple[str, ...], now: float) -> Allowed:
    """Read a 2xx body; raise NotTheShape (a sentence, never quoting the body) for anything else."""
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise NotTheShape("its body is not JSON") from None
    if not isinstance(answer, dict):
        raise NotTheShape("its body is not a JSON object")
    rooms = answer.get("rooms", _LEFT_OUT)
    if rooms is _LEFT_OUT:
        patterns = tuple(_exactly(room) for room in asked)
    elif (isinstance(rooms, list) and len(rooms) <= MAX_PATTERNS
          and all(isinstance(pattern, str) and 0 < len(pattern) <= 256 for pattern in rooms)):
        patterns = tuple(rooms)
    else:
        raise NotTheShape(f'"rooms" is not a list of at most {MAX_PATTERNS} room patterns')
    expires_in = answer.get("expiresIn", None)
    if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int | float)
                                   or not 0 < expires_in <= MAX_EXPIRES_IN_SECONDS or math.isnan(expires_in)):
        raise NotTheShape(f'"expiresIn" is not a number of seconds above 0 and at most {MAX_EXPIRES_IN_SECONDS}')
    subject = answer.get("sub", None)
    if subject is not None and (not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUB_CHARS
                                or not subject.isprintable()):
        raise NotTheShape(f'"sub" is not a string of 1 to {MAX_SUB_CHARS} printable characters')
    return Allowed(patterns, None if expires_in is None else now + expires_in, subject)


def _exactly(room: str) -> str:
    """Return a glob matching this room name alone (room names hold no glob characters; escaped all the same)."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in room)


def question_key(cookie: str | None, authorization: str | None, rooms: tuple[str, ...],
                 method: str, path: str) -> bytes:
    """Return the cache and coalescing key of a question: a digest, so no credential is kept as sent."""
    question = json.dumps([cookie, authorization, sorted(rooms), method, path])
    return hashlib.sha256(question.encode("utf-8", "surrogatepass")).digest()


# What one entry costs beside its answer's strings (measured with tracemalloc: the key's digest, the
# OrderedDict's slot, the tuples and dataclasses), and what a kept refusal costs (its ApiError, message and
# headers), in bytes.
_ENTRY_BYTES = 520
_REFUSAL_BYTES = 2300


def _weight(answer: Answer) -> int:
    """Return about how many bytes of memory an answer kept in the cache holds."""
    if answer.allowed is None:
        return _ENTRY_BYTES + _REFUSAL_BYTES
    subject = answer.allowed.subject
    return (_ENTRY_BYTES + sum(sys.getsizeof(pattern) + 8 for pattern in answer.allowed.rooms)
            + (sys.getsizeof(subject) if subject is not None else 0))


class AnswerCache:
    """Answers kept ``seconds`` (each at most until its own expiry), at most ``max_entries`` and ``max_bytes``.

    The oldest written go first. Bounded by bytes too, not only by count: what
    one answer holds is the application's to decide (up to 256 globs of 256
    characters), and a count alone would let big answers take the worker's memory.
    """

    def __init__(self, seconds: float, max_entries: int = CACHE_MAX_ENTRIES,
                 max_bytes: int = CACHE_MAX_BYTES) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # the weights of the answers kept
        self._entries: OrderedDict[bytes, tuple[float, Answer, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        until, answer, _ = entry
        if now >= until:
            self._drop(key)
            return None
        return answer

    def put(self, key: bytes, answer: Answer, now: float) -> None:
        if not self.seconds or not answer.cacheable:
            return
        until = now + self.seconds
        if answer.allowed is not None and answer.allowed.expires_at is not None:
            until = min(until, answer.allowed.expires_at)
        weight = _weight(answer)
        if weight > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (until, answer, weight)
        self.bytes += weight
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))  # the oldest written

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key)[2]


class SubscribeHook:
    """One worker's client of the hook: a bounded pool of calls, coalesced and cached."""

    def __init__(self, settings: Settings) -> None:
        assert settings.auth_subscribe_url
        self.url = settings.auth_subscribe_url
        self.timeout = settings.auth_subscribe_timeout_ms / 1000
        self.max_concurrent = settings.auth_subscribe_max_concurrent
        self.cache = AnswerCache(settings.auth_subscribe_cache_seconds)
        # No redirects followed (a 3xx is a 503: the hook's URL is wrong). block=False: the semaphore already
        # bounds the calls.
        self._pool = urllib3.connection_from_url(
            self.url, maxsize=self.max_concurrent, block=False, retries=ONE_RETRY_IF_NOT_ANSWERED,
            timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout))
        self._path = urllib3.util.parse_url(self.url).request_uri
        self._slots = BoundedSemaphore(self.max_concurrent)
        self._in_flight: dict[bytes, AsyncResult] = {}
        self._failures_unlogged = 0
        self._last_logged = 0.0

    def ask(self, rooms: tuple[str, ...], method: str, path: str, headers: Mapping[str, str]) -> Allowed:
        """Return what the application allows for these rooms, or raise its 401/403, or a 503."""
        cookie, authorization = (headers.get(name) for name in PASSED_HEADERS)
        key = question_key(cookie, authorization, rooms, method, path)
        cached = self.cache.get(key, time.time())
        if cached is not None:
            HOOK_ANSWERS.labels("cached").inc()
            return cached.result()
        pending = self._in_flight.get(key)
        if pending is not None:  # the same question is on its way: its answer is ours
            try:
                return pending.get(timeout=2 * self.timeout + 1).result()
            except gevent.Timeout:
                raise unavailable(BUSY) from None
        pending = self._in_flight[key] = AsyncResult()
        answer = Answer(refusal=unavailable(UNAVAILABLE), cacheable=False)
        try:
            answer = self._answer(rooms, method, path, cookie, authorization)
            self.cache.put(key, answer, time.time())
        finally:
            del self._in_flight[key]
            pending.set(answer)  # whatever happened, the waiters are told (a failure as a 503)
        return answer.result()

    def _answer(self, rooms: tuple[str, ...], method: str, path: str,
                cookie: str | None, authorization: str | None) -> Answer:
        if not self._slots.acquire(timeout=self.timeout):
            HOOK_ANSWERS.labels("busy").inc()
            self._failed("no free slot: %d calls in flight for %.1f s", self.max_concurrent, self.timeout)
            return Answer(refusal=unavailable(BUSY), cacheable=False)
        started = time.perf_counter()
        try:
            return self._call(rooms, method, path, cookie, authorization)
        finally:
            self._slots.release()
            HOOK_SECONDS.observe(time.perf_counter() - started)

    def _call(self, rooms: tuple[str, ...], method: str, path: str,
              cookie: str | None, authorization: str | None) -> Answer:
        headers = {**SENT_HEADERS, **{name: value for name, value in zip(PASSED_HEADERS, (cookie, authorization),
                                                                          strict=True) if value is not None}}
        body = json.dumps({"rooms": list(rooms), "method": method, "path": path}).encode("utf-8")
        response = None
        finished = False
        deadline = gevent.Timeout(self.timeout)  # the whole call: urllib3's timeouts are per read
        try:
            with deadline:
                response = self._pool.urlopen("POST", self._path, body=body, headers=headers,
                                              preload_content=False, redirect=False)
                status = response.status
                # Bounded: a hook that sends megabytes gets a closed connection, not our memory.
                content = response.read(MAX_ANSWER_BYTES + 1)
                finished = len(content) <= MAX_ANSWER_BYTES
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise  # someone else's
            return self._failure("no answer within %.3f s (AUTH_SUBSCRIBE_TIMEOUT_MS)", self.timeout)
        except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out, TLS, a malformed answer
            if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
                exc = exc.reason  # what failed, not that the retries ran out
            return self._failure("%s", type(exc).__name__)
        finally:
            if response is not None:
                if not finished:  # cut short: its connection holds the rest, and is of no more use
                    response.close()
                response.release_conn()
        if status in (401, 403):
            HOOK_ANSWERS.labels("refused").inc()
            return Answer(refusal=_refusal(status, rooms))
        if not 200 <= status < 300:
            return self._failure("it answered %d", status)
        if len(content) > MAX_ANSWER_BYTES:
            return self._failure("its answer is over %d bytes", MAX_ANSWER_BYTES)
        try:
            allowed = parse_allowed(content, rooms, time.time())
        except NotTheShape as exc:
            return self._failure("it answered %d, but %s", status, exc)
        HOOK_ANSWERS.labels("allowed").inc()
        return Answer(allowed=allowed)

    def _failure(self, reason: str, *args: Any) -> Answer:
        HOOK_ANSWERS.labels("failed").inc()
        self._failed(reason, *args)
        return Answer(refusal=unavailable(UNAVAILABLE), cacheable=False)

    def _failed(self, reason: str, *args: Any) -> None:
        """Log a failure, at most one line a second per worker (a storm would write thousands)."""
        self._failures_unlogged += 1
        now = time.monotonic()
        if now - self._last_logged < LOG_EVERY_SECONDS:
            return
        log.warning("subscribe hook failed (%d time(s) since the last line): " + reason + "; readers get 503",
                    self._failures_unlogged, *args)
        self._failures_unlogged, self._last_logged = 0, now


def _refusal(status: int, rooms: tuple[str, ...]) -> ApiError:
    """Return the hook's 401/403, in our words (the hook's body and headers are not passed on)."""
    from .authorization import forbid, refuse

    if status == 401:
        return refuse("the application did not recognise this request's login (its subscribe hook answered 401)",
                      token_sent=False)
    return forbid(f"the application does not allow this request to read room {rooms[0]!r}"
                  + (f" or the {len(rooms) - 1} other(s) asked" if len(rooms) > 1 else "")
                  + " (its subscribe hook answered 403)")
