"""``Idempotency-Key`` on ``POST /messages``: publish exactly once, however often a publisher retries.

The header is the IETF httpapi draft's ("The Idempotency-Key HTTP Header
Field"): a key the publisher makes per message (a UUID, say) and sends again
with every retry of it. The first request with a key stores the message; any
later one with the key -- on any worker or node, at the same moment or later,
while the message is still in the window -- stores nothing and gets the same
message back (201, with ``Idempotent-Replayed: true``). The same key with a
different message (room, text or event, as validated) is refused with 422.

The stores enforce it with a unique index (``append_once``), so two requests
racing with one key store one message; the loser reads the winner's back.

Scope: a key belongs to the publisher that sent it. With private rooms on
(AUTH_JWT_*), a token's ``sub`` is the publisher: two users who both pick the
key ``1`` publish two messages, and neither can learn anything about the
other's keys. Everyone else -- no authorization, PUBLISH_TOKEN, tokens without
``sub`` -- shares one scope, as they share one trust level.

What the stores keep is not the key but the SHA-256 of the scope and the key:
64 hex digits whatever their lengths (a ``sub`` may be long), never a token's
subject in clear beside every message.

Intentional divergences from the draft, written here so nobody "fixes" them:

* the key is the header's value as sent, 1-255 visible ASCII characters
  (Stripe's bound; the draft sets none): a draft-style quoted string is
  accepted, its quotes part of the key, so a publisher sends its key the
  same way every time;
* but never a comma: HTTP joins the values of a header sent twice with one
  (gunicorn as ``a,b``, no space), so ``a,b`` may be two keys, and whichever
  one was meant, storing it under a third would let its retry store it again;
* a request racing another with its key is not refused with 409: the store
  settles the race at once, so the loser gets the winner's message.
"""
from __future__ import annotations

import hashlib
import re

from flask import g, request

from ..stores.base import Message
from .errors import ApiError

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
# Visible ASCII (VCHAR, %x21-7E) but the comma (%x2C): no space, no control character,
# nothing beyond ASCII, and not two keys joined (see the module docstring).
_KEY = re.compile(rf"[\x21-\x2b\x2d-\x7e]{{1,{MAX_KEY_CHARS}}}")
KEY_RULE = f"1 to {MAX_KEY_CHARS} visible ASCII characters (no spaces, no commas)"


def idempotency_key() -> str | None:
    """Return the request's Idempotency-Key (None without one), or raise 400 for a malformed one."""
    # From the environ: werkzeug's headers object raises (and builds) an exception for an absent header.
    # A header sent twice arrives joined with a comma (gunicorn: "a,b"; werkzeug's server: "a, b"): malformed.
    raw = request.environ.get("HTTP_IDEMPOTENCY_KEY")
    if raw is None:
        return None
    if _KEY.fullmatch(raw) is None:
        raise ApiError(400, f"{HEADER} must be {KEY_RULE}", {HEADER: ["malformed"]})
    return raw


def stored_key(key: str) -> str:
    """Return what the store keeps for this request's key: the SHA-256 of its publisher's scope and the key."""
    grant = g.get("publish_grant")  # set when private rooms are on (app/edge/authorization.py)
    subject = grant.subject if grant is not None else None
    scope = "sub:" + subject if subject else ""
    # The key has no line feed, so the last one separates the two; a subject
    # is any JSON string, lone surrogates included.
    return hashlib.sha256(f"{scope}\n{key}".encode("utf-8", "surrogatepass")).hexdigest()


def refuse_if_different(stored: Message, room: str, text: str, event: str) -> None:
    """Raise 422 unless the message stored under the key is the one this request asks to publish."""
    if (stored.room, stored.text, stored.event) != (room, text, event):
        raise ApiError(422, f"this {HEADER} was used for a different message; use a new key for a new message",
                       {HEADER: ["reused with a different message"]})
