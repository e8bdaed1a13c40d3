"""``/``: the demo page that follows one room live in the browser."""
from __future__ import annotations

from flask import Blueprint, Response, make_response, render_template, request

from ..services import services
from .schemas import ROOM_RULE, valid_room

bp = Blueprint("pages", __name__)

DEFAULT_ROOM = "lobby"
SUGGESTED_ROOMS = ("lobby", "general", "random")
# The same rule as ROOM_PATTERN, written for the HTML ``pattern`` attribute,
# which browsers compile with the ``v`` flag (so ``-`` is escaped).
ROOM_HTML_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"



@bp.get("/")
def demo() -> Response:
    """Render the demo page for the room named in the query string."""
    settings = services().settings
    asked = request.args.get("room")
    room = asked if valid_room(asked) else DEFAULT_ROOM
    room_error = None if asked is None or asked == room else f"room must be {ROOM_RULE}; showing {room} instead"
    html = render_template(
        "index.html",
        room=room,
        room_error=room_error,
        room_pattern=ROOM_HTML_PATTERN,
        suggested_rooms=SUGGESTED_ROOMS,
        retry_ms=settings.retry_ms,
        max_text_chars=settings.max_text_chars,
    )
    # No inline script or style on the page, so the strict policy every
    # response carries (app/edge/security.py) fits it as it is.
    return make_response(html)
