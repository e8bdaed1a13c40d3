"""The storage seam: what every store promises, and the values it trades in.

The seam is two parts, as Centrifuge keeps its ``Broker`` apart from its
``PresenceManager``; each caller is typed with the part it uses.

``MessageLog``: a bounded window of messages in one total order (the order the
store itself committed them in):

* ``append`` a message and get it back with its server-made id;
  ``append_once`` the same under an idempotency key, which the store keeps
  unique (a unique index): a second append with the key stores nothing and
  returns the first one's message, ``replayed``;
* ``read_rooms``: rooms' messages after a given id, in store order, or a
  ``reset_reason`` when that id is no longer (or never was) in the window
  (``read_room`` is the one-room case); ``read_rooms_before``: those just
  before one (scrollback);
* ``follow``: an endless feed of new messages in store order, for the one
  tailer each worker runs. Each message in the feed carries a *position*, an
  integer that grows along store order, by which the worker's in-memory window
  (``app/delivery/window.py``) finds where a resume starts.

``PresenceStore``: the one other piece of state the workers of every node
share (the store is the only bus between them). Each worker
``publish_presence``-es how many of its streams follow each room, with an
expiry, ``refresh_presence``-es that expiry while nothing changed (a small
write, not the whole entry again), and anyone can read the sum over the
entries that have not expired (``presence_counts``). A worker that stops
cleanly ``withdraw_presence``-es its entry; a killed one's just expires.

An entry names at most ``PRESENCE_MAX_ROOMS`` rooms (those in which it named
someone already, then those with someone to name, then the busiest); the rest
are counted, not named (``PresenceReport.other_rooms``/``other_streams``), so
a client that makes up room names cannot grow an entry -- nor a MongoDB
document towards its 16 MB limit -- past what the setting allows.

An entry also names who follows its named rooms (issue 16): each identity (a
stream's ``Grant.subject``) and its streams, and each room's anonymous
streams; at most ``PRESENCE_MAX_IDENTITIES`` (room, identity) pairs, each
identity at most ``MAX_SUBJECT_BYTES``, the other pairs counted
(``PresenceReport.other_subs``). They travel in the same writes.

A ``Store`` is both parts and its lifecycle (``prepare``, ``ping``, ``close``):
what ``open_store`` returns, and what both implementations are.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import gevent.event


class StoreUnavailable(Exception):
    """The store cannot be reached or cannot write right now; try again later."""


class WriteOutcomeUnknown(StoreUnavailable):
    """A write was sent, the connection broke before its reply, and no retry got through.

    It may or may not be stored; ``message_id`` is the id it has if it was.
    """

    def __init__(self, message: str, message_id: str = "") -> None:
        super().__init__(message)
        self.message_id = message_id


class StoreMisconfigured(Exception):
    """The store exists but is set up in a way we must not run on."""


class PositionLost(Exception):
    """The follower fell behind the bounded window: messages were evicted unseen."""


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message, as clients see it."""

    id: str
    room: str
    text: str
    event: str
    created_at: datetime

    def to_json(self) -> dict[str, str]:
        """Return the public JSON representation (the SSE data and the POST reply)."""
        return {
            "id": self.id,
            "room": self.room,
            "text": self.text,
            "event": self.event,
            "createdAt": self.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }


@dataclass(frozen=True, slots=True)
class Publication:
    """What ``append_once`` did: the message under the key, and whether it was stored before (nothing stored now)."""

    message: Message
    replayed: bool


# The one reason a resume point is not found, whatever the id: unknown,
# evicted, never issued here, malformed, or a message of a room the client did
# not ask for. One text, from the window and from both stores, and the id is
# not echoed: a different answer for "in another room" would let anyone probe
# which ids belong to private rooms, and an echo would carry a client's bytes
# into the event.
UNKNOWN_ID_REASON = "the last event id is not in the stored window of these rooms: evicted, unknown or malformed"


@dataclass(frozen=True, slots=True)
class Backlog:
    """Rooms' stored messages after a point, in store order; ``reset_reason`` says the point was not found."""

    messages: list[Message]
    reset_reason: str | None = None

    @classmethod
    def resume_point_not_found(cls, messages: list[Message]) -> Backlog:
        """Return the backlog of a resume whose id was not found: the messages from the oldest, and why."""
        return cls(messages, UNKNOWN_ID_REASON)


# What ``follow`` yields: new messages in store order, each with its position.
# An empty batch says the follower has caught up with the store's present.
FeedBatch = list[tuple[int, Message]]

