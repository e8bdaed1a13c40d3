"""Gunicorn settings for the SSE server (lowercase names are gunicorn's own).

Values come from the same environment variables the app reads (see README),
through app.config, so a bad value stops start-up with a clear sentence.
"""
# -- Settings first: a bad value stops start-up with one line ----------------------
# gunicorn prints a traceback under "Failed to read config file" for any
# exception raised here; SystemExit is not one, so the sentence that names the
# variable is all that is printed, and the exit status is 1.
#
# Importing app.config imports nothing of the app: app/__init__.py imports nothing on
# purpose. This file runs in the master, before gunicorn forks the workers, and
# the gevent worker monkey-patches only after fork; whatever the master imports
# (flask, pymongo, PyJWT -- ssl's users among them) the workers inherit
# unpatched, and gevent warns that ssl "may silently" misbehave (issue 18).
# tests/test_startup.py keeps it so.
import os
import sys
import tempfile

from app.config import ConfigError, Settings

try:
    _settings = Settings.from_env()
except ConfigError as exc:
    sys.exit(f"sse-rooms: {exc}")

# -- Metrics across workers ----------------------------------------------------------
# prometheus_client's multiprocess mode: each worker writes its metrics to
# files in this directory and GET /metrics adds them up. The variable must be
# in the environment before prometheus_client is first imported -- it picks
# its storage at import -- so it is set here, in the master, and the workers
# inherit it. Left unset, a fresh temporary directory is used.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sse-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]

# -- Streams per client across workers (MAX_STREAMS_PER_CLIENT) ------------------
# The workers count each client's streams in one small LMDB file on this
# node (app/delivery/client_slots.py). Like the metrics directory it belongs to
# this master: set here, before the workers fork, so they inherit the path.
# Left unset, a file in a fresh temporary directory is used. Keep it on a
# local disk (memory-mapped files and their locks do not work on network file systems).
_own_slots_dir = None
if not os.environ.get("CLIENT_SLOTS_PATH"):
    _own_slots_dir = tempfile.mkdtemp(prefix="sse-slots-")
    os.environ["CLIENT_SLOTS_PATH"] = os.path.join(_own_slots_dir, "client-slots.lmdb")
_slots_path = os.environ["CLIENT_SLOTS_PATH"]

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
    """Start from empty metrics and empty client slots: a previous run's would be added in."""
    # child_exit's import, made now: on the first worker death it cost the master
    # 0.6-1.7 s on a loaded core before it forked the replacement (tests/test_startup.py
    # runs child_exit in the master, so it stays clean for the gevent worker).
    from prometheus_client import multiprocess  # noqa: F401

    from app.delivery import client_slots

    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        if name.endswith(".db"):
            os.remove(os.path.join(_metrics_dir, name))
    # Nobody holds the streams a previous master's workers counted.
    client_slots.remove(_slots_path)


def on_exit(server):
    """Remove the directories this configuration made (one it was given is the caller's)."""
    import shutil

    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
    if _own_slots_dir:
        shutil.rmtree(_own_slots_dir, ignore_errors=True)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (open streams) and its clients' slots, whatever killed it."""
    from prometheus_client import multiprocess

    from app.delivery import client_slots

    multiprocess.mark_process_dead(worker.pid)
    # A worker that was killed (-9, OOM) gave nothing back; one that exited
    # cleanly holds nothing, and this is a no-op. Never let it stop the master.
    try:
        held = client_slots.drop_worker(_slots_path, worker.pid)
    except Exception as exc:  # noqa: BLE001 -- the master must outlive any error here
        server.log.error("could not drop the client slots of worker %s from %s: %s", worker.pid, _slots_path, exc)
    else:
        if held:
            server.log.info("worker %s died holding %d client stream slots: given back", worker.pid, held)


# -- Logging and shutdown in each worker -----------------------------------------
def post_fork(server, worker):
    """Send the app's log lines to gunicorn's error log, at its level, redacted and escaped; one send per chunk."""
    import logging

    from app.operations import log_lines, socket_writes
    from app.operations.lifecycle import quit_once

    # Ctrl-C reaches each worker twice (the terminal's SIGINT, the master's SIGQUIT), loading or not.
    quit_once(worker)
    # gevent's sendall costs a getsockopt per write; see app/operations/socket_writes.py.
    socket_writes.install()
    # A log record asks threading.current_thread() for its thread's name; under
    # gevent that makes a _DummyThread (locks, an Event, a clean-up link) for each
    # greenlet that logs -- every stream, for its end line. No format here shows
    # the thread (gunicorn's error log: time, pid, level, message).
    logging.logThreads = False
    app_logger = logging.getLogger("app")
    app_logger.handlers = list(server.log.error_log.handlers)
    app_logger.setLevel(server.log.error_log.level)
    app_logger.propagate = False
    # No token in a line (gunicorn logs a malformed request line whole), and no
    # line a client starts (a %0A in a path): on the handlers, so gunicorn's own
    # lines are covered as well as the app's.
    log_lines.install_on(server.log.error_log.handlers)


def post_worker_init(worker):
    """Zero every metric, warm the window (then freeze it out of the GC), start presence, SIGTERM ends streams."""
    from app.operations.lifecycle import end_streams_on_sigterm, freeze_when_warm, start_presence, start_tailer
    from app.operations.metrics import write_zeros_for_this_worker

    # The master's metric files were removed by on_starting: without this, a
    # scrape lists nothing until a worker happens to update a metric.
    write_zeros_for_this_worker()
    start_tailer(worker)
    freeze_when_warm(worker)
    start_presence(worker)
    end_streams_on_sigterm(worker)

# gunicorn 27 opens a control socket at one fixed path per user; several
# servers on one machine (tests, benchmarks, a second deployment) would fight
# over it, and we do not use it.
control_socket_disable = True
