"""``/rooms``: presence -- who listens where, and what each room holds.

``subscribers`` counts open streams over every worker of every node
(``app/delivery/presence.py``: this worker's own exactly, the others' from
the store, up to about two seconds old); ``messages`` and ``lastMessageAt``
come from this worker's window, the mirror of the store's (a few
milliseconds behind the store, as its tailer is).

``GET /rooms/<room>/subscribers`` (issue 16) lists who follows the room: the
distinct identities of its streams (``Grant.subject``: the token's ``sub``,
or the one the subscribe hook named) by ``sub``, ``limit`` (1-1000, default
100) after ``after``, with how many streams each has open, the streams with
no identity (``anonymous``) and those of identities that no worker's entry
names (``unnamed``: each names at most ``PRESENCE_MAX_IDENTITIES``). Nobody
there is an empty list, never a 404.

``GET /rooms`` pages by room name: ``limit`` rooms (1-1000, default 100)
after the room ``after``; ``hasMore`` and ``next`` (the ``after`` of the next
page) say whether there is more. Rooms that no worker's presence entry names
(each names ``PRESENCE_MAX_ROOMS``: those with someone it named already, then
those with someone to name, then its busiest) are summed in ``otherRooms``.

With private rooms (``app/edge/authorization.py``) a room's presence is
read as the room is: ``GET /rooms/<room>`` and ``GET /rooms/<room>/subscribers``
answer 401/403 where a history read of the room would, and ``GET /rooms`` lists only the rooms the caller
may read (the public ones without a token).
"""
from __future__ import annotations

import re
from collections.abc import Callable

from flask import Blueprint, Response, jsonify, request
from werkzeug.routing import PathConverter

from ..delivery.window import Window
from ..services import Services, services
from ..stores.base import StoreUnavailable
from .authorization import authorization, authorize_reading, token_from_request
from .errors import STORE_UNAVAILABLE, ApiError, unavailable
from .schemas import ROOM_RULE, ROOMS_MAX_LIMIT, SUBSCRIBERS_MAX_AFTER_CHARS, SUBSCRIBERS_MAX_LIMIT, valid_room

bp = Blueprint("rooms", __name__)


class _RestOfPath(PathConverter):
    """Everything after the prefix, empty or with slashes anywhere: a bad room name is a 400, never a 404."""

    regex = r"[\s\S]*"  # "." would stop at a newline (%0A)
    part_isolating = False  # it spans "/" (werkzeug guesses from the regex, which holds none)


# Before the rules below: they are made, at registration, in this order.
bp.record_once(lambda state: state.app.url_map.converters.setdefault("rest_of_path", _RestOfPath))

ROOMS_DEFAULT_LIMIT = 100
SUBSCRIBERS_DEFAULT_LIMIT = 100
WINDOW_WAIT_SECONDS = 2.0  # at a worker's start, while its tailer warms the window


def may_read_filter() -> Callable[[str], bool]:
    """Return ``may_read(room)`` for the current request: whether ``GET /rooms`` may list that room.

    Every room while authorization is off; else the public rooms and those
    the request's token may subscribe to. A token that does not verify is
    401, as anywhere else: the caller meant to be someone.
    """
    auth = authorization()
    if not auth.enabled:
        return _every_room
    token = token_from_request() if auth.tokens else None
    if token is None:
        # The subscribe hook is not asked room by room: a list of rooms shows the public ones to a request
        # without a token (each private room's own GET /rooms/<room> asks it).
        return auth.is_public
    grant = auth.verify(token)
    return lambda room: auth.is_public(room) or grant.may_subscribe(room)


def _every_room(room: str) -> bool:
    return True


def _ready_window(svc: Services) -> Window:
    """Return this worker's window once it is warm."""
    svc.tailer.ensure_running()  # normally running since the worker started: this is cheap
    if not svc.window.ready.wait(WINDOW_WAIT_SECONDS):
        raise unavailable("this worker is still reading the message store, try again shortly")
    return svc.window


def _describe(room: str, subscribers: int, window: Window) -> dict[str, object]:
    messages, newest = window.room_summary(room)
    return {
        "room": room,
        "subscribers": subscribers,
        "messages": messages,
        "lastMessageAt": None if newest is None else newest.created_at,
    }


