"""The report's hostile-readers section (hostile.py's results, one run per system)."""

from __future__ import annotations

from typing import Any

from .systems import OURS

# The target: RSS growth per non-reading stream, whatever the peers do.
TARGET_KB_PER_STREAM = 64


def _kb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} KB"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def hostile_figure(run: dict[str, Any]) -> float | None:
    """KB of server RSS per non-reading stream (peak over the baseline), or None when not measured.

    A run where the server had begun to answer none of the streams measured
    nothing they cost: no figure.
    """
    if not run.get("opened") or run.get("answered", run["opened"]) == 0:
        return None
    return run.get("per_stream_kb")


def best_peer(hostile: dict[str, dict[str, Any]]) -> tuple[str | None, float | None]:
    """The peer with the least RSS growth per stream in this run."""
    peers = {name: hostile_figure(run) for name, run in hostile.items() if name not in OURS}
    measured = {name: kb for name, kb in peers.items() if kb is not None}
    if not measured:
        return None, None
    name = min(measured, key=measured.__getitem__)
    return name, measured[name]


def hostile_lines(hostile: dict[str, dict[str, Any]], plan: Any) -> list[str]:
    if not hostile:
        return []
    lines = [
        "## Hostile readers",
        "",
        f"One room is filled with {plan.hostile_fill:,} messages of {plan.hostile_text_chars:,} x U+0001"
        f" ({plan.hostile_text_chars / 1024:.0f} KB stored each, ~{6 * plan.hostile_text_chars / 1024:.0f} KB"
        " once JSON-escaped): more than our default window keeps (CAPPED_SIZE_BYTES 5 MB), fewer than"
        " any peer's history keeps here, so every system holds about the same backlog. Then up to"
        f" {plan.hostile_streams:,} raw sockets (receive buffer 4 KB, never read) each send the request"
        " that asks for the room's whole history the way the system resumes (ours: no"
        " Last-Event-ID; Centrifugo: recovery from offset 0 of the channel's epoch; Mercure:"
        " `Last-Event-ID: earliest`; Nchan: a new subscriber, which starts at the oldest message)."
        " Opening stops early, and the row says **capped**, once the server's RSS passes"
        f" {plan.hostile_rss_cap_bytes / 2**30:.0f} GiB, the machine runs short of memory, a batch of"
        " streams is not answered in 15 s (the server has not begun to send them anything) or"
        f" {plan.hostile_open_timeout_seconds:.0f} s have passed; the figure is then taken over the"
        " streams that were opened. Every system on its defaults"
        " (ours: SQLite or FerretDB store, 2 workers), server processes on core 0, load generator"
        " on core 1.",
        "",
        "| System | One join sends | Streams opened / answered / held by the server"
        " | Server RSS before -> peak (settled)"
        " | RSS growth per stream: peak (settled) | Kernel TCP buffers | Still answers others:"
        " publish / fresh reader | Server CPU | Load-gen CPU | Other CPU |",
        "|---|---:|---|---|---:|---:|---|---:|---:|---:|",
    ]
    notes: list[str] = []
    for name, run in hostile.items():
        if "skipped" in run:
            lines.append(f"| {name} | not run: {run['skipped']} | | | | | | | | |")
            continue
        if "per_stream_kb" not in run:
            lines.append(f"| {name} | not finished: {'; '.join(run['notes']) or 'see notes'} | | | | | | | | |")
            notes += [f"{name}: {note}" for note in run["notes"]]
            continue
        cpu = run["cpu"]
        bound = " **client-bound**" if cpu["client_bound"] else ""
        capped = f" **capped**: {run['capped']}" if run["capped"] else ""
        lines.append(
            f"| {name} | {_backlog(run.get('backlog'))}"
            f" | {run['opened']:,} of {run['streams']:,}{capped} / {_answered(run)} / {run['held']:,}"
            f" | {run['baseline_mb']:,.0f} -> {run['peak_mb']:,.0f} ({run['settled_mb']:,.0f}) MB"
            f" | {_kb(run['per_stream_kb'])} ({_kb(run['settled_per_stream_kb'])})"
            f" | {run['kernel_tcp_mb']:+,.0f} MB ({_kb(run.get('kernel_tcp_per_stream_kb'))}/stream)"
            f" | {_probe(run.get('probe'))}"
            f" | {_pct(cpu['server_cpu_pct'])} | {_pct(cpu['loadgen_cpu_pct'])}{bound} | {_pct(cpu['other_cpu_pct'])} |"
        )
        notes += _details(name, run)
    lines += ["", *_ratio(hostile), ""]
    lines += [
        "How to read it: *One join sends*: the bytes one reading client got for the same request,"
        " up to the fill's last message (a marked one published after the fill), and how long"
        " that took; the hostile streams are opened only after it, so the system holds the whole"
        " fill when they ask. *RSS growth per stream* is the server's resident memory (every process of"
        " the system: workers and master, FerretDB, the Go process) at its peak from the first hostile"
        " stream to the end of the settle wait, minus the RSS after the fill, divided by the streams"
        " opened (a run whose streams the server had answered none of gives no figure);"
        " *settled* is the same at the end of the wait (the RSS moved less than 1 MB over 2 s,"
        f" or {plan.hostile_settle_timeout_seconds:.0f} s passed). *Answered*: streams with backlog bytes"
        " waiting in their receive buffer at that moment (as many as a response head holds, or all that"
        " one join sends when that is less), read with FIONREAD, never read. *Held by the server*: the hostile"
        " connections still ESTABLISHED on the server's side at that moment (a server may end a stream"
        " whose client does not read; ours does after STREAM_WRITE_TIMEOUT_SECONDS). *Kernel TCP"
        " buffers*: the change of /proc/net/sockstat's TCP `mem` over the same span, machine-wide (what"
        " a server writes to a socket that is not read waits there, outside any RSS; other jobs on"
        " the machine move it too). *Still answers others*: after the settle wait, a publish to the"
        " hostile room (its HTTP status and time), then a new reader on a quiet room and the time for"
        " a message published there to reach it. RSS figures are steady from run to run; CPU figures"
        " are noisy on this shared machine (see Other CPU). A client-bound row is flagged but still"
        " compared: memory per stream does not depend on how fast the client opened the streams.",
        "",
    ]
    if notes:
        lines += ["Hostile readers details:", "", *[f"- {note}" for note in notes], ""]
    return lines


