"""Scenario 6, hostile readers: streams that ask for a big backlog and never read.

One run against one freshly started system on its default settings, with the
server's processes on core 0 and the load generator (this orchestrator, which
holds the hostile sockets and publishes, and the subscriber processes) on core 1:

  fill      `hostile_fill` messages of `hostile_text_chars` x U+0001 to one room:
            4 KB stored each, ~24 KB once JSON-escaped; more than our default
            window holds, less than any peer's history bound here
  backlog   one reader sends the same request and reads until the fill's last
            message (a marked one): what one join sends, and proof that the
            system holds the whole fill before anything is measured
  baseline  the RSS of every process of the system, once that reader is gone
  open      `hostile_streams` raw sockets with a small receive buffer, each
            sending the request that asks for the room's whole history the way
            the system resumes (System.history_stream_request); none is ever
            read. Opened in batches sized from the growth seen so far, and no
            more once the server's RSS passes `hostile_rss_cap_bytes` or the
            machine runs short of memory: the figure is then "capped", taken
            over the streams that were opened
  settle    until the RSS stops moving (bounded)
  probe     does the server still answer everyone else? A publish to the room,
            and a fresh reader on a quiet room that must get a message
            published there
  figure    peak RSS growth over the baseline per stream opened; the streams the
            server still holds, counted on its side

Every phase has a deadline, so the scenario always ends by itself, and the
hostile sockets are closed whatever happens.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import socket
import struct
import termios
import time
from pathlib import Path
from typing import Any

import psutil

from .clients import ClientPool
from .marker import MARKER_PATTERN, make_marker
from .measure import tcp_buffer_bytes
from .plan import Plan
from .processes import ServerGroup, streams_held
from .publisher import Publisher, RoomsPublisher
from .running import run_on_started_system
from .scenarios import CpuWindow
from .sserequest import sse_request
from .systems import System

# The hostile sockets' own source address, apart from the subscriber
# processes' (127.0.0.2, ...), so the server-side count finds only them.
HOSTILE_SOURCE = "127.0.0.250"
BACKLOG_SOURCE = "127.0.0.251"  # the reader that checks every worker holds the whole fill
# Set before connect, so it is the window the client advertises (the kernel doubles it).
RECEIVE_BUFFER_BYTES = 4096
CONNECT_TIMEOUT_SECONDS = 5.0
# Batches grow at most twofold, so a server whose RSS lags its joins cannot
# be handed many streams before the growth shows.
FIRST_BATCH = 10
MAX_BATCH = 100
POLL_SECONDS = 0.25
# Quiet: the RSS moved less than QUIET_BYTES over the last `still` seconds.
QUIET_BYTES = 2**20
# Between batches: the server has taken the last batch's requests.
BATCH_STILL_SECONDS = 0.5
BATCH_QUIET_TIMEOUT_SECONDS = 5.0
# After the last batch: settled.
SETTLE_STILL_SECONDS = 2.0
PROBE_TAG = 6
BACKLOG_TAG = 7
READ_BYTES = 1 << 20
# A history stream that sends nothing for this long (after its first bytes) has stopped.
STALL_SECONDS = 15.0
# An event's id line, whole (a read may end inside one: it is matched with the next read).
ID_LINE = re.compile(rb"(?:^|\n)id: ?([^\r\n]*)\r?\n")
# The end of a chunked response (HTTP/1.1): a zero-length chunk.
LAST_CHUNK = b"\r\n0\r\n\r\n"
MIB = 2**20
# More than any response head and retry line: backlog bytes have begun to arrive.
ANSWERED_BYTES = 2048
ANSWER_TIMEOUT_SECONDS = 15.0


class HostileReaders:
    """The hostile-readers scenario against one system."""

    def __init__(self, system: System, plan: Plan, pool: ClientPool, workdir: Path) -> None:
        self.system = system
        self.plan = plan
        self.pool = pool
        self.workdir = workdir
        self.group: ServerGroup | None = None
        stamp = f"{os.getpid()}-{int(time.time())}"
        self.room = f"hostile-{stamp}"
        self.quiet_room = f"probe-{stamp}"
        self.sockets: list[socket.socket] = []
        self.opened = 0  # stays counted if the sockets must be let go early
        self.let_go = False  # the machine ran short of memory: the sockets were closed early
        self.answered_bytes = ANSWERED_BYTES
        self.peak = 0
        self.result: dict[str, Any] = {"notes": [], "capped": None}

    def log(self, line: str) -> None:
        print(f"  [{self.system.name} hostile] {line}", flush=True)

    def note(self, line: str) -> None:
        self.result["notes"].append(line)
        self.log(line)

    async def run(self) -> dict[str, Any]:
        plan, result = self.plan, self.result
        result.update(streams=plan.hostile_streams, fill_messages=plan.hostile_fill,
                      text_chars=plan.hostile_text_chars, rss_cap_bytes=plan.hostile_rss_cap_bytes)
        await run_on_started_system(self, None, self._hostile, self._started,
                                    before_stop=[self._close_sockets], after_stop=[self._close_streams])
        return result

    def _started(self, group: ServerGroup) -> None:
        self.group = group

    async def _close_streams(self) -> None:
        try:
            await self.pool.close_streams(await self.pool.live())
        except (OSError, EOFError, RuntimeError, TimeoutError) as error:
            self.log(f"could not close streams: {type(error).__name__}")

    async def _hostile(self, publisher: RoomsPublisher) -> None:
        plan, result = self.plan, self.result
        text = "\u0001" * plan.hostile_text_chars
        fill = await publisher.fill([self.room], plan.hostile_fill, plan.hostile_fill_timeout_seconds, text)
        result["fill"] = fill
        failed = f", {fill['failed']} failed ({fill['error']})" if fill["failed"] else ""
        self.log(f"filled the room: {fill['published']:,} messages of {plan.hostile_text_chars:,} x U+0001"
                 f" in {fill['seconds']:.1f}s{failed}")
        if not fill["published"]:
            raise RuntimeError("nothing was published")
        asked = await asyncio.to_thread(self.system.history_stream_request, self.room)
        if asked is None:
            raise RuntimeError("the system keeps no history to ask for")
        path, headers = asked
        request = sse_request("127.0.0.1", self.system.port, path, headers)
        last, _ = make_marker(BACKLOG_TAG, 0)
        status, _, error = await publisher.post(self.room, last)
        if not 200 <= status < 300:
            raise RuntimeError(f"the fill's last message was refused: {error or status}")
        timeout = plan.hostile_backlog_timeout_seconds
        result["backlog"] = await self._read_backlog(path, headers, timeout)
        if not result["backlog"]["complete"] and await asyncio.to_thread(self.system.restart_workers, timeout):
            # Ours on FerretDB: its tailable cursor brings new documents to a
            # worker's window very slowly (see the caveats); workers that start
            # now warm their windows from the store instead.
            self.note("the workers were restarted (gunicorn's reload) so that their windows warm from the store,"
                      " which holds the whole fill")
            result["backlog"] = await self._read_backlog(path, headers, 3 * timeout)
        # A hostile stream is answered once it has as many bytes waiting as a
        # response head holds, or all that one join sends if that is less (Centrifugo).
        self.answered_bytes = min(ANSWERED_BYTES, result["backlog"]["bytes"]) or ANSWERED_BYTES
        if not result["backlog"]["complete"] and self.system.history_per_worker:
            # Streams parked on a worker until its window warms would all grow
            # the server at once, past any cap checked while opening them.
            raise RuntimeError("not every worker sent the whole fill; no hostile stream opened")
        await asyncio.sleep(plan.settle_seconds)
        assert self.group is not None
        baseline = self.group.rss_bytes()
        tcp_before = tcp_buffer_bytes()
        result["baseline_mb"] = baseline / MIB
        self.peak = baseline
        cpu = CpuWindow(self.group, self.pool)
        began = time.monotonic()
        await self._open(request, baseline)
        result["open_seconds"] = time.monotonic() - began
        await self._settle()
        result["cpu"] = cpu.close()
        settled = self.group.rss_bytes()
        self.peak = max(self.peak, settled)
        opened = self.opened
        result["opened"] = opened
        result["answered"] = sum(1 for sock in self.sockets if _waiting_bytes(sock) >= self.answered_bytes)
        result["held"] = sum(streams_held(self.system.worker_pids(), self.system.port, {HOSTILE_SOURCE}).values())
        result["peak_mb"] = self.peak / MIB
        result["settled_mb"] = settled / MIB
        result["kernel_tcp_mb"] = (tcp_buffer_bytes() - tcp_before) / MIB
        result["kernel_tcp_per_stream_kb"] = result["kernel_tcp_mb"] * 1024 / opened if opened else None
        result["per_stream_kb"] = (self.peak - baseline) / opened / 1024 if opened else None
        result["settled_per_stream_kb"] = (settled - baseline) / opened / 1024 if opened else None
        self.log(f"{opened:,} streams opened ({result['held']:,} still held by the server),"
                 f" RSS {baseline / MIB:,.0f} -> peak {self.peak / MIB:,.0f} MB, settled {settled / MIB:,.0f} MB:"
                 f" {result['per_stream_kb'] or 0:,.1f} KB/stream"
                 + (f"; capped: {result['capped']}" if result["capped"] else ""))
        result["probe"] = await self._probe(publisher)

    async def _read_backlog(self, path: str, headers: dict[str, str], timeout: float) -> dict[str, Any]:
        """Read history streams until the whole fill came, from each worker where each keeps its own copy.

        Each such worker must (ours): a stream parked on a worker whose window
        is not warm yet would grow the server only once it warms, past any cap
        checked while the hostile streams open. A stream that ends first (ours
        ends one whose window is not warm, and one that has sent
        STREAM_BACKLOG_MAX_BYTES) is opened again, as EventSource would: with
        the last id it got as Last-Event-ID, so the bytes of one join add up
        across its responses; one that stops sending before the fill's last
        message is reported.
        """
        began = time.monotonic()
        attempts = 0
        done: set[int] = set()
        read: dict[str, Any] = {}
        last_id, carried = None, 0  # where the join resumes, and what its earlier responses sent
        while time.monotonic() - began < timeout:
            attempts += 1
            resume = {"Last-Event-ID": last_id} if last_id else {}
            request = sse_request("127.0.0.1", self.system.port, path, {**headers, **resume})
            read = await self._read_once(request, timeout - (time.monotonic() - began))
            read["bytes"] += carried
            last_id, carried = (read["last_id"], read["bytes"]) if read["ending"] == "ended" else (None, 0)
            if read["ending"] == "complete":
                done.add(read["worker"] or 0)
                workers = set(self.system.worker_pids()) if self.system.history_per_worker else set()
                if workers <= done:
                    self.log(f"a reader got the whole history: {read['bytes'] / MIB:,.1f} MB in"
                             f" {read['seconds']:.1f}s ({attempts} reads)")
                    return {**read, "complete": True, "attempts": attempts}
            elif read["ending"] == "stalled" and not self.system.history_per_worker:
                break  # ours' stream may wait on a window still taking the fill in: read again
            await asyncio.sleep(POLL_SECONDS)
        self.note(f"a reader of the whole history got {read.get('bytes', 0):,} bytes, then the stream"
                  f" {read.get('ending', 'never opened')}, without the fill's last message ({attempts} reads)")
        return {**read, "complete": False, "attempts": attempts}

    async def _read_once(self, request: bytes, timeout: float) -> dict[str, Any]:
        """One history stream, read until the fill's last message, its end, a stall or `timeout`.

        Returns its bytes, the seconds until its last byte, the worker that
        served it and how it ended: complete, ended, stalled or timeout.
        """
        began = time.monotonic()
        deadline = began + timeout
        read: dict[str, Any] = {"bytes": 0, "seconds": 0.0, "worker": None, "ending": "timeout", "last_id": None}
        tail = b""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.system.port,
                                                           local_addr=(BACKLOG_SOURCE, 0))
        except OSError:
            return {**read, "ending": "ended"}
        try:
            writer.write(request)
            while time.monotonic() < deadline:
                wait = min(deadline - time.monotonic(), STALL_SECONDS)
                try:
                    chunk = await asyncio.wait_for(reader.read(READ_BYTES), wait)
                except TimeoutError:
                    if read["bytes"] and wait == STALL_SECONDS:
                        read["ending"] = "stalled"
                        break
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    read["ending"] = "ended"
                    break
                if read["worker"] is None:
                    held = streams_held(self.system.worker_pids(), self.system.port, {BACKLOG_SOURCE})
                    read["worker"] = next((pid for pid, count in held.items() if count), None)
                read["bytes"] += len(chunk)
                read["seconds"] = time.monotonic() - began
                ids = ID_LINE.findall(tail + chunk)
                tail = (tail + chunk)[-256:]
                if ids:
                    read["last_id"] = ids[-1].decode()
                if any(int(tag) == BACKLOG_TAG for tag, _, _ in MARKER_PATTERN.findall(tail)):
                    read["ending"] = "complete"
                    break
                if tail.endswith(LAST_CHUNK):  # the response ended; the connection may stay open (keep-alive)
                    read["ending"] = "ended"
                    break
        finally:
            writer.close()
        return read

    def _cap_reason(self, rss: int) -> str | None:
        """Why no more streams may be opened (or None): the server's RSS or the machine's memory."""
        if rss >= self.plan.hostile_rss_cap_bytes:
            return f"server RSS passed the cap of {self.plan.hostile_rss_cap_bytes / 2**30:.1f} GiB"
        available = psutil.virtual_memory().available
        if available < self.plan.hostile_min_available_bytes:
            return (f"the machine had {available / 2**30:.1f} GiB available, under the floor of"
                    f" {self.plan.hostile_min_available_bytes / 2**30:.1f} GiB")
        return None

    def _sample(self) -> int:
        assert self.group is not None
        rss = self.group.rss_bytes()
        self.peak = max(self.peak, rss)
        return rss

    async def _open(self, request: bytes, baseline: int) -> None:
        plan = self.plan
        deadline = time.monotonic() + plan.hostile_open_timeout_seconds
        errors: dict[str, int] = {}
        batch = FIRST_BATCH
        while len(self.sockets) < plan.hostile_streams:
            reason = self._cap_reason(self._sample())
            if reason is None and time.monotonic() > deadline:
                reason = f"the open phase's {plan.hostile_open_timeout_seconds:.0f} s were spent"
            if reason:
                self.result["capped"] = reason
                self.note(f"stopped opening at {len(self.sockets):,} streams: {reason}")
                break
            count = min(batch, plan.hostile_streams - len(self.sockets))
            first = len(self.sockets)
            for error in await asyncio.to_thread(self._open_batch, count, request):
                errors[error] = errors.get(error, 0) + 1
            unanswered = await self._wait_answered(self.sockets[first:])
            await self._quiet(BATCH_QUIET_TIMEOUT_SECONDS, BATCH_STILL_SECONDS)
            if self.let_go:
                break
            if unanswered:
                # A stream the server has not begun to answer may still grow it,
                # later, past the cap: open no more.
                self.result["capped"] = (f"{unanswered:,} streams had not been answered"
                                         f" {ANSWER_TIMEOUT_SECONDS:.0f} s after they asked")
                self.note(f"stopped opening at {len(self.sockets):,} streams: {self.result['capped']}")
                break
            # The next batch: at most twice this one, and at most half the room
            # left under the cap at the growth per stream seen so far.
            growth = (self.peak - baseline) / max(1, len(self.sockets))
            room = MAX_BATCH if growth <= 0 else int((plan.hostile_rss_cap_bytes - self.peak) / growth / 2)
            batch = max(1, min(MAX_BATCH, 2 * count, room))
        self.result["open_errors"] = errors

    async def _wait_answered(self, sockets: list[socket.socket]) -> int:
        """Wait until the server has begun to send each stream its backlog; return how many it has not.

        Seen on our side without reading: the bytes waiting in the socket's
        receive buffer (FIONREAD) pass what a response head holds (or all that
        one join sends, when that is less). Until then
        the server may not have taken the request, and the RSS would not show
        what the stream costs.
        """
        deadline = time.monotonic() + ANSWER_TIMEOUT_SECONDS
        waiting = list(sockets)
        while waiting and time.monotonic() < deadline:
            waiting = [sock for sock in waiting if _waiting_bytes(sock) < self.answered_bytes]
            if waiting:
                await asyncio.sleep(POLL_SECONDS)
        return len(waiting)

    def _open_batch(self, count: int, request: bytes) -> list[str]:
        """Open `count` sockets that send `request` and are never read; return the errors."""
        errors = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
                sock.settimeout(CONNECT_TIMEOUT_SECONDS)
                sock.bind((HOSTILE_SOURCE, 0))
                sock.connect(("127.0.0.1", self.system.port))
                sock.sendall(request)
            except OSError as error:
                sock.close()
                errors.append(f"{type(error).__name__}: {error.strerror or error}")
                continue
            self.sockets.append(sock)
            self.opened += 1
        return errors

    async def _settle(self) -> None:
        """Wait until the RSS stops moving, or the settle deadline."""
        timeout = self.plan.hostile_settle_timeout_seconds
        self.result["settled"] = await self._quiet(timeout, SETTLE_STILL_SECONDS)
        if self.sockets and not self.result["settled"]:
            self.note(f"the RSS was still moving {timeout:.0f} s after the last open")

    async def _quiet(self, timeout: float, still: float) -> bool:
        """Wait up to `timeout` until the RSS moved less than QUIET_BYTES over `still` seconds.

        False if it never did, or if the machine ran short of memory meanwhile:
        streams already opened may still be growing the server, so the hostile
        sockets are then let go before the machine is (`let_go`).
        """
        began = time.monotonic()
        samples = [(began, self._sample())]
        while time.monotonic() - began < timeout:
            await asyncio.sleep(POLL_SECONDS)
            now, rss = time.monotonic(), self._sample()
            samples.append((now, rss))
            if psutil.virtual_memory().available < self.plan.hostile_min_available_bytes / 2:
                self.result["capped"] = "the machine ran short of memory: the hostile streams were closed early"
                self.note(self.result["capped"])
                self._close_sockets()
                self.let_go = True
                return False
            recent = [value for at, value in samples if at >= now - still]
            if now - began >= still and max(recent) - min(recent) < QUIET_BYTES:
                return True
        return False

    async def _probe(self, publisher: RoomsPublisher) -> dict[str, Any]:
        """Does the server still answer others: a publish to the room, a fresh reader elsewhere."""
        timeout = self.plan.hostile_probe_timeout_seconds
        probe: dict[str, Any] = {}
        started = time.monotonic()
        try:
            status, _, error = await asyncio.wait_for(publisher.post(self.room, "probe"), timeout)
        except TimeoutError:
            status, error = 0, f"no answer in {timeout:.0f} s"
        probe["publish_status"] = status
        probe["publish_ms"] = (time.monotonic() - started) * 1000
        probe["publish_error"] = error
        opening = await self.pool.open_streams(1, "127.0.0.1", self.system.port,
                                               self.system.subscribe_path(self.quiet_room), timeout,
                                               self.system.head_before_first_event)
        probe["reader_opened"] = opening["opened"]
        probe["reader_errors"] = opening["errors"]
        probe["reader_ms"] = None
        if opening["opened"]:
            await self.pool.begin(PROBE_TAG)
            async with Publisher(self.system, self.quiet_room) as quiet:
                sent = await quiet.burst(PROBE_TAG, 1)
            receipts = await self.pool.wait_for(PROBE_TAG, sent.ok, timeout)
            if sent.ok and receipts.unique:
                probe["reader_ms"] = (receipts.last_ns - sent.first_send_ns) / 1e6
        probe["answered"] = 200 <= status < 300 and probe["reader_ms"] is not None
        self.log(f"probe: publish to the room HTTP {status} in {probe['publish_ms']:,.0f} ms; a fresh reader"
                 + (f" got a message in {probe['reader_ms']:,.0f} ms" if probe["reader_ms"] is not None
                    else f" got nothing ({opening['errors'] or 'no delivery'})"))
        return probe

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def _waiting_bytes(sock: socket.socket) -> int:
    """Bytes received and not read on `sock` (FIONREAD); 0 once it is closed."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return struct.unpack("i", raw)[0]
