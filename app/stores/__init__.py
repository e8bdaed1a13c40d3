"""Stores behind one seam of two parts (messages, presence); ``open_store`` picks one from the settings."""
from __future__ import annotations

from ..config import Settings
from .base import (
    Backlog,
    FeedBatch,
    Message,
    MessageLog,
    PositionLost,
    PresenceReport,
    PresenceStore,
    Store,
    StoreMisconfigured,
    StoreUnavailable,
)

__all__ = ["Backlog", "FeedBatch", "Message", "MessageLog", "PositionLost", "PresenceReport", "PresenceStore", "Store",
           "StoreMisconfigured", "StoreUnavailable", "open_store"]


def open_store(settings: Settings) -> Store:
    """Return the MongoDB store when MONGODB_URI is set, else the embedded SQLite one."""
    if settings.mongodb_uri:
        from .mongo import MongoStore  # pymongo is only needed on this path

        return MongoStore(
            settings.mongodb_uri, settings.mongodb_database,
            max_bytes=settings.capped_size_bytes, max_messages=settings.capped_max_messages,
            presence_max_rooms=settings.presence_max_rooms,
            presence_max_identities=settings.presence_max_identities,
        )
    from .sqlite import SQLiteStore

    return SQLiteStore(
        settings.sqlite_path, max_bytes=settings.capped_size_bytes, max_messages=settings.capped_max_messages,
        poll_interval=settings.sqlite_poll_ms / 1000, message_ttl_seconds=settings.message_ttl_seconds,
    )
