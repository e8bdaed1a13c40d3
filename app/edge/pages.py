"""``/``: the demo page that follows one or more rooms live in the browser."""
from __future__ import annotations

from flask import Blueprint, Response, make_response, render_template, request

from ..services import services
from .schemas import MAX_ROOMS_PER_REQUEST, ROOM_RULE, valid_room

bp = Blueprint("pages", __name__)

DEFAULT_ROOM = "lobby"
SUGGESTED_ROOMS = ("lobby", "general", "random")
# The same rule as ROOM_PATTERN, written for the HTML ``pattern`` attribute,
# which browsers compile with the ``v`` flag (so ``-`` is escaped): one room,
# or up to MAX_ROOMS_PER_REQUEST of them separated by commas.
_ROOM_HTML = r"[A-Za-z0-9_.\-]{1,64}"
ROOM_HTML_PATTERN = rf"\s*{_ROOM_HTML}(\s*,\s*{_ROOM_HTML}){{0,{MAX_ROOMS_PER_REQUEST - 1}}}\s*"



@bp.get("/")
def demo() -> Response:
    """Render the demo page for the rooms named in the query string (``room`` repeated, or comma-separated)."""
    settings = services().settings
    # ``/?room=lobby,ops`` is what a person types in the address bar, as in the page's own field.
    asked = list(dict.fromkeys(room.strip() for value in request.args.getlist("room")
                               for room in value.split(",") if room.strip()))
    rooms = asked if asked and len(asked) <= MAX_ROOMS_PER_REQUEST and all(map(valid_room, asked)) else [DEFAULT_ROOM]
    room_error = None if not asked or asked == rooms else (
        f"rooms must be 1 to {MAX_ROOMS_PER_REQUEST} names of {ROOM_RULE}; showing {DEFAULT_ROOM} instead")
    html = render_template(
        "index.html",
        rooms=rooms,
        room_error=room_error,
        room_pattern=ROOM_HTML_PATTERN,
        suggested_rooms=SUGGESTED_ROOMS,
        retry_ms=settings.retry_ms,
        max_text_chars=settings.max_text_chars,
    )
    # No inline script or style on the page, so the strict policy every
    # response carries (app/edge/security.py) fits it as it is.
    return make_response(html)
