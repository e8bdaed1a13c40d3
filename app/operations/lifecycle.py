"""Worker life-cycle hooks that gunicorn.conf.py wires in.

Start-up: the tailer starts with the worker, not with its first stream, so
the worker's in-memory window is warm (one read of the store's window) by the
time clients come -- after a worker died, thousands of them at once. Its
presence loop starts with it too: this worker's streams per room, written to
the store for the workers of every node (``app/delivery/presence.py``).

Once the window is warm, the worker freezes what it holds then
(``gc.freeze()``): the modules, the app and the warmed window -- some 65,000
objects with a 10,000-message window, that live as long as the worker -- leave the cyclic
collector's generations, so its full collections no longer walk them again
and again while the worker takes thousands of streams at once (the
reconnect storm after a worker died). Objects that die later are still freed
by their reference counts; only a cycle among frozen objects would stay.

Graceful shutdown: on SIGTERM gunicorn's gevent worker stops accepting and
then waits up to ``graceful_timeout`` for its open requests to finish. An SSE
stream never finishes on its own, so without help every shutdown would take
the full timeout and then cut the streams off. Here SIGTERM also asks the
worker's hub to end every stream: each sends a ``retry:`` line with jitter
(so clients do not all come back at once) and ends, and the worker exits as
soon as its requests are done, usually within a second or two. The worker
also withdraws its presence entry at once: its clients are about to be
elsewhere, and counted there.

Quick shutdown (SIGINT, SIGQUIT) is gunicorn's: the worker exits at once.
Ctrl-C on ``make run`` signals the whole process group, so each worker gets
the terminal's SIGINT and then the master's SIGQUIT; gunicorn's gevent worker
runs its exit in a new greenlet for each, and the second one's ``sys.exit``
landed in the middle of the interpreter's shutdown -- a traceback from gevent
and one from PyMongo's exit handler. A worker now quits once.
"""
from __future__ import annotations

import gc
import logging
import signal
from typing import Any

import gevent

log = logging.getLogger(__name__)


def start_tailer(worker: Any) -> None:
    """Start the worker's tailer now, so its window is warm before the first client asks."""
    services = getattr(worker.wsgi, "extensions", {}).get("sse")
    if services is not None:
        services.tailer.ensure_running()


def freeze_when_warm(worker: Any) -> None:
    """Once the window is first warm, take everything alive then out of the cyclic GC's work."""
    services = getattr(worker.wsgi, "extensions", {}).get("sse")
    if services is not None:
        gevent.spawn(_freeze_when_warm, services.window)


def _freeze_when_warm(window: Any) -> None:
    window.ready.wait()
    gc.freeze()
    log.info("window warm: %d objects frozen out of the cyclic GC", gc.get_freeze_count())


def start_presence(worker: Any) -> None:
    """Start writing this worker's streams per room to the store, where every node reads them."""
    services = getattr(worker.wsgi, "extensions", {}).get("sse")
    if services is not None:
        services.presence.start()


def end_streams_on_sigterm(worker: Any) -> None:
    """Make SIGTERM end this gunicorn worker's streams now, not after graceful_timeout."""
    services = getattr(worker.wsgi, "extensions", {}).get("sse")
    if services is None:
        log.warning("no SSE services on %r: streams will wait for graceful_timeout on SIGTERM", worker.wsgi)
        return
    gunicorn_handler = worker.handle_exit
    ending: list[bool] = []

    def end_once() -> None:
        # Once: a stop that signals the whole process group (systemd's default
        # KillMode) sends each worker SIGTERM twice, the master's and its own.
        # Checked here, in a greenlet, where nothing can run between the check
        # and the mark; in the signal handler a second SIGTERM can arrive
        # between the two and run the handler again inside the first.
        if not ending:
            ending.append(True)
            _close_streams(services)

    def on_sigterm(signum: int, frame: Any) -> None:
        gunicorn_handler(signum, frame)  # stop accepting, then wait for open requests
        # Out of the signal handler, as gunicorn does for SIGQUIT: a greenlet
        # may safely touch the hub's structures and wake its streams.
        gevent.spawn(end_once)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn set it: don't break system calls


def quit_once(worker: Any) -> None:
    """Make SIGINT and SIGQUIT quit this gunicorn worker once: the second of the two is already being obeyed.

    Call it after fork and before the worker sets its signals up (post_fork):
    gunicorn installs ``worker.handle_quit``, so a worker still loading the
    app, which Ctrl-C also reaches twice, is covered too.
    """
    gunicorn_handler = worker.handle_quit
    quitting = False

    def handle_quit(signum: int, frame: Any) -> None:
        nonlocal quitting
        if not quitting:
            quitting = True
            gunicorn_handler(signum, frame)

    worker.handle_quit = handle_quit


def _close_streams(services: Any) -> None:
    log.info("SIGTERM: ending %d open streams", services.slots.open)
    services.admission.close()  # every client slot back in one write, not one per stream
    services.hub.close_all()
    services.presence.stop()
