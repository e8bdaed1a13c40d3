"""Why a stream ends: one reason per subscription, set once where it happens.

The values are what the end-of-stream log line says (``ended_by=``).
"""
from __future__ import annotations

from enum import StrEnum


class EndReason(StrEnum):
    """Why a stream's subscription ended (the first reason stands), and so why its response ends."""

    CLIENT_GONE = "client gone"  # it closed its end, or a write to it failed: nothing more is said
    SLOW = "slow"  # its queue overflowed: it resumes from its Last-Event-ID on reconnect
    STALLED = "stalled"  # a write made no progress in time: the sweeper reset the connection
    RESYNC = "resync"  # the tailer lost its place: the stream joins again, in the same response
    TOKEN_EXPIRED = "token expired"  # its token's exp passed: a comment says so
    SHUTDOWN = "shutdown"  # the worker is stopping: a spread-out retry line
    STORE_UNAVAILABLE = "store unavailable"  # the window did not warm in time: a comment says so
    BACKLOG_BOUND = "backlog bound"  # sent backlog_max_bytes: a short retry line, it resumes for the rest
    BACKLOG_TOO_SLOW = "backlog too slow"  # its backlog was not taken within the write timeout
    BACKLOG_EVICTED = "backlog evicted"  # the window dropped backlog entries it had still to send
