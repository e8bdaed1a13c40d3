"""One adapter per system under test: how to start it, subscribe and publish.

Every adapter answers the same four questions, so the scenarios never know
which system they drive:
  start(workdir, cpus)      -> a ServerGroup, listening on loopback (on cores `cpus`)
  subscribe_path(room)      -> the GET path of an SSE stream for the room
  publish_request(room, t)  -> URL, body and content type that publish text t
  unavailable()             -> why the system cannot run here, or None
How receivers find our payload inside each system's events is the same for
all of them (see marker.py), so no adapter needs to parse events.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from .processes import ServerGroup, free_port, wait_for_port
from .resuming import centrifugo_resume_path

BENCH_DIR = Path(__file__).resolve().parent.parent
PEERS_DIR = BENCH_DIR / "peers"
BENCH_VENV_BIN = Path(sys.executable).parent
# Where bench/install.sh puts the Go-built peers (outside the repo, kept between runs).
PEER_BUILDS = Path(os.environ.get("SSE_ROOMS_CACHE", Path.home() / ".cache" / "sse-rooms"))
CENTRIFUGO_VERSION = "v6.9.1"
MERCURE_VERSION = "v0.21.4"
# Each room's history in the peers that keep one: as many messages as our
# window (CAPPED_MAX_MESSAGES, 10,000 by default), so resumes can reach as far back.
HISTORY_SIZE = 10000


def _caddy_version() -> str:
    """The Caddy version bench/peers/mercure/go.mod pins (for the report)."""
    for line in (PEERS_DIR / "mercure" / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "github.com/caddyserver/caddy/v2":
            return parts[1]
    return "(version unknown)"



# Our own server's rows in the report: never counted as a peer.
OURS = ("ours", "ours-mongodb")
# Every system gets the same shape: 2 worker processes, 15 s heartbeats.
WORKERS = 2
HEARTBEAT_SECONDS = 15


@dataclass(frozen=True)
class PublishRequest:
    url: str
    body: bytes
    content_type: str
    headers: dict[str, str] | None = None  # e.g. the publisher's credentials

    def all_headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, **(self.headers or {})}


class System:
    """Base adapter; subclasses fill in the four questions."""

    name = ""
    description = ""
    # Caveats a reader of the report needs to read this system's rows right.
    caveats: tuple[str, ...] = ()
    # False where the response head waits for the first event (Flask-SSE):
    # a stream then counts as held once its request is sent and not refused.
    head_before_first_event = True
    # The reconnect storm needs streams that resume where they stopped, and
    # how they say where (resuming.RESUME_STYLES).
    resumable = False
    resume_style = "last-event-id"
    # Where this system's per-process metric files are (ours: prometheus_client
    # multiprocess files), for the store queries per resume; None: none.
    metrics_dir: Path | None = None
    # Each worker keeps a copy of the history of its own, which it takes in on
    # its own (ours: the window); False: one copy serves every worker.
    history_per_worker = False
    # The reconnect storm's window (CAPPED_MAX_MESSAGES and the fill) when this
    # system cannot tail the plan's; None: the plan's (storm_fill).
    storm_window: int | None = None

    def __init__(self) -> None:
        self.port = 0
        self.publish_base = ""
        self.group: ServerGroup | None = None

    def unavailable(self) -> str | None:
        return None

    def start(self, workdir: Path, cpus: str | None = None, env: dict[str, str] | None = None) -> ServerGroup:
        """Start the system; `cpus` pins its processes ("0"), `env` adds settings."""
        raise NotImplementedError

    def subscribe_path(self, room: str) -> str:
        raise NotImplementedError

    def publish_request(self, room: str, text: str) -> PublishRequest:
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        """Processes that hold client streams (for the cross-worker spread)."""
        return []

    def history_url(self, room: str, after: str | None) -> str | None:
        """URL of a page of the room's stored messages in store order; None: no such API."""
        return None

    def history_stream_request(self, room: str) -> tuple[str, dict[str, str]] | None:
        """(path, headers) of a stream that asks for the room's whole stored history, the way
        this system resumes from the beginning; None: it keeps no history (the hostile scenario)."""
        return None

    def restart_workers(self, timeout: float) -> bool:
        """Replace the worker processes with new ones, as an operator's reload would; False: cannot."""
        return False


