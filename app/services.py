"""The per-worker objects the views share, kept on the Flask app."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from .config import Settings
from .delivery.admission import Admission, StreamSlots
from .delivery.hub import Hub
from .delivery.presence import Presence
from .delivery.tailer import Tailer
from .delivery.window import Window
from .stores.base import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    window: Window
    hub: Hub
    tailer: Tailer
    slots: StreamSlots
    presence: Presence
    admission: Admission  # slots per worker and per client; ``slots`` is its worker half


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["sse"]
