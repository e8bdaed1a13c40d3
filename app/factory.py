"""The application factory: it wires things together and does nothing else."""
from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask

from .config import Settings
from .delivery.admission import Admission, StreamSlots
from .delivery.client_slots import ClientSlots
from .delivery.expiry import Expiry
from .delivery.hub import Hub
from .delivery.presence import Presence
from .delivery.tailer import Tailer
from .delivery.window import Window
from .edge.access import init_access
from .edge.authorization import init_authorization
from .edge.closing_connections import close_connections_after
from .edge.errors import register_error_handlers
from .edge.openapi import init_openapi
from .edge.ratelimit import init_rate_limit
from .edge.request_log import register_request_log
from .edge.security import init_security
from .services import Services
from .stores import StoreUnavailable, open_store

log = logging.getLogger(__name__)


def create_app(env: Mapping[str, str] | None = None) -> Flask:
    """Create the app from environment variables (tests pass their own mapping)."""
    settings = Settings.from_env(env)
    app = Flask("app")  # the package: its templates/ and static/, and the "app" logger
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False
    app.json.sort_keys = False

    store = open_store(settings)
    try:
        store.prepare()
    except StoreUnavailable as exc:  # not fatal: readiness says so, and each use retries
        log.warning("message store not reachable at start-up (%s); will retry on use", exc)
    hub = Hub(settings.stream_queue_limit, settings.heartbeat_seconds, settings.stream_write_timeout_seconds)
    window = Window(settings.capped_max_messages, settings.capped_size_bytes,
                    Expiry(settings.message_ttl_seconds, store.store_time))
    tailer = Tailer(store, window, hub)
    worker_slots = StreamSlots(settings.max_streams_per_worker)
    client_slots = ClientSlots(settings.client_slots_path, settings.max_streams_per_client)
    presence = Presence(store, hub, max_rooms=settings.presence_max_rooms,
                        max_identities=settings.presence_max_identities,
                        leave_grace=settings.presence_leave_grace_seconds)
    app.extensions["sse"] = Services(settings, store, window, hub, tailer, worker_slots, presence,
                                     Admission(worker_slots, client_slots))

    from .edge import messages, ops, pages, rooms

    app.register_blueprint(messages.bp)
    app.register_blueprint(rooms.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(ops.bp)
    register_error_handlers(app)
    init_security(app)
    init_access(app, settings)
    init_authorization(app, settings)
    init_rate_limit(app, settings)  # wraps the token check, so failed attempts count too
    init_openapi(app, settings)
    register_request_log(app)
    close_connections_after(app)
    log.info("started with %s store: %s", settings.store_kind, settings.public_summary())
    return app
