"""Join and leave events: who starts or stops following a room, told to the streams that asked (``presence=1``).

There is no broker but the store (house style), so the events are worked out
from what presence already shares: every worker's entry names, per room, the
identities that follow it (``app/delivery/presence.py``). Each worker with
``presence=1`` streams looks every ``check_interval`` at the rooms they
follow -- the other workers' entries as this worker last read them (the
read every ``GET /rooms`` shares: at most one every 0.5 s), plus its own
streams, exactly -- and compares who is there with who was:

* an identity that is there and was not is announced ``join`` at once;
* an identity that is no longer there is announced ``leave`` only once it
  has been gone for ``leave_grace`` seconds. A client that moves from one
  worker or node to another (its new stream opens, its old one closes) is
  seen by a third worker through two entries written at different moments,
  and may vanish from the sum for about a write interval and a read
  interval; an entry whose writes FerretDB refuses for a while ("database
  is locked") can expire before a write gets through. Neither is a leave,
  and the grace keeps both from becoming a ``leave`` and a ``join`` (which
  would also be a second join). ``PRESENCE_LEAVE_GRACE_SECONDS`` sets it
  (1.5 s): a client whose stream ends and that comes back after EventSource's
  ``retry:`` (RETRY_MS, 3 s by default; more after a worker's shutdown) is
  told as a leave and a join unless the grace is longer than that. The
  cost: a leave is told ``leave_grace`` later than it happened, and the
  streams of a worker that was killed leave when its entry expires (3 s
  after its last refresh) plus the grace;
* a read of the store that fails tells nothing: the tick is skipped, never
  read as "everybody left".

Each event is the room's count after the change as this worker sees it
(``subscribers``: the streams following the room, as ``GET /rooms/R``
counts them, anonymous ones too). Anonymous streams are counted, never
announced. An identity that no entry names (past ``PRESENCE_MAX_IDENTITIES``)
is not announced either; it is announced when it comes to be named.

A room starts being watched when a first ``presence=1`` stream of this worker
opens on it (``watch``, before the stream is answered): whoever is there then
is taken as already there (the stream lists them with ``GET /rooms/R/subscribers``),
not announced, nor is the opening stream's own identity; whoever comes after is. Taken at the loop's next look
instead, a join in the moment between the open and that look was lost: in a
live test on FerretDB the watcher never heard of a user who opened just after it. Every worker
works its events out for its own streams, so each is told once per stream;
two workers may tell them up to a read interval apart.

The events have no ``id:`` (they are not in the stored order, and the
client's Last-Event-ID stays the last message's): see ``Notice`` in
``app/delivery/hub.py``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gevent

from ..stores.base import PresenceReport, StoreUnavailable, nameable
from .events import to_json_text
from .hub import Hub
from .sse import ServerSentEvent

if TYPE_CHECKING:
    from .presence import Presence


log = logging.getLogger(__name__)

CHECK_INTERVAL = 0.25
# PRESENCE_LEAVE_GRACE_SECONDS. Longer than a move's gap between two entries (a write interval, 0.5 s, plus
# a check, 0.25 s, plus a reader's cache, 0.5 s) and than a run of refused
# writes needs to let an entry expire (two seconds of them); short enough that
# a leave is told within about two seconds of the store saying so.
LEAVE_GRACE = 1.5
# The loop ends after this long with no presence=1 stream, and starts again with the next one.
IDLE_SECONDS = 60.0


def presence_event(kind: str, room: str, sub: str, subscribers: int) -> bytes:
    """Encode a ``join`` or ``leave`` event: no id, the data ``{"room", "sub", "subscribers"}``."""
    return ServerSentEvent(event=kind, data=to_json_text({"room": room, "sub": sub,
                                                          "subscribers": subscribers})).encode()


# A room watched for a stream that is opening is kept this long before its first look, though no
# presence=1 stream follows it yet (the stream subscribes when its response starts).
OPENING_SECONDS = 10.0


@dataclass
class _Watch:
    """One room as this worker last saw it: who was there, and since when each one seems gone."""

    there: set[str]
    gone_since: dict[str, float] = field(default_factory=dict)
    opening_since: float | None = None  # taken by ``watch``, for a stream not yet subscribed


class Announcer:
    """Tells this worker's ``presence=1`` streams who joins and leaves their rooms."""

    def __init__(self, presence: Presence, hub: Hub, *, check_interval: float = CHECK_INTERVAL,
                 leave_grace: float = LEAVE_GRACE, idle_seconds: float = IDLE_SECONDS) -> None:
        self.presence = presence
        self.hub = hub
        self.check_interval = check_interval
        self.leave_grace = leave_grace
        self.idle_seconds = idle_seconds
        self._watched: dict[str, _Watch] = {}
        self._greenlet: gevent.Greenlet | None = None
        self._failing = False

    def ensure_running(self) -> None:
        """Start watching (a presence=1 stream is opening), unless already started."""
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def watch(self, rooms: tuple[str, ...], subject: str | None = None,
              anonymous_in: frozenset[str] = frozenset()) -> None:
        """Take who is in these rooms now, as a presence=1 stream opens: whoever comes after is announced.

        The opening stream's own identity (``subject``) counts as there: it is
        not told its own arrival (the others are), except in ``anonymous_in``,
        where it is anonymous (it would be told a leave). Rooms already watched keep
        what they have. When the other workers' entries cannot be read, the
        loop's first look takes it, as before.
        """
        new = [room for room in rooms if room not in self._watched]
        if not new:
            return
        try:
            others = self.presence.others()
        except StoreUnavailable:
            return
        for room in new:
            there = set(self._there(room, others))
            # Else it is not in ``there`` either: no leave for it.
            if subject is not None and nameable(subject) and room not in anonymous_in:
                there.add(subject)
            self._watched[room] = _Watch(there, opening_since=time.monotonic())

    def _there(self, room: str, others: PresenceReport) -> dict[str, int]:
        """Return the identities following ``room``: the other workers' entries plus this worker's streams."""
        there = dict(others.subs.get(room, {}))
        for sub, streams in self.hub.identities(room).items():
            if nameable(sub):  # one no entry may name is announced by no worker, this one included
                there[sub] = there.get(sub, 0) + streams
        return there

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        idle_since = time.monotonic()
        broken = False
        while True:
            now = time.monotonic()
            if self.hub.noticed_rooms():
                idle_since = now
            elif now - idle_since > self.idle_seconds:
                self._watched.clear()
                return
            try:
                self.check(now)
                broken = False
            except Exception:  # the events of every presence=1 stream depend on this loop
                if not broken:  # once per run of failures, not a traceback four times a second
                    log.exception("presence: working out join and leave events failed")
                broken = True
            gevent.sleep(self.check_interval)

    def check(self, now: float) -> None:
        """Compare who follows each watched room with who did, and announce the differences."""
        rooms = self.hub.noticed_rooms()
        for room, watch in list(self._watched.items()):
            if room in rooms:
                watch.opening_since = None
            elif watch.opening_since is None or now - watch.opening_since > OPENING_SECONDS:
                del self._watched[room]  # no stream of it left (or the one opening never came)
        if not rooms:
            return
        try:
            others = self.presence.others()
        except StoreUnavailable as exc:
            if not self._failing:
                log.warning("presence: cannot read the other workers' entries (%s); no join or leave events "
                            "until it can", exc)
            self._failing = True
            return  # no news is not "everybody left"
        self._failing = False
        for room in rooms:
            there = self._there(room, others)
            watch = self._watched.get(room)
            if watch is None:
                self._watched[room] = _Watch(set(there))  # already there: listed, not announced
                continue
            subscribers = others.rooms.get(room, 0) + self.hub.subscribers(room)
            told: list[bytes] = []
            for sub in there:
                if watch.gone_since.pop(sub, None) is None and sub not in watch.there:
                    watch.there.add(sub)
                    told.append(presence_event("join", room, sub, subscribers))
            for sub in [sub for sub in watch.there if sub not in there]:
                since = watch.gone_since.setdefault(sub, now)
                if now - since >= self.leave_grace:
                    watch.there.discard(sub)
                    del watch.gone_since[sub]
                    told.append(presence_event("leave", room, sub, subscribers))
            if told:
                # One queued item per room and look, however many events: queued one by one, a burst past
                # STREAM_QUEUE_LIMIT (a thousand identities arriving, or a killed worker's leaving, at once;
                # 32 tokens on 32-room streams) ended every presence=1 stream of the room as a slow reader,
                # fast ones too. A stream that does not read still falls that many items behind, and ends.
                self.hub.announce(room, b"".join(told))
