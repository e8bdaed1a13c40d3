"""``/rooms``: presence -- who listens where, and what each room holds.

``subscribers`` counts open streams over every worker of every node
(``app/delivery/presence.py``: this worker's own exactly, the others' from
the store, up to about two seconds old); ``messages`` and ``lastMessageAt``
come from this worker's window, the mirror of the store's (a few
milliseconds behind the store, as its tailer is).

With private rooms (``app/edge/authorization.py``) a room's presence is
read as the room is: ``GET /rooms/<room>`` answers 401/403 where a history
read of the room would, and ``GET /rooms`` lists only the rooms the caller
may read (the public ones without a token).
"""
from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, jsonify
from werkzeug.routing import PathConverter

from ..delivery.window import Window
from ..services import Services, services
from ..stores.base import StoreUnavailable
from .authorization import authorization, authorize_reading, token_from_request
from .errors import ApiError
from .schemas import ROOM_RULE, valid_room

bp = Blueprint("rooms", __name__)


class _RestOfPath(PathConverter):
    """Everything after the prefix, empty or with slashes anywhere: a bad room name is a 400, never a 404."""

    regex = r"[\s\S]*"  # "." would stop at a newline (%0A)
    part_isolating = False  # it spans "/" (werkzeug guesses from the regex, which holds none)


# Before the rules below: they are made, at registration, in this order.
bp.record_once(lambda state: state.app.url_map.converters.setdefault("rest_of_path", _RestOfPath))

RETRY_AFTER = "2"
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
    token = token_from_request()
    if token is None:
        return auth.is_public
    grant = auth.verify(token)
    return lambda room: auth.is_public(room) or grant.may_subscribe(room)


def _every_room(room: str) -> bool:
    return True


def _subscribers_and_window(svc: Services) -> tuple[dict[str, int], Window]:
    """Return the subscribers per room over every node, and this worker's window once it is warm."""
    try:
        subscribers = svc.presence.counts()  # counts its failures in the metrics
    except StoreUnavailable:
        raise ApiError(503, "the message store is unavailable, try again shortly",
                       headers={"Retry-After": RETRY_AFTER}) from None
    svc.tailer.ensure_running()  # normally running since the worker started: this is cheap
    if not svc.window.ready.wait(WINDOW_WAIT_SECONDS):
        raise ApiError(503, "this worker is still reading the message store, try again shortly",
                       headers={"Retry-After": RETRY_AFTER})
    return subscribers, svc.window


def _describe(room: str, subscribers: dict[str, int], window: Window) -> dict[str, object]:
    messages, newest = window.room_summary(room)
    return {
        "room": room,
        "subscribers": subscribers.get(room, 0),
        "messages": messages,
        "lastMessageAt": None if newest is None else newest.to_json()["createdAt"],
    }


# No merged slashes either: /rooms//lobby is the room "/lobby" (a 400), not a
# redirect to the lobby.
@bp.get("/rooms/<rest_of_path:room>", merge_slashes=False)
def room_presence(room: str) -> Response:
    if not valid_room(room):
        raise ApiError(400, f"room must be {ROOM_RULE}", {"room": ["invalid"]})
    authorize_reading((room,))  # 401/403, as for the room's stream and history
    subscribers, window = _subscribers_and_window(services())
    return jsonify(_describe(room, subscribers, window))


@bp.get("/rooms")
def rooms_presence() -> Response:
    may_read = may_read_filter()
    subscribers, window = _subscribers_and_window(services())
    names = {room for room, count in subscribers.items() if count > 0}
    names.update(window.rooms())
    return jsonify({"rooms": [_describe(room, subscribers, window) for room in sorted(names) if may_read(room)]})
