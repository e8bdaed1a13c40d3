"""This worker's in-memory mirror of the store's bounded window.

Why it exists: a join or a resume used to ask the store for the room's
messages after the client's Last-Event-ID. On MongoDB that is a walk of the
capped collection in natural order from its oldest document (ids are not in
insertion order, so nothing can seek to the id), and after a worker dies
thousands of clients reconnect at once: thousands of scans of the window. Here
each worker keeps the window itself, fed by its tailer in store order and
warmed once at start, so a join costs what it sends: a dict look-up for the
id and a bisect into the room's own list.

Exact by construction: the tailer appends a batch here and hands the same
entries to the hub without yielding to another greenlet in between, and a
joining stream reads its backlog here and subscribes to the hub without
yielding either. So every message is either in the backlog the stream read or
in its subscription's queue, never both, never neither -- no hand-over to
de-duplicate.

Bounded like the store, by the store's own rule: at most ``max_messages``
entries and ``max_bytes`` counted with ``stored_size`` (the SQLite store's
exact measure, and never more than the BSON size MongoDB charges a document).
So the mirror always holds at least what the store holds: an id it does not
know, once it is ``ready``, is not in the store's window either, and the
stream gets ``reset`` without asking the store.

``ready`` is set once the tailer has read the whole window the store had when
it started; until then (start-up, or after the tailer lost its place and
warms again) joins wait for it.

A joining stream takes its backlog through a ``BacklogCursor``: a position
in store order and the room logs it reads, never a copy of the backlog. It
takes a slice of entries at a time (bounded in encoded bytes), so a stream
that writes slowly holds at most one slice, whatever the window holds. The
window may evict entries the stream has not sent yet meanwhile: the cursor
says so (``BacklogEvicted``) rather than skip them, since eviction is oldest
first and each room log remembers the newest position it dropped.

With ``MESSAGE_TTL_SECONDS`` (``app/delivery/expiry.py``) the window keeps
expired entries -- its bound is the store's, count and bytes -- but never
hands one out: a cursor skips them, the tailer's new entries leave out any
that arrived expired, and ``room_summary``/``rooms`` count only the others.
Keeping them is what lets a resume from an id that has itself expired stay
exact: the window still knows where that id was, and so whether anything
the client had not read has expired since (then ``reset``, reason
``expired``, and what is left) or not (then exactly the rest).
"""
from __future__ import annotations

import heapq
import json
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import gevent
import gevent.event

from ..stores.base import UNKNOWN_ID_REASON, Message, stored_size
from .events import message_event
from .expiry import EXPIRED_REASON, NEVER, Expiry


@dataclass(frozen=True, slots=True)
class Entry:
    """A message as the tailer read it: its position in store order and its SSE bytes, encoded once.

    Only the bytes keep the text: the window's memory is about one copy of
    what it holds, not two. The small fields a reader needs without the text
    are kept beside them: ``created_at`` is the JSON's ``createdAt`` as sent,
    ``created`` the same in Unix seconds (what expiry compares).
    """

    position: int
    id: str
    room: str
    payload: bytes
    size: int
    created_at: str
    created: float

    def to_json(self) -> dict[str, str]:
        """Return the message's public JSON (for history, which sends the text), read back from its data line."""
        # One data line: JSON escapes every line break the text may hold.
        data = next(line for line in self.payload.split(b"\n") if line.startswith(b"data: "))
        return json.loads(data[len(b"data: "):])


