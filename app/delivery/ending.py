"""How a stream ends: one reason per subscription, set once where it happens.

Who owns what. The stream (``app/delivery/streaming.py``) owns its
``Subscription``: it writes, arms and disarms its write deadline, counts the
events it wrote (``Subscription.events``). The hub (``app/delivery/hub.py``)
only asks, through the subscription's own methods: ``end(reason)`` wakes the
stream, which finishes its current write, says why (below) and returns;
``reset()`` is the one end that cannot wait for a write, since the write is
what is stuck. The hub reads the streams' counts at each sweep; nothing on
either side writes the other's state.

The first reason stands (``Subscription.end``), except a reset, which
overrides: the client did not get the end the stream was writing. The
stream's ``finally`` then leaves the hub and logs ``stream end ...
ended_by=<reason>``. The ways a stream ends, where each is decided, and what
the client gets:

==================  =============================================  =====================================
``ended_by``        decided by                                     the client gets, then
==================  =============================================  =====================================
client gone         the close watcher sees EOF; or the server      nothing (it is gone)
                    closed the response, a write having failed
slow                ``Subscription.offer``: queue_limit behind     the end; resumes from Last-Event-ID
stalled             the sweeper: a write made no progress for      its connection closed under the stuck
                    write_timeout, or past ``backlog_until``       write (``ReaderStalled``): an ordinary
                                                                   end of stream; resumes from its id
resync              ``Hub.resync_all``: the tailer lost its place  no end: the stream joins again
token expired       the sweeper at ``expires_at``, or the join     ``: token expired``; 401 until renewed
shutdown            ``Hub.close_all`` (and joins after it)         a retry line spread over 1-2x RETRY_MS
store unavailable   the join: the window did not warm in time      ``: store unavailable, ...``
backlog bound       the backlog: sent backlog_max_bytes            ``retry: 100``: resumes for the rest
backlog too slow    the backlog: not taken within write_timeout    a retry line; resumes from its id
backlog evicted     the backlog: the window dropped unsent ones    a retry line; its id gets ``reset``
==================  =============================================  =====================================
"""
from __future__ import annotations

from enum import StrEnum


class EndReason(StrEnum):
    """Why a stream's subscription ended (the first reason stands), and so why its response ends."""

    CLIENT_GONE = "client gone"  # it closed its end, or a write to it failed: nothing more is said
    SLOW = "slow"  # its queue overflowed: it resumes from its Last-Event-ID on reconnect
    STALLED = "stalled"  # a write made no progress in time: the sweeper closed the connection under it
    RESYNC = "resync"  # the tailer lost its place: the stream joins again, in the same response
    TOKEN_EXPIRED = "token expired"  # its token's exp passed: a comment says so
    SHUTDOWN = "shutdown"  # the worker is stopping: a spread-out retry line
    STORE_UNAVAILABLE = "store unavailable"  # the window did not warm in time: a comment says so
    BACKLOG_BOUND = "backlog bound"  # sent backlog_max_bytes: a short retry line, it resumes for the rest
    BACKLOG_TOO_SLOW = "backlog too slow"  # its backlog was not taken within the write timeout
    BACKLOG_EVICTED = "backlog evicted"  # the window dropped backlog entries it had still to send