# A message's fixed cost against max_bytes, beside its UTF-8 fields: close to,
# and never more than, the BSON framing MongoDB charges for the same document
# (75 bytes for {_id, room, text, event, createdAt}).
STORED_OVERHEAD_BYTES = 64


def stored_size(room: str, text: str, event: str) -> int:
    """Return what a message counts against the store's max_bytes bound."""
    return len(room.encode()) + len(text.encode()) + len(event.encode()) + STORED_OVERHEAD_BYTES


# A room name is at most 64 ASCII characters (app/edge/schemas.py ROOM_PATTERN):
# what a presence entry's worst case is computed from.
MAX_ROOM_BYTES = 64


# A presence entry names an identity (a stream's ``Grant.subject``) of at most
# this many UTF-8 bytes; a longer one is counted, not named (what a MongoDB
# document's worst case is computed from).
MAX_SUBJECT_BYTES = 256


def nameable(sub: str) -> bool:
    """Say whether a presence entry may name the identity ``sub`` (at most ``MAX_SUBJECT_BYTES`` UTF-8 bytes).

    Asked of a worker's own identities too, not only of what it writes: one
    listed and announced by its own worker and only counted by the others made
    ``GET /rooms/R/subscribers`` differ from one worker to the next, and only
    that worker's watchers heard its join.
    """
    return len(sub.encode("utf-8", "surrogatepass")) <= MAX_SUBJECT_BYTES


@dataclass(frozen=True, slots=True)
class PresenceReport:
    """Streams per room: the rooms named, and the rest counted but not named; who follows the named ones.

    A worker's entry, or the sum of several. ``other_streams`` adds each
    unnamed room's streams (a stream following three of them counts three
    times, as it counts once in each named room); summed over workers,
    ``other_rooms`` counts a room once per worker that did not name it.

    Identities (issue 16): ``subs`` names, per named room, the identities
    following it and their streams; ``anonymous`` counts, per named room, the
    streams that have no identity. A room's streams that are in neither
    belong to identities counted but not named (the entry names at most
    ``PRESENCE_MAX_IDENTITIES`` of them); ``other_subs`` counts those
    (room, identity) pairs.
    """

    rooms: dict[str, int] = field(default_factory=dict)
    other_rooms: int = 0
    other_streams: int = 0
    subs: dict[str, dict[str, int]] = field(default_factory=dict)
    anonymous: dict[str, int] = field(default_factory=dict)
    other_subs: int = 0

    def __bool__(self) -> bool:
        return bool(self.rooms) or self.other_rooms > 0

    def plus(self, other: PresenceReport) -> PresenceReport:
        """Return the sum of two reports (a room or identity named in either is named)."""
        rooms = dict(self.rooms)
        for room, streams in other.rooms.items():
            rooms[room] = rooms.get(room, 0) + streams
        subs = {room: dict(named) for room, named in self.subs.items()}
        for room, named in other.subs.items():
            into = subs.setdefault(room, {})
            for sub, streams in named.items():
                into[sub] = into.get(sub, 0) + streams
        anonymous = dict(self.anonymous)
        for room, streams in other.anonymous.items():
            anonymous[room] = anonymous.get(room, 0) + streams
        return PresenceReport(rooms, self.other_rooms + other.other_rooms,
                              self.other_streams + other.other_streams, subs, anonymous,
                              self.other_subs + other.other_subs)

    def unnamed_streams(self, room: str) -> int:
        """Return the room's streams whose identity no entry names (counted, not named)."""
        return (self.rooms.get(room, 0) - self.anonymous.get(room, 0)
                - sum(self.subs.get(room, {}).values()))


# An entry counts while its expiry lies ahead: readers filter on it
# themselves, since no store's own clean-up is prompt enough (MongoDB's TTL
# monitor runs once a minute, FerretDB 1.24 and SQLite have none). An entry
# whose worker died without withdrawing it is deleted this long after it
# expired (by the workers' own writes).
PRESENCE_KEEP_EXPIRED = timedelta(seconds=60)


def presence_expiry(now: datetime, ttl: float) -> datetime:
    """Return when an entry written or refreshed at ``now``, valid for ``ttl`` seconds, stops counting."""
    return now + timedelta(seconds=ttl)


def presence_sweep_before(now: datetime) -> datetime:
    """Return the expiry before which entries are deleted, not only skipped: their workers are long gone."""
    return now - PRESENCE_KEEP_EXPIRED


