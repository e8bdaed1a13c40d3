"""The shape of message ids, decided in one place for both stores.

Ids come back from clients (``Last-Event-ID``, ``lastEventId``, history's
``after``) and may be anything: a sequence past 64 bits, a sign, whitespace,
Arabic-Indic digits that ``int()`` accepts, a NUL. Each store asks here, and
only here, whether a string has the shape of one of its ids; anything else is
not an id at all, and never reaches a query (where a too-large integer made
SQLite raise ``OverflowError`` mid-stream).

Strict on purpose: exactly the characters the store itself writes, ASCII
only (``re`` classes such as ``[0-9]`` never match other scripts' digits,
where ``str.isdigit`` and ``int`` would), no sign, no padding, no leading zero,
and within the range the store can hold. A well-formed id may still be unknown
(evicted, from another database, never issued): that is the stores' question.
"""
from __future__ import annotations

import re

from bson import ObjectId

# SQLite: "<epoch>-<seq>", the epoch 8 lowercase hex digits made with the
# file, seq an INTEGER PRIMARY KEY (a signed 64-bit integer, never 0 or less).
SQLITE_MAX_SEQ = 2**63 - 1
_SQLITE_ID = re.compile(r"([0-9a-f]{8})-([1-9][0-9]{0,18})")
# MongoDB: str(ObjectId), 24 lowercase hex digits. ObjectId() itself also takes
# upper case, which we never issue: such an id would be found by the store but
# never by the window, whose keys are the ids as issued.
_OBJECT_ID = re.compile(r"[0-9a-f]{24}")


def sqlite_id(epoch: str, seq: int) -> str:
    """Return the public id of a SQLite store's message."""
    return f"{epoch}-{seq}"


def parse_sqlite_id(message_id: str) -> tuple[str, int] | None:
    """Return ``(epoch, seq)`` of a well-formed SQLite id, else None."""
    match = _SQLITE_ID.fullmatch(message_id)
    if match is None:
        return None
    seq = int(match.group(2))
    if seq > SQLITE_MAX_SEQ:
        return None
    return match.group(1), seq


def parse_object_id(message_id: str) -> ObjectId | None:
    """Return the ObjectId of a well-formed MongoDB id, else None."""
    if _OBJECT_ID.fullmatch(message_id) is None:
        return None
    return ObjectId(message_id)
