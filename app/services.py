"""The per-worker objects the views share, kept on the Flask app."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from .admission import StreamSlots
from .config import Settings
from .hub import Hub
from .stores.base import MessageStore
from .tailer import Tailer
from .window import Window


@dataclass
class Services:
    settings: Settings
    store: MessageStore
    window: Window
    hub: Hub
    tailer: Tailer
    slots: StreamSlots


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["sse"]
