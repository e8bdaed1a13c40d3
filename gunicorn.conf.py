"""Gunicorn settings for the SSE server (lowercase names are gunicorn's own).

Values come from the same environment variables the app reads (see README),
through app.config, so a bad value stops start-up with a clear sentence.
"""
from app.config import Settings

_settings = Settings.from_env()

# Where to listen. Behind nginx keep the default loopback address.
bind = f"{_settings.host}:{_settings.port}"

# One process per core is the usual start; each holds thousands of streams.
workers = _settings.web_concurrency

# gevent: every connection is a greenlet, so an open stream costs kilobytes,
# not a thread. The worker monkey-patches before it imports the app, which is
# why preload_app stays off (and why clients are made inside each worker).
worker_class = "gevent"
preload_app = False

# The gevent worker stops accepting once this many connections are open, so
# it must sit well above MAX_STREAMS_PER_WORKER: the app answers 503 to new
# streams beyond that limit, and the headroom keeps POST /messages reachable.
worker_connections = _settings.max_streams_per_worker + 1000

# Longer than nginx's upstream keepalive_timeout (60s in deploy/nginx.conf),
# so nginx always closes an idle upstream connection first and never reuses
# one that gunicorn is closing.
keepalive = 75

# The worker's heartbeat to the master; long-lived streams do not count
# against it (gevent workers notify from their own greenlet).
timeout = 30
graceful_timeout = 10

# Streams are one long request each: no max_requests recycling.
max_requests = 0

loglevel = _settings.log_level
accesslog = None
errorlog = "-"