class _RoomLog:
    """One room's entries in position order; drops from the front without shifting the list."""

    __slots__ = ("entries", "positions", "head", "dropped_through")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.positions: list[int] = []
        self.head = 0
        # The newest position dropped: a cursor behind it has lost entries.
        self.dropped_through = -1

    def __len__(self) -> int:
        return len(self.entries) - self.head

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.positions.append(entry.position)

    def drop_oldest(self) -> None:
        self.dropped_through = self.positions[self.head]
        self.head += 1
        if self.head > 64 and self.head * 2 > len(self.entries):
            del self.entries[:self.head]
            del self.positions[:self.head]
            self.head = 0

    def newest_position(self) -> int:
        return self.positions[-1] if len(self) else -1

    def between(self, after: int, through: int) -> Iterator[Entry]:
        """Yield the entries with ``after < position <= through``, oldest first (no copy of the list)."""
        entries, positions = self.entries, self.positions
        for index in range(bisect_right(positions, after, self.head), bisect_right(positions, through, self.head)):
            yield entries[index]

    def newest_first_before(self, position: int | None) -> Iterator[Entry]:
        """Yield the entries with a position below ``position`` (None: all), newest first (no copy of the list)."""
        entries = self.entries
        end = len(entries) if position is None else bisect_left(self.positions, position, self.head)
        for index in range(end - 1, self.head - 1, -1):
            yield entries[index]

    def forget(self, dropped_through: int) -> None:
        """Drop everything up to ``dropped_through``: the window let go of this log (a cursor may still hold it)."""
        self.dropped_through = max(self.dropped_through, dropped_through)
        self.entries = []
        self.positions = []
        self.head = 0


def _position(entry: Entry) -> int:
    return entry.position


def _newest_unexpired(log: _RoomLog, cutoff: float) -> Entry | None:
    """Return the room's newest entry created at or after ``cutoff`` (searched from the newest), or None."""
    for index in range(len(log.entries) - 1, log.head - 1, -1):
        if log.entries[index].created >= cutoff:
            return log.entries[index]
    return None


@dataclass(frozen=True, slots=True)
class WindowBacklog:
    """The rooms' entries after a resume point, as the window holds them, or all with a reason.

    (Not ``stores.base.Backlog``, the store's answer to the same question.)
    """

    entries: list[Entry]
    reset_reason: str | None = None


class BacklogEvicted(Exception):
    """The window evicted entries a backlog cursor had still to send."""


class BacklogCursor:
    """A join's backlog as a position in the window: what it has sent so far, never a copy of what is left.

    The backlog is every entry of the rooms up to the newest each room held
    at the join (later entries reach the stream through its subscription).
    ``last_id`` is the id of the last entry taken (the client's resume point
    once written), or the join's own id: the client's, or, for a join that
    asked for only the newest entries, the one just before them (None when
    it starts at the oldest).
    """

    __slots__ = ("_logs", "after", "last_id", "reset_reason", "_expiry")

    def __init__(self, logs: list[tuple[_RoomLog, int]], after: int, last_id: str | None,
                 reset_reason: str | None, expiry: Expiry = NEVER) -> None:
        self._logs = logs  # each room's log and its newest position at the join
        self.after = after
        self.last_id = last_id
        self.reset_reason = reset_reason
        self._expiry = expiry

    def pending(self) -> Iterator[Entry]:
        """Iterate over the unexpired entries not taken yet, in store order; ``BacklogEvicted`` if one was dropped.

        Expiry is judged now, at each call: an entry that expires while a
        slow backlog is written is skipped, never sent late.
        """
        cutoff = self._expiry.cutoff()
        if cutoff is None:
            return self._all_pending()
        return (entry for entry in self._all_pending() if entry.created >= cutoff)

    def _all_pending(self) -> Iterator[Entry]:
        parts = []
        for log, through in self._logs:
            if self.after < through:
                if log.dropped_through > self.after:
                    # Eviction is oldest first: the entries after ``after`` it
                    # reached include one of this room up to ``through``.
                    raise BacklogEvicted(f"the window evicted entries after {self.last_id!r} before they were sent")
                parts.append(log.between(self.after, through))
        if len(parts) == 1:
            return parts[0]
        return heapq.merge(*parts, key=_position)

    def take(self, max_bytes: int) -> list[Entry]:
        """Return the next entries in store order, at most ``max_bytes`` of payload but at least one; [] at the end.

        Raise ``BacklogEvicted`` if the window dropped one not taken yet.
        """
        taken: list[Entry] = []
        size = 0
        for entry in self.pending():
            size += len(entry.payload)
            if taken and size > max_bytes:
                break
            taken.append(entry)
        if taken:
            self.after = taken[-1].position
            self.last_id = taken[-1].id
        return taken