# Registered before the room's own rule, and with no slash in the room: it
# wins for /rooms/<room>/subscribers, and a room named "subscribers" is still
# /rooms/subscribers.
@bp.get("/rooms/<room>/subscribers", merge_slashes=False)
def room_subscribers(room: str) -> Response:
    """Who follows the room: distinct identities by ``sub``, a page at a time, and the anonymous streams."""
    if not valid_room(room):
        raise ApiError(400, f"room must be {ROOM_RULE}", {"room": ["invalid"]})
    limit = _whole_number(_single("limit"), "limit", SUBSCRIBERS_MAX_LIMIT, SUBSCRIBERS_DEFAULT_LIMIT)
    after = _single("after")
    if after is not None and not 0 < len(after) <= SUBSCRIBERS_MAX_AFTER_CHARS:
        raise ApiError(400, f"after must be 1 to {SUBSCRIBERS_MAX_AFTER_CHARS} characters: the next (last sub) of "
                            f"the previous page", {"after": ["invalid"]})
    authorize_reading((room,))  # 401/403, as for the room's stream and history
    try:
        who = services().presence.identities(room)  # counts its failures in the metrics
    except StoreUnavailable:
        raise unavailable(STORE_UNAVAILABLE) from None
    # By sub, from just after ``after``: one who comes or goes between two pages moves no one else.
    ordered = sorted(sub for sub in who.subs if after is None or sub > after)
    page = ordered[:limit]
    return jsonify({
        "room": room,
        "subscribers": [{"sub": sub, "streams": who.subs[sub]} for sub in page],
        "anonymous": who.anonymous,
        "unnamed": who.unnamed,
        "hasMore": len(ordered) > limit,
        "next": page[-1] if len(ordered) > limit else None,
    })


def _single(name: str) -> str | None:
    """Return the query parameter ``name`` (None when absent), or raise the 400 for one given more than once."""
    given = request.args.getlist(name)
    if len(given) > 1:
        raise ApiError(400, f"{name} must be given at most once, got {len(given)}", {name: ["repeated"]})
    return given[0] if given else None


def _whole_number(raw: str | None, name: str, high: int, default: int) -> int:
    """Return ``raw`` as a whole number from 1 to ``high`` (None: ``default``), or raise the 400 that names it."""
    if raw is None:
        return default
    # ASCII digits only: int() would also take " 5", "+5", "5_0" and "５".
    value = int(raw) if re.fullmatch(r"[0-9]{1,7}", raw) else 0
    if not 1 <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from 1 to {high}", {name: ["invalid"]})
    return value


# No merged slashes either: /rooms//lobby is the room "/lobby" (a 400), not a
# redirect to the lobby.
@bp.get("/rooms/<rest_of_path:room>", merge_slashes=False)
def room_presence(room: str) -> Response:
    if not valid_room(room):
        raise ApiError(400, f"room must be {ROOM_RULE}", {"room": ["invalid"]})
    authorize_reading((room,))  # 401/403, as for the room's stream and history
    svc = services()
    try:
        subscribers = svc.presence.subscribers(room)  # counts its failures in the metrics
    except StoreUnavailable:
        raise unavailable(STORE_UNAVAILABLE) from None
    return jsonify(_describe(room, subscribers, _ready_window(svc)))


def _page_parameters() -> tuple[int, str | None]:
    """Return ``limit`` and ``after`` from the query string, or raise a 400 that names the bad one."""
    raw_limit = request.args.get("limit")
    limit = ROOMS_DEFAULT_LIMIT
    if raw_limit is not None:
        # ASCII digits only: int() would also take " 5", "+5", "5_0" and "５".
        limit = int(raw_limit) if re.fullmatch(r"[0-9]{1,7}", raw_limit) else 0
        if not 1 <= limit <= ROOMS_MAX_LIMIT:
            raise ApiError(400, f"limit must be a whole number from 1 to {ROOMS_MAX_LIMIT}", {"limit": ["invalid"]})
    after = request.args.get("after")
    if after is not None and not valid_room(after):
        raise ApiError(400, f"after must be a room name ({ROOM_RULE}): the last room of the previous page",
                       {"after": ["invalid"]})
    return limit, after


@bp.get("/rooms")
def rooms_presence() -> Response:
    limit, after = _page_parameters()
    may_read = may_read_filter()
    svc = services()
    try:
        report = svc.presence.report()  # counts its failures in the metrics
    except StoreUnavailable:
        raise unavailable(STORE_UNAVAILABLE) from None
    window = _ready_window(svc)
    names = {room for room, count in report.rooms.items() if count > 0}
    names.update(window.rooms())
    # By name, from just after ``after``: a room that comes or goes between
    # two pages moves no other room from one page to another.
    ordered = sorted(name for name in names if after is None or name > after)
    page: list[str] = []
    more = False
    for room in ordered:
        if not may_read(room):
            continue
        if len(page) == limit:
            more = True
            break
        page.append(room)
    return jsonify({
        "rooms": [_describe(room, report.rooms.get(room, 0), window) for room in page],
        "hasMore": more,
        "next": page[-1] if more else None,
        "otherRooms": {"rooms": report.other_rooms, "subscribers": report.other_streams},
    })