class OurServer(System):
    name = "ours"
    description = "this repo: Flask + gevent + gunicorn, SQLite store"
    resumable = True
    history_per_worker = True

    def __init__(self, repo_root: Path) -> None:
        super().__init__()
        self.repo_root = repo_root

    def unavailable(self) -> str | None:
        needed = [".venv/bin/gunicorn", "gunicorn.conf.py", "wsgi.py"]
        missing = [name for name in needed if not (self.repo_root / name).exists()]
        if missing:
            return f"server not found in {self.repo_root} (missing {', '.join(missing)})"
        return None

    def start(self, workdir: Path, cpus: str | None = None, env: dict[str, str] | None = None) -> ServerGroup:
        self.port = free_port()
        self.publish_base = f"http://127.0.0.1:{self.port}"
        group = ServerGroup(workdir)
        self.group = group
        self._start_gunicorn(group, workdir, cpus, {**self._store_env(group, workdir, cpus), **(env or {})})
        return group

    def _store_env(self, group: ServerGroup, workdir: Path, cpus: str | None) -> dict[str, str]:
        # MONGODB_URI empty: the SQLite store even where the environment names a MongoDB.
        return {"SQLITE_PATH": str(workdir / "messages.sqlite3"), "MONGODB_URI": ""}

    def _start_gunicorn(self, group: ServerGroup, workdir: Path, cpus: str | None, env: dict[str, str]) -> None:
        # A metrics directory of the run's own: the storm reads each worker's
        # counter file in it, and it goes with the temp dir.
        self.metrics_dir = workdir / "metrics"
        self.metrics_dir.mkdir(exist_ok=True)
        self.gunicorn = group.launch(
            "ours",
            [str(self.repo_root / ".venv/bin/gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=self.repo_root,
            env={
                "PORT": str(self.port),
                "HOST": "127.0.0.1",
                "WEB_CONCURRENCY": str(WORKERS),
                "HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
                "MAX_STREAMS_PER_WORKER": "20000",
                # The load generator is one client (127.0.0.1) holding every stream:
                # without this it would meet the per-client limit (2000) long before the workers'.
                "MAX_STREAMS_PER_CLIENT": "40000",
                # Logs off, as for every peer: a line per request is CPU we measure.
                "LOG_LEVEL": "warning",
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
                **env,
            },
            cpus=cpus,
        )
        wait_for_port(self.port, group)

    def subscribe_path(self, room: str) -> str:
        return f"/messages?room={room}"

    def publish_request(self, room: str, text: str) -> PublishRequest:
        body = json.dumps({"room": room, "text": text}).encode()
        return PublishRequest(f"{self.publish_base}/messages", body, "application/json")

    def worker_pids(self) -> list[int]:
        return _children(self.gunicorn.pid) if self.group else []

    def restart_workers(self, timeout: float) -> bool:
        # gunicorn's reload (SIGHUP): new workers, each warming its window from
        # the store; the old ones stop gracefully. Done when none of them is left.
        old = set(self.worker_pids())
        os.kill(self.gunicorn.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = set(self.worker_pids())
            if len(workers) == WORKERS and not workers & old:
                return True
            time.sleep(0.2)
        return False

    def history_url(self, room: str, after: str | None) -> str | None:
        url = f"{self.publish_base}/messages/history?room={room}&limit=1000"
        return url + f"&after={after}" if after else url

    def history_stream_request(self, room: str) -> tuple[str, dict[str, str]] | None:
        # No Last-Event-ID: the stream starts with the room's whole window.
        return self.subscribe_path(room), {}


class OurServerOnMongo(OurServer):
    """Our server on its MongoDB store, with FerretDB standing in for MongoDB."""

    name = "ours-mongodb"
    description = (
        "this repo on its MongoDB store, served by FerretDB 1.24.2 (MongoDB wire protocol,"
        " SQLite backend) in place of MongoDB: store costs are FerretDB's, not MongoDB's"
    )
    caveats = (
        "The store is FerretDB 1.24.2 with its SQLite backend, not MongoDB: every store"
        " query and its cost are FerretDB's (a room's read scans the whole collection)."
        " FerretDB trims a capped collection in the background (every minute, by default),"
        " so the window can hold more than CAPPED_MAX_MESSAGES for a while.",
        "FerretDB 1.24.2's tailable cursor (SQLite backend), which each worker's tailer reads,"
        " sends again on every getMore each document inserted since the cursor reached the end,"
        " and a getMore on a 10,000-document collection takes seconds (a probe with pymongo:"
        " 5 inserts 2 s apart came back 59 times in 25 s on 2,000 documents; on 10,000 the"
        " first new document took 7 s). Live delivery on this row is bound by that, not by our"
        " server's resume path.",
    )
    # The storm at the plan's 10,000: the tailer's getMores on FerretDB take seconds
    # each; on the full runs of 2026-12-01 no stream was exact (lost 128,277). 2,000
    # (the quick mode's window) is the window this row's storm uses instead. On a
    # quiet machine (2026-12-06-0815-storm) it was tailed, late (all caught up 87 s
    # after the kill) and with FerretDB's re-sends (25,282 duplicates). The soak keeps
    # the plan's window: at 2,000 its kept streams still lost 2,650 of 4,503 messages
    # at 50 messages/s (2026-12-06-0820-soak), no better tailed than at 10,000.
    storm_window = 2000

    def __init__(self, repo_root: Path) -> None:
        super().__init__(repo_root)
        self.ferretdb: str | None = None

    def unavailable(self) -> str | None:
        missing = super().unavailable()
        if missing:
            return missing
        self.ferretdb, reason = _ferretdb_binary()
        return reason

    def _store_env(self, group: ServerGroup, workdir: Path, cpus: str | None) -> dict[str, str]:
        assert self.ferretdb is not None
        data = workdir / "ferretdb"
        data.mkdir(exist_ok=True)
        mongo_port = free_port()
        group.launch(
            "ferretdb",
            [
                self.ferretdb,
                "--handler=sqlite",
                f"--sqlite-url=file:{data}/",
                f"--listen-addr=127.0.0.1:{mongo_port}",
                "--telemetry=disable",
                "--state-dir=-",
                "--debug-addr=-",
                "--log-level=WARN",
            ],
            cwd=workdir,
            env={},
            cpus=cpus,
        )
        wait_for_port(mongo_port, group)
        return {
            "MONGODB_URI": f"mongodb://127.0.0.1:{mongo_port}",
            "MONGODB_DATABASE": f"ssebench_{os.getpid()}_{int(time.time())}",
        }


class Nchan(System):
    name = "nchan"
    description = "nginx 1.22 + Nchan 1.3.6 (Debian), 2 workers"
    resumable = True  # its EventSource subscribers resume from Last-Event-ID

    def unavailable(self) -> str | None:
        module = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
        if not shutil.which("nginx") or not module.exists():
            return "nginx or libnginx-mod-nchan not installed (run bench/install.sh)"
        return None

    def start(self, workdir: Path, cpus: str | None = None, env: dict[str, str] | None = None) -> ServerGroup:
        self.port = free_port()
        self.publish_base = f"http://127.0.0.1:{self.port}"
        prefix = workdir / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        config = (PEERS_DIR / "nchan.conf").read_text()
        config = config.replace("@PREFIX@", str(prefix)).replace("@PORT@", str(self.port))
        (prefix / "nginx.conf").write_text(config)
        group = ServerGroup(workdir)
        group.launch(
            "nchan",
            [
                shutil.which("nginx") or "nginx",
                "-p", str(prefix),
                "-c", str(prefix / "nginx.conf"),
                "-e", str(prefix / "error.log"),
                "-g", "daemon off;",
            ],
            cwd=prefix,
            env={},
            cpus=cpus,
        )
        self.group = group
        wait_for_port(self.port, group)
        return group

    def subscribe_path(self, room: str) -> str:
        return f"/sub?room={room}"

    def history_stream_request(self, room: str) -> tuple[str, dict[str, str]] | None:
        # No Last-Event-ID: nchan_subscriber_first_message is `oldest` by default,
        # so a new subscriber starts with the channel's whole message buffer.
        return self.subscribe_path(room), {}

    def publish_request(self, room: str, text: str) -> PublishRequest:
        return PublishRequest(f"{self.publish_base}/pub?room={room}", text.encode(), "text/plain")

    def worker_pids(self) -> list[int]:
        return self.group.pids()[1:] if self.group else []


class Pushpin(System):
    name = "pushpin"
    description = "Pushpin 1.36 (Debian) + GRIP backend, publish over HTTP"
    caveats = (
        "Seen while building this bench, with one subscriber and with many: once a channel"
        " gets more than ~50 messages/s, Pushpin holds the stream output until publishing"
        " pauses (1-2 s delays) while its processes sit nearly idle, whether messages are"
        " published over HTTP or ZeroMQ; its fan-out ladder stops early for that reason.",
        "Under a wide subscribe wave some requests get 502/500 from Pushpin, and a few"
        " streams got a 200 head but never a subscription (they count as lost deliveries);"
        " failed opens are retried once.",
    )

    def unavailable(self) -> str | None:
        if not shutil.which("pushpin"):
            return "pushpin not installed (run bench/install.sh)"
        return None

    def start(self, workdir: Path, cpus: str | None = None, env: dict[str, str] | None = None) -> ServerGroup:
        self.port = free_port()
        backend_port = free_port()
        # Pushpin adds port_offset to its fixed ZeroMQ ports 5560-5563 and to
        # its publish port 5561; pick an offset that lands in free ports.
        offset = _free_port_block(base=5560, width=4)
        self.publish_base = f"http://127.0.0.1:{5561 + offset}"
        rundir = workdir / "pushpin"
        rundir.mkdir(parents=True, exist_ok=True)
        config = (PEERS_DIR / "pushpin/pushpin.conf").read_text()
        config = (
            config.replace("@RUNDIR@", str(rundir))
            .replace("@HTTP_PORT@", str(self.port))
            .replace("@PORT_OFFSET@", str(offset))
        )
        (rundir / "pushpin.conf").write_text(config)
        routes = (PEERS_DIR / "pushpin/routes").read_text()
        (rundir / "routes").write_text(routes.replace("@BACKEND_PORT@", str(backend_port)))
        group = ServerGroup(workdir)
        group.launch(
            "grip_backend",
            [
                str(BENCH_VENV_BIN / "gunicorn"),
                "-k", "gevent", "-w", "1",
                "--worker-connections", "2000",
                "-b", f"127.0.0.1:{backend_port}",
                "grip_backend:app",
            ],
            cwd=PEERS_DIR / "pushpin",
            env={},
            cpus=cpus,
        )
        wait_for_port(backend_port, group)
        group.launch(
            "pushpin",
            [
                "pushpin",
                "--config", str(rundir / "pushpin.conf"),
                "--port", f"127.0.0.1:{self.port}",
                "--merge-output",
            ],
            cwd=rundir,
            env={},
            cpus=cpus,
        )
        self.group = group
        wait_for_port(self.port, group)
        wait_for_port(5561 + offset, group)
        return group

    def subscribe_path(self, room: str) -> str:
        return f"/messages?room={room}"

    def publish_request(self, room: str, text: str) -> PublishRequest:
        # Pushpin sends http-stream content verbatim, so the SSE framing is ours;
        # the data line is JSON shaped like our server's message.
        data = json.dumps({"room": room, "text": text}, separators=(",", ":"))
        item = {"channel": room, "formats": {"http-stream": {"content": f"event: message\ndata: {data}\n\n"}}}
        body = json.dumps({"items": [item]}).encode()
        return PublishRequest(f"{self.publish_base}/publish/", body, "application/json")


class RedisFannedOut(System):
    """A Python app on 2 workers that fan out through Redis pub/sub (Flask-SSE, sse-starlette).

    Both peers' apps answer GET /stream?channel= and POST /publish; subclasses
    say which server runs them (``app_command``) and what else it needs.
    """

    server_tool = ""

    def unavailable(self) -> str | None:
        if not shutil.which("redis-server"):
            return "redis-server not installed (run bench/install.sh)"
        if not (BENCH_VENV_BIN / self.server_tool).exists():
            return f"bench/.venv has no {self.server_tool} (run bench/install.sh)"
        return None

    def app_command(self) -> list[str]:
        raise NotImplementedError

    def start(self, workdir: Path, cpus: str | None = None, env: dict[str, str] | None = None) -> ServerGroup:
        self.port = free_port()
        self.publish_base = f"http://127.0.0.1:{self.port}"
        group = ServerGroup(workdir)
        redis_port = _start_redis(group, workdir, cpus)
        self.app_master = group.launch(
            self.name.replace("-", "_"),
            self.app_command(),
            cwd=PEERS_DIR,
            env={"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)},
            cpus=cpus,
        )
        self.group = group
        wait_for_port(self.port, group)
        return group

    def subscribe_path(self, room: str) -> str:
        return f"/stream?channel={room}"

    def publish_request(self, room: str, text: str) -> PublishRequest:
        body = json.dumps({"room": room, "text": text}).encode()
        return PublishRequest(f"{self.publish_base}/publish", body, "application/json")

    def worker_pids(self) -> list[int]:
        return _children(self.app_master.pid) if self.group else []


class FlaskSse(RedisFannedOut):
    name = "flask-sse"
    description = "Flask-SSE 1.0 + Redis 7 pub/sub, gunicorn 2 gevent workers"
    # Its generator yields nothing until the first message, and gunicorn sends
    # the head with the first body chunk.
    head_before_first_event = False
    caveats = (
        "Flask-SSE sends no response head until the first message, so a stream counts as"
        " held when its request was sent and the connection stayed open; each stream also"
        " holds a Redis connection, whose memory (redis-server) is counted in its RSS.",
    )
    server_tool = "gunicorn"

    def app_command(self) -> list[str]:
        return [
            str(BENCH_VENV_BIN / "gunicorn"),
            "-k", "gevent", "-w", str(WORKERS),
            "--worker-connections", "20000",
            "-b", f"127.0.0.1:{self.port}",
            "flask_sse_app:app",
        ]


class OneProcessServer(System):
    """A Go server that runs as one process, under a restart loop (Centrifugo, Mercure).

    Subclasses name the binary, the config template in peers/ and its
    placeholders, and the command line that runs it.
    """

    resumable = True
    binary: Path
    build_hint = ""
    config_template = ""

    def unavailable(self) -> str | None:
        if not self.binary.exists():
            return f"{self.binary} not built (run bench/install.sh: {self.build_hint})"
        return None

    def placeholders(self, workdir: Path) -> dict[str, str]:
        raise NotImplementedError

    def command(self, config: Path) -> list[str]:
        raise NotImplementedError

    def start(self, workdir: Path, cpus: str | None = None, env: dict[str, str] | None = None) -> ServerGroup:
        self.port = free_port()
        self.publish_base = f"http://127.0.0.1:{self.port}"
        config = (PEERS_DIR / self.config_template).read_text()
        for name, value in {"PORT": str(self.port), "HISTORY_SIZE": str(HISTORY_SIZE),
                            **self.placeholders(workdir)}.items():
            config = config.replace(f"@{name}@", value)
        config_path = workdir / self.config_template
        config_path.write_text(config)
        group = ServerGroup(workdir)
        # HOME and XDG dirs in the run's temp dir: nothing is left behind.
        self.supervisor = group.launch(
            self.name, _supervised(self.command(config_path)), cwd=workdir,
            env={"HOME": str(workdir), "XDG_DATA_HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir)},
            cpus=cpus,
        )
        self.group = group
        wait_for_port(self.port, group)
        return group

    def worker_pids(self) -> list[int]:
        return _children(self.supervisor.pid) if self.group else []


class Centrifugo(OneProcessServer):
    name = "centrifugo"
    description = (
        f"Centrifugo {CENTRIFUGO_VERSION} (go install from the module proxy), memory engine,"
        " uni_sse transport, anonymous subscribers, per-channel history with recovery,"
        " publish over its HTTP API; one process"
    )
    resume_style = "centrifugo"
    caveats = (
        "One process (Go, its own scheduler across goroutines) pinned to the server core, where"
        " the other systems run 2 workers on that core. In the reconnect storm it is the process"
        " that is killed (a supervisor loop restarts it, as systemd would), so every stream drops,"
        " not half; the memory engine keeps history in that process, so a restart loses it and"
        " Centrifugo answers recovery with a new epoch (recovered: false).",
        "It sends no SSE `id:`: the bench's resuming client keeps the channel's epoch and offset"
        " and asks for recovery in `cf_connect`, as Centrifugo's uni_sse protocol describes.",
        "Asked to recover a channel's whole history of 1,301 publications (the hostile readers),"
        " it answers the connect without publications and without `recovered` (`was_recovering`:"
        " true), so such a join sends a few hundred bytes: its recovery is bounded by a number of"
        " publications, past which the client is told to fetch its state elsewhere.",
    )
    binary = PEER_BUILDS / f"centrifugo-{CENTRIFUGO_VERSION}" / "centrifugo"
    build_hint = f"go install centrifugo/v6@{CENTRIFUGO_VERSION}"
    config_template = "centrifugo.json"

    def placeholders(self, workdir: Path) -> dict[str, str]:
        self.api_key = f"bench-{os.getpid()}-{int(time.time())}"
        return {"API_KEY": self.api_key}

    def command(self, config: Path) -> list[str]:
        return [str(self.binary), "-c", str(config)]

    def subscribe_path(self, room: str) -> str:
        connect = json.dumps({"subs": {room: {}}}, separators=(",", ":"))
        return f"/connection/uni_sse?cf_connect={quote(connect)}"

    def publish_request(self, room: str, text: str) -> PublishRequest:
        body = json.dumps({"channel": room, "data": {"room": room, "text": text}}).encode()
        return PublishRequest(f"{self.publish_base}/api/publish", body, "application/json",
                              {"X-API-Key": self.api_key})

    def history_stream_request(self, room: str) -> tuple[str, dict[str, str]] | None:
        # Recovery from offset 0 of the channel's current epoch (read from the
        # history API) asks for every publication it keeps.
        body = json.dumps({"channel": room, "limit": 0}).encode()
        request = urllib.request.Request(f"{self.publish_base}/api/history", data=body,
                                         headers={"Content-Type": "application/json", "X-API-Key": self.api_key})
        with urllib.request.urlopen(request, timeout=10) as response:
            epoch = json.loads(response.read())["result"]["epoch"]
        return centrifugo_resume_path(self.subscribe_path(room), epoch, 0), {}


class Mercure(OneProcessServer):
    name = "mercure"
    description = (
        f"Mercure {MERCURE_VERSION} (Caddy {_caddy_version()} module, built from the module proxy),"
        " bolt transport on the run's temp dir with a bounded size, anonymous subscribers,"
        " publisher JWT; one process"
    )
    # resumable: Last-Event-ID, from the bolt history
    caveats = (
        "One process (Go) pinned to the server core, where the other systems run 2 workers on"
        " that core. In the reconnect storm it is the process that is killed (a supervisor loop"
        " restarts it, as systemd would), so every stream drops, not half; its bolt history is on"
        " disk and survives the restart.",
    )
    binary = PEER_BUILDS / f"mercure-{MERCURE_VERSION}" / "caddy"
    build_hint = "go build bench/peers/mercure"
    config_template = "mercure.Caddyfile"

    def placeholders(self, workdir: Path) -> dict[str, str]:
        import jwt

        key = f"bench-publisher-key-{os.getpid()}-{int(time.time())}"
        self.token = jwt.encode({"mercure": {"publish": ["*"]}}, key, algorithm="HS256")
        return {"DATADIR": str(workdir), "PUBLISHER_KEY": key}

    def command(self, config: Path) -> list[str]:
        return [str(self.binary), "run", "--config", str(config), "--adapter", "caddyfile"]

    def subscribe_path(self, room: str) -> str:
        return f"/.well-known/mercure?topic={quote(room, safe='')}"

    def history_stream_request(self, room: str) -> tuple[str, dict[str, str]] | None:
        # Mercure's reserved id `earliest`: every update its history keeps.
        return self.subscribe_path(room), {"Last-Event-ID": "earliest"}

    def publish_request(self, room: str, text: str) -> PublishRequest:
        data = json.dumps({"room": room, "text": text})
        return PublishRequest(
            f"{self.publish_base}/.well-known/mercure",
            urlencode({"topic": room, "data": data}).encode(),
            "application/x-www-form-urlencoded",
            {"Authorization": f"Bearer {self.token}"},
        )


class SseStarlette(RedisFannedOut):
    name = "sse-starlette"
    description = "sse-starlette 3 on uvicorn, 2 workers, fanned out through Redis 7 pub/sub (broadcaster)"
    caveats = (
        "No history, so no resume: not in the reconnect storm. Each worker holds one Redis"
        " pub/sub connection (broadcaster); redis-server's memory and CPU are counted with it.",
    )
    server_tool = "uvicorn"

    def app_command(self) -> list[str]:
        return [
            str(BENCH_VENV_BIN / "uvicorn"),
            "sse_starlette_app:app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(WORKERS),
            "--loop", "uvloop", "--http", "httptools",
            "--log-level", "warning", "--no-access-log",
            "--backlog", "4096",
        ]


def _supervised(argv: list[str]) -> list[str]:
    """`argv` under a restart loop, as systemd's Restart=always would run it.

    The reconnect storm SIGKILLs a system's serving process; for a
    one-process server that is the whole server, and this brings it back
    (100 ms later, systemd's default RestartSec) the way gunicorn respawns a worker.
    """
    return ["bash", "-c", 'while :; do "$@"; sleep 0.1; done', "supervise", *argv]


def _start_redis(group: ServerGroup, workdir: Path, cpus: str | None) -> int:
    port = free_port()
    group.launch(
        "redis",
        [
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1", "--port", str(port),
            "--save", "", "--appendonly", "no",
            "--maxclients", "25000", "--dir", str(workdir),
        ],
        cwd=workdir,
        env={},
        cpus=cpus,
    )
    wait_for_port(port, group)
    return port


def _free_port_block(base: int, width: int) -> int:
    """Return an offset such that base+offset .. base+offset+width-1 are all free."""
    import socket

    for offset in range(20000, 40000, 10):
        probes = []
        try:
            for port in range(base + offset, base + offset + width):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return offset
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError("no free block of ports for Pushpin")


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def _ferretdb_binary() -> tuple[str | None, str | None]:
    """Path of FerretDB from .ci/ferretdb-build (idempotent: prints the cached binary), or why not."""
    script = BENCH_DIR.parent / ".ci" / "ferretdb-build"
    if not script.exists():
        return None, f"{script} not found"
    try:
        built = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return None, "FerretDB build took more than 15 minutes"
    lines = built.stdout.strip().splitlines()
    if built.returncode != 0 or not lines or not Path(lines[-1]).exists():
        return None, f"FerretDB not built ({(built.stderr.strip().splitlines() or ['no output'])[-1]})"
    return lines[-1], None


def all_systems(repo_root: Path) -> list[System]:
    return [
        OurServer(repo_root), OurServerOnMongo(repo_root), Centrifugo(), Mercure(), Nchan(), Pushpin(),
        SseStarlette(), FlaskSse(),
    ]
