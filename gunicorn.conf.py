"""Gunicorn settings for the SSE server (lowercase names are gunicorn's own).

Values come from the same environment variables the app reads (see README),
through app.config, so a bad value stops start-up with a clear sentence.
"""
# -- Metrics across workers (first: before anything imports prometheus_client) --
# prometheus_client's multiprocess mode: each worker writes its metrics to
# files in this directory and GET /metrics adds them up. The variable must be
# in the environment before prometheus_client is first imported -- it picks
# its storage at import -- and importing app.config below already imports the
# app package, which imports it. So it is set here, first, in the master, and
# the workers inherit it. Left unset, a fresh temporary directory is used.
import os
import tempfile

_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sse-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]

from app.config import Settings  # noqa: E402

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


def on_starting(server):
    """Start from empty metrics: files of a previous run would be added in."""
    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(_metrics_dir, name))


def on_exit(server):
    """Remove the metrics directory this configuration made (one it was given is the caller's)."""
    if _own_metrics_dir:
        import shutil

        shutil.rmtree(_metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (open streams), whatever killed it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# -- Logging and shutdown in each worker -----------------------------------------
def post_fork(server, worker):
    """Send the app's log lines to gunicorn's error log, at its level; one send per chunk written."""
    import logging

    from app.operations import socket_writes

    # gevent's sendall costs a getsockopt per write; see app/operations/socket_writes.py.
    socket_writes.install()

    from app.operations import log_redaction

    # gunicorn logs malformed request lines whole, query-string tokens included.
    log_redaction.install(server.log.error_log)
    app_logger = logging.getLogger("app")
    app_logger.handlers = list(server.log.error_log.handlers)
    app_logger.setLevel(server.log.error_log.level)
    app_logger.propagate = False


def post_worker_init(worker):
    """List every metric at zero, warm the window now, start presence, make SIGTERM end open streams at once."""
    from app.operations.lifecycle import end_streams_on_sigterm, start_presence, start_tailer
    from app.operations.metrics import write_zeros_for_this_worker

    # The master's metric files were removed by on_starting: without this, a
    # scrape lists nothing until a worker happens to update a metric.
    write_zeros_for_this_worker()
    start_tailer(worker)
    start_presence(worker)
    end_streams_on_sigterm(worker)

# gunicorn 27 opens a control socket at one fixed path per user; several
# servers on one machine (tests, benchmarks, a second deployment) would fight
# over it, and we do not use it.
control_socket_disable = True