def _ratio(hostile: dict[str, dict[str, Any]]) -> list[str]:
    """Ours as a ratio to the best peer, and the issue's target."""
    peer, best = best_peer(hostile)
    lines = [
        "| RSS growth per non-reading stream | figure | best peer | ratio to the best peer (<= 1.0 met)"
        f" | the issue's target, <= {TARGET_KB_PER_STREAM} KB |",
        "|---|---:|---|---:|---|",
    ]
    for name in OURS:
        run = hostile.get(name)
        if run is None:
            continue
        label = "ours-mongodb (FerretDB)" if name == "ours-mongodb" else name
        figure = hostile_figure(run)
        ratio = figure / best if figure is not None and best else None
        met_ratio = "n/a" if ratio is None else f"{ratio:,.2f} x ({'yes' if ratio <= 1.0 else 'no'})"
        target = "n/a" if figure is None else ("yes" if figure <= TARGET_KB_PER_STREAM else "no")
        if run.get("capped") and figure is not None:
            target += " (capped run)"
        lines.append(f"| {label} | {_kb(figure)} | {f'{peer} {_kb(best)}' if peer else 'n/a'}"
                     f" | {met_ratio} | {target} |")
    return lines


def _answered(run: dict[str, Any]) -> str:
    answered = run.get("answered")
    if answered is None:
        return "n/a"
    return f"{answered:,}" if answered else "**0: no figure**"


def _backlog(backlog: dict[str, Any] | None) -> str:
    if not backlog:
        return "n/a"
    size = backlog["bytes"]
    amount = f"{size / 2**20:,.1f} MB" if size >= 2**20 else f"{size:,} bytes"
    text = f"{amount} in {backlog['seconds']:,.1f} s"
    return text if backlog["complete"] else f"**{text}, then {backlog['ending']}** before the fill's end"


def _probe(probe: dict[str, Any] | None) -> str:
    if not probe:
        return "n/a"
    status = probe["publish_status"]
    publish = f"HTTP {status} in {probe['publish_ms']:,.0f} ms" if status else f"no answer ({probe['publish_error']})"
    if probe["reader_ms"] is not None:
        reader = f"message in {probe['reader_ms']:,.0f} ms"
    elif probe["reader_opened"]:
        reader = "**opened, no message**"
    else:
        reader = f"**not opened** {probe['reader_errors']}"
    return f"{publish} / {reader}"


def _details(name: str, run: dict[str, Any]) -> list[str]:
    fill = run["fill"]
    out = [
        f"{name}: filled with {fill['published']:,} messages in {fill['seconds']:.1f} s"
        + (f" ({fill['failed']:,} failed: {fill['error']})" if fill["failed"] else "")
        + f"; {run['opened']:,} streams opened in {run['open_seconds']:.1f} s"
        + (f", open errors {run['open_errors']}" if run["open_errors"] else "")
        + f"; RSS {'settled' if run.get('settled') else 'still moving at the end of the wait'}."
    ]
    out += [f"{name}: {note}" for note in run["notes"]]
    return out