class Window:
    """The store's window of messages, in store order, indexed by id and by room."""

    def __init__(self, max_messages: int, max_bytes: int, expiry: Expiry = NEVER) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.expiry = expiry
        self.ready = gevent.event.Event()
        self._entries: deque[Entry] = deque()
        self._by_id: dict[str, Entry] = {}
        self._rooms: dict[str, _RoomLog] = {}
        self._bytes = 0
        self.payload_bytes = 0  # of the encoded events held: most of the window's memory

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget everything and wait for the tailer to warm the window again."""
        self.ready.clear()
        newest = self._entries[-1].position if self._entries else -1
        for room in self._rooms.values():
            room.forget(newest)  # a cursor still reading one ends rather than read what is gone
        self._entries.clear()
        self._by_id.clear()
        self._rooms.clear()
        self._bytes = 0
        self.payload_bytes = 0

    def extend(self, batch: Iterable[tuple[int, Message]]) -> list[Entry]:
        """Add messages read in store order, evict beyond the bound; return the new entries that have not expired."""
        added = []
        for position, message in batch:
            if message.id in self._by_id:
                # Natural order never repeats a document, but a store may re-send
                # one (FerretDB 1.24 does, see docs/testing.md): never deliver it twice.
                continue
            body = message.to_json()
            entry = Entry(position, message.id, message.room, message_event(body),
                          stored_size(message.room, message.text, message.event), body["createdAt"],
                          message.created_at.timestamp())
            self._entries.append(entry)
            self._by_id[message.id] = entry
            room = self._rooms.get(message.room)
            if room is None:
                room = self._rooms[message.room] = _RoomLog()
            room.append(entry)
            self._bytes += entry.size
            self.payload_bytes += len(entry.payload)
            added.append(entry)
        while len(self._entries) > self.max_messages or self._bytes > self.max_bytes:
            self._evict_oldest()
        cutoff = self.expiry.cutoff()
        if cutoff is not None:
            # Held (a resume may name it), never published: a tailer that was
            # away longer than the TTL reads messages that are already too old.
            added = [entry for entry in added if entry.created >= cutoff]
        return added

    def _evict_oldest(self) -> None:
        entry = self._entries.popleft()
        self._bytes -= entry.size
        self.payload_bytes -= len(entry.payload)
        del self._by_id[entry.id]
        room = self._rooms[entry.room]
        room.drop_oldest()
        if not room:
            room.forget(entry.position)  # a cursor may hold it: let go of the evicted entries all the same
            del self._rooms[entry.room]

    def backlog(self, rooms: Sequence[str], after_id: str | None, limit: int | None = None) -> WindowBacklog:
        """Return the rooms' entries after ``after_id`` (None: all) in store order, or all with a reset reason.

        One id resumes any set of rooms: positions are one order across rooms.
        Only call once ``ready`` is set: before that a miss proves nothing.
        """
        cursor = self.cursor(rooms, after_id)
        return WindowBacklog(list(islice(cursor.pending(), limit)), cursor.reset_reason)

    def cursor(self, rooms: Sequence[str], after_id: str | None, newest: int | None = None) -> BacklogCursor:
        """Return a cursor over the rooms' entries after ``after_id`` (None: all), or over all with a reset reason.

        One id resumes any set of rooms: positions are one order across rooms.
        ``newest`` (the stream's ``backlog``) bounds a join that has no id it
        can resume from -- none given, or one not held -- to the rooms' newest
        ``newest`` entries; a resume from a held id ignores it (it is exact).
        The cursor then starts after the entry just before them, as if the
        client had read that one: a re-join of the same stream (a resync)
        resumes from there, not from the whole window.
        Only call once ``ready`` is set: before that a miss proves nothing.
        """
        reason = None
        # Just before the oldest held, rather than -1: evictions that came
        # before the join are none of this cursor's loss.
        position = self._entries[0].position - 1 if self._entries else -1
        resume_id = None
        if after_id is not None:
            entry = self._by_id.get(after_id)
            if entry is None or entry.room not in rooms:
                # One reason for both: ids of private rooms must not be told apart from unknown ones.
                reason = UNKNOWN_ID_REASON
            else:
                position, resume_id = entry.position, after_id
        logs = [(log, log.newest_position()) for log in map(self._rooms.get, rooms) if log is not None]
        if resume_id is not None and self._expired_after(logs, position):
            # Not exact any more: the client would never learn what it missed.
            # Like any reset, the rooms' unexpired window (or newest N) follows.
            reason, resume_id = EXPIRED_REASON, None
            position = self._entries[0].position - 1
        if resume_id is None and newest is not None:
            # The newest ``newest`` unexpired and the one before them, newest first.
            recent = self.newest_first_before(rooms, None, newest + 1)
            if len(recent) > newest:
                position, resume_id = recent[-1].position, recent[-1].id
        return BacklogCursor(logs, position, resume_id, reason, self.expiry)

    def _expired_after(self, logs: list[tuple[_RoomLog, int]], position: int) -> bool:
        """Say whether any of these logs' entries after ``position`` has expired (each judged by its own stamp)."""
        cutoff = self.expiry.cutoff()
        if cutoff is None:
            return False
        return any(entry.created < cutoff for log, through in logs for entry in log.between(position, through))

    def newest_first_before(self, rooms: Sequence[str], position: int | None, limit: int) -> list[Entry]:
        """Return up to ``limit`` of the rooms' unexpired entries before ``position`` (None: newest), newest first."""
        parts = [log.newest_first_before(position) for log in map(self._rooms.get, rooms) if log is not None]
        newest_first = parts[0] if len(parts) == 1 else heapq.merge(*parts, key=_position, reverse=True)
        cutoff = self.expiry.cutoff()
        if cutoff is not None:
            newest_first = (entry for entry in newest_first if entry.created >= cutoff)
        return list(islice(newest_first, limit))

    def before(self, rooms: Sequence[str], before_id: str, limit: int) -> WindowBacklog:
        """Return up to ``limit`` of the rooms' entries just before ``before_id``, oldest first (scrollback).

        An id it does not hold for these rooms gives the reset reason and the
        rooms' newest ``limit`` entries: the page a client without a point
        starts from. Only call once ``ready`` is set.
        """
        entry = self._by_id.get(before_id)
        if entry is None or entry.room not in rooms:
            return WindowBacklog(self.newest_first_before(rooms, None, limit)[::-1], UNKNOWN_ID_REASON)
        return WindowBacklog(self.newest_first_before(rooms, entry.position, limit)[::-1])

    def rooms(self) -> list[str]:
        """Return the rooms that have unexpired messages in the window."""
        cutoff = self.expiry.cutoff()
        if cutoff is None:
            return list(self._rooms)
        return [room for room, log in self._rooms.items() if _newest_unexpired(log, cutoff) is not None]

    def room_summary(self, room: str) -> tuple[int, Entry | None]:
        """Return how many of the room's unexpired messages the window holds, and the newest of them."""
        log = self._rooms.get(room)
        if log is None:
            return 0, None
        cutoff = self.expiry.cutoff()
        if cutoff is None:
            return len(log), log.entries[-1]
        count = sum(1 for entry in islice(log.entries, log.head, None) if entry.created >= cutoff)
        return count, _newest_unexpired(log, cutoff)

    def holds(self, message_id: str) -> bool:
        """Say whether the window holds this id (any room)."""
        return message_id in self._by_id

    def wait_to_hold(self, message_id: str, timeout: float) -> bool:
        """Wait until the tailer has read ``message_id`` (committed, maybe by another worker); say if it did."""
        deadline = time.monotonic() + timeout
        while not self.holds(message_id):
            if not self.ready.is_set() or time.monotonic() > deadline:
                return False
            gevent.sleep(0.005)
        return True