# One stored entry, as the sum below reads it: its named rooms' (room, streams)
# pairs, then the rooms it counted without naming them and their streams, then
# its named identities' (room, sub, streams), its anonymous (room, streams), and
# the (room, sub) pairs it counted without naming them. An entry written before
# identities were added has none (its streams count as unnamed).
PresenceEntry = tuple[Iterable[tuple[str, int]], int, int, Iterable[tuple[str, str, int]], Iterable[tuple[str, int]],
                      int]


def sum_presence(entries: Iterable[PresenceEntry]) -> PresenceReport:
    """Return the streams per room over the entries, the identities per room, and the unnamed summed."""
    totals: dict[str, int] = {}
    subs: dict[str, dict[str, int]] = {}
    anonymous: dict[str, int] = {}
    other_rooms = other_streams = other_subs = 0
    for rooms, unnamed_rooms, unnamed_streams, identities, anonymous_streams, unnamed_subs in entries:
        for room, streams in rooms:
            totals[room] = totals.get(room, 0) + streams
        for room, sub, streams in identities:
            named = subs.setdefault(room, {})
            named[sub] = named.get(sub, 0) + streams
        for room, streams in anonymous_streams:
            anonymous[room] = anonymous.get(room, 0) + streams
        other_rooms += unnamed_rooms
        other_streams += unnamed_streams
        other_subs += unnamed_subs
    return PresenceReport(totals, other_rooms, other_streams, subs, anonymous, other_subs)


class MessageLog(Protocol):
    """The message part of the seam: one bounded window of messages in store order."""

    def append(self, room: str, text: str, event: str) -> Message:
        """Store a message and return it with its server-made id."""

    def append_once(self, room: str, text: str, event: str, idempotency_key: str) -> Publication:
        """Store a message under a key no message in the window has, or return the one that has it.

        The store enforces it (two concurrent appends with one key, from any
        worker or node, store one message); the key is opaque here, at most
        64 ASCII characters (the edge hands over a digest).
        """

    def read_rooms(self, rooms: Sequence[str], after_id: str | None = None, limit: int | None = None) -> Backlog:
        """Return the rooms' messages after ``after_id``, merged in store order, or all with a reset reason."""

    def read_room(self, room: str, after_id: str | None = None, limit: int | None = None) -> Backlog:
        """Return one room's messages after ``after_id`` in store order, or all with a reset reason."""
        return self.read_rooms((room,), after_id, limit)

    def read_rooms_before(self, rooms: Sequence[str], before_id: str, limit: int) -> Backlog:
        """Return up to ``limit`` of the rooms' messages just before ``before_id``, oldest first (scrollback).

        An id not in the window for these rooms gives the rooms' newest
        ``limit`` messages and the reset reason.
        """

    def newest_id(self) -> str | None:
        """Return the id of the newest message in the window, or None if it is empty."""

    def contains(self, message_id: str) -> bool:
        """Say whether the window holds this id: one indexed look-up (none for a malformed id)."""

    def store_time(self) -> float:
        """Return now in Unix seconds on the clock the store stamps ``createdAt`` with, without a round trip.

        What message expiry measures ages against (``app/delivery/expiry.py``),
        so that every worker of every node agrees.
        """

    def follow(self, after_id: str | None, wakeup: gevent.event.Event) -> Iterator[FeedBatch]:
        """Yield, forever, the messages after ``after_id`` (None: the whole window) in store order.

        An empty batch means "caught up": everything committed so far was yielded.
        """


class PresenceStore(Protocol):
    """The presence part of the seam: each worker's streams per room, shared through the store."""

    def publish_presence(self, worker_id: str, report: PresenceReport, ttl: float) -> None:
        """Replace this worker's presence entry: its streams and identities per room, valid for ``ttl`` seconds."""

    def refresh_presence(self, worker_id: str, ttl: float) -> bool:
        """Make this worker's entry valid for ``ttl`` seconds from now; return False if it is not there."""

    def withdraw_presence(self, worker_id: str) -> None:
        """Remove this worker's presence entry (it is shutting down, or follows nothing any more)."""

    def presence_counts(self, exclude: str | None = None) -> PresenceReport:
        """Return the streams per room summed over every unexpired entry but ``exclude``'s."""


class Store(MessageLog, PresenceStore, Protocol):
    """Both parts of the seam, and the store's lifecycle."""

    def prepare(self) -> None:
        """Open the store and create what it needs, once (every operation prepares it first).

        Raise StoreUnavailable if it cannot be reached or opened now (the app
        starts anyway, and the next use tries again), StoreMisconfigured if it
        must not be used.
        """

    def ping(self) -> None:
        """Answer when the store can take writes (what /readyz reports); raise StoreUnavailable otherwise."""

    def close(self) -> None:
        """Let go of the store's connections and threads."""
