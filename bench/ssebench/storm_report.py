"""The report's reconnect-storm section (storm.py's results, one run per system)."""

from __future__ import annotations

from typing import Any


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1000:,.2f} s" if value >= 1000 else f"{value:,.0f} ms"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def storm_lines(storms: dict[str, dict[str, Any]], plan: Any) -> list[str]:
    if not storms:
        return []
    lines = [
        "## Reconnect storm",
        "",
        f"{plan.storm_streams:,} streams over {plan.storm_rooms} rooms; the store first"
        f" holds a full window of other rooms' messages ({plan.storm_fill:,} = CAPPED_MAX_MESSAGES);"
        f" {plan.storm_rate:.0f} messages/s keep arriving round the rooms; the worker holding the most"
        " streams (of 2; for the one-process Go servers, the process, which a supervisor loop"
        " restarts) is killed with SIGKILL and its clients reconnect at once with `Last-Event-ID`"
        " (Centrifugo: its epoch and offset in `cf_connect`)."
        " **Server processes (gunicorn, FerretDB, nginx, Centrifugo, Caddy) on core 0, load generator"
        " (subscribers and publisher) on core 1** (`taskset`).",
        "",
        "| System | Streams held / on killed worker / dropped | All resumed: first byte / caught up"
        " | Per client first byte p50 / p99 | Per client caught up p50 / p99 | Store queries per resume"
        " | Lost | Dup | Exact streams | Core 0 (server) | Core 1 (load gen) | Of which other jobs |",
        "|---|---|---|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    notes: list[str] = []
    for name, storm in storms.items():
        if "skipped" in storm:
            lines.append(f"| {name} | not run: {storm['skipped']} | | | | | | | | | | |")
            continue
        if "dropped" not in storm:
            lines.append(f"| {name} | not finished: {'; '.join(storm['notes']) or 'see notes'} | | | | | | | | | | |")
            notes += [f"{name}: {note}" for note in storm["notes"]]
            continue
        first, caught, cpu, queries = storm["first_byte"], storm["caught_up"], storm["cpu"], storm["queries"]
        bound = " **client-bound**" if cpu["client_bound"] else ""
        per_resume = "n/a" if not queries or queries["per_resume_net"] is None else f"{queries['per_resume_net']:,.2f}"
        cores = cpu["core_pct"]
        lines.append(
            f"| {name} | {storm['open']['opened']:,} / {storm['killed_worker_streams']:,} / {storm['dropped']:,}"
            f" | {_ms(first['all_ms'])} / {_ms(caught['all_ms'])}{bound}"
            f" | {_ms(first['p50_ms'])} / {_ms(first['p99_ms'])}"
            f" | {_ms(caught['p50_ms'])} / {_ms(caught['p99_ms'])}"
            f" | {per_resume} | {storm['lost']:,} | {storm['duplicated']:,}"
            f" | {storm['exact_streams']:,} of {storm['streams_recorded'] - storm['never_connected']:,}"
            f" | {_pct(cores[0] if cores else None)} | {_pct(cores[-1] if len(cores) > 1 else None)}{bound}"
            f" | {_pct(cpu.get('other_pct'))} |"
        )
        notes += _details(name, storm)
    lines += [
        "",
        "How to read it: *first byte* is the kill -> the first byte of the reconnected response;"
        " *caught up* is the kill -> the moment the client holds every message of its room that the"
        " publisher had seen acknowledged by the time that first byte came. *All* is the last of the"
        " killed worker's clients (n/a if some never got there). *Lost*: owed messages a stream had"
        " not received by the end of the drain. *Exact*: the stream received its"
        " room's messages since its first connection exactly once each, in store order. The truth is"
        " the publisher's: it keeps one request per room in flight, so a room's messages are stored"
        " in the order they were sent; a message counts as stored when acknowledged, or when it is"
        " in the room's GET /messages/history although its request died with the worker (ours;"
        " the history is also checked against the acknowledgements)."
        " Core % is busy time of that core over the storm (kill -> all caught up), from /proc/stat;"
        " a load-generator core at >= 95% marks the figure **client-bound**. *Of which other jobs*:"
        " busy time of both cores not used by the server's or the load generator's processes"
        " (other jobs on this shared machine, which taskset does not keep off our cores, and"
        " kernel work not charged to a process), in % of one core: when it is high, the figures"
        " measure a crowded machine.",
        "",
        "Store queries per resume: `sse_store_queries_total{operation}` read from each worker's"
        " prometheus_client counter file (`counter_<pid>.db` in the run's PROMETHEUS_MULTIPROC_DIR),"
        " not from the summed GET /metrics, whose sum may or may not keep the killed worker's count:"
        " (surviving worker's delta + the new worker's whole count) over the storm window, minus the"
        " background rate (tailer polls, publishes) measured over a quiet window before the kill,"
        " divided by the streams that resumed. n/a: the server does not export the counter.",
        "",
    ]
    lines += _replacement_lines(storms)
    if notes:
        lines += ["Storm details:", "", *[f"- {note}" for note in notes], ""]
    return lines


def retry_storm_lines(retry_storms: dict[str, dict[str, dict[str, Any]]], plan: Any) -> list[str]:
    """The storm with clients that wait their `retry:`, without and with RETRY_JITTER (issue 15)."""
    if not retry_storms:
        return []
    lines = [
        "## Reconnect storm with and without jitter",
        "",
        f"The reconnect storm ({plan.storm_streams:,} streams over {plan.storm_rooms} rooms, a full window of"
        f" other rooms' messages, {plan.storm_rate:.0f} messages/s, SIGKILL of the worker holding the most"
        " streams), ours only, run twice, each on a freshly started server: the clients wait the last"
        " `retry:` they were sent before reconnecting, as EventSource does (RETRY_MS 3000, the default),"
        " where the plain storm's clients come back at once. The server draws each stream's `retry:`"
        " from RETRY_MS x (1 +- RETRY_JITTER): first with RETRY_JITTER=0, then with its default 0.25."
        " **Server processes on core 0, load generator on core 1** (`taskset`), as in every scenario.",
        "",
        "| System | Run | `retry:` sent (min-max, distinct) | Reconnects sent: first / median / last"
        " | Most reconnects in 100 ms | Answer to a reconnect p50 / p99 / max"
        " | All caught up | Core 0 (server) over the storm / busiest 250 ms | Core 1 (load gen) | Other jobs"
        " | Lost / dup |",
        "|---|---|---|---|---:|---|---:|---|---:|---:|---|",
    ]
    for name, runs in retry_storms.items():
        for label, storm in runs.items():
            if "dropped" not in storm:
                lines.append(f"| {name} | {label} | not finished: {'; '.join(storm['notes']) or 'see notes'}"
                             " | | | | | | | | |")
                continue
            arrivals, answer, cpu = storm.get("arrivals") or {}, storm["answer"], storm["cpu"]
            if arrivals.get("count"):
                retry = (f"{arrivals['retry_min_ms']:,}-{arrivals['retry_max_ms']:,} ms,"
                         f" {arrivals['retry_distinct']:,}" if arrivals["retry_min_ms"] is not None else "none")
                sent = (f"{_ms(arrivals['first_ms'])} / {_ms(arrivals['p50_ms'])} / {_ms(arrivals['last_ms'])}")
                peak = f"{arrivals['peak_per_100ms']:,} of {arrivals['count']:,}"
            else:
                retry, sent, peak = "n/a", "n/a", "n/a"
            cores = cpu["core_pct"]
            bound = " **client-bound**" if cpu["client_bound"] else ""
            lines.append(
                f"| {name} | {label} | {retry} | {sent} | {peak}"
                f" | {_ms(answer['p50_ms'])} / {_ms(answer['p99_ms'])} / {_ms(answer.get('max_ms'))}"
                f" | {_ms(storm['caught_up']['all_ms'])}"
                f" | {_pct(cores[0] if cores else None)} / {_pct(cpu.get('peak_core_pct'))}"
                f" | {_pct(cores[-1] if len(cores) > 1 else None)}{bound}"
                f" | {_pct(cpu.get('other_pct'))} | {storm['lost']:,} / {storm['duplicated']:,} |"
            )
    lines += [
        "",
        "How to read it: times are from the kill. *Reconnects sent*: when the killed worker's clients"
        " sent the reconnect that got its 200 -- the wave the surviving and the new worker meet; *most in"
        " 100 ms* is its crest (fixed 100 ms bins from the kill). *Answer to a reconnect*: that request"
        " sent -> the first byte of its answer, the wait each client sees. *All caught up*: the kill ->"
        " the last of the killed worker's clients holding every message acknowledged before its first"
        " byte (as in the plain storm). Core 0 is averaged over the kill -> all caught up, and its busiest"
        " 250 ms sample is given too; a load-generator core at >= 95% marks the run **client-bound** (the"
        " clients' own delays are then part of every figure). The machine is shared: the two runs are a"
        " minute or so apart, each a single sample; *other jobs* (busy time of neither the server nor the"
        " load generator, in % of one core) says how crowded each was.",
        "",
    ]
    notes = [f"{name}, {label}: {note}" for name, runs in retry_storms.items()
             for label, storm in runs.items() for note in storm.get("notes", [])]
    if notes:
        lines += ["Notes:", "", *[f"- {note}" for note in notes], ""]
    return lines


def _replacement_lines(storms: dict[str, dict[str, Any]]) -> list[str]:
    """The killed worker's replacement, boot to serving, and who took the reconnects (ours, per store)."""
    rows = []
    for name, storm in storms.items():
        replacement = storm.get("replacement") or {}
        if replacement.get("forked_ms") is None and replacement.get("serving_ms") is None:
            continue
        before, after = storm.get("streams_per_worker_before", {}), storm.get("streams_per_worker_after", {})
        killed, new = str(storm.get("killed_pid")), str(replacement.get("pid"))
        survivors = [pid for pid in before if pid != killed]
        took = ", ".join(f"{after.get(pid, 0) - before[pid]:+,} (now {after.get(pid, 0):,})" for pid in survivors)
        overflows = storm.get("listen_overflows")
        rows.append(
            f"| {name} | {_ms(replacement.get('forked_ms'))} | {_ms(replacement.get('serving_ms'))}"
            f" | {after.get(new, 0):,} | {took or 'n/a'} | {'n/a' if overflows is None else f'{overflows:,}'} |"
        )
    if not rows:
        return []
    return [
        "The killed worker's replacement (ours, per store): *forked* is the kill -> a new worker pid"
        " of the master; *serving* is the kill -> the replacement's first admitted stream"
        " (`sse_open_streams` > 0 in its own metrics file), both polled every 20 ms from outside."
        " The last columns count the load generator's streams per worker once all were back"
        " (the surviving worker's change since the kill: the reconnects it took). *Accept-queue"
        " overflows*: the machine's TcpExt ListenOverflows from the kill to all back, connection"
        " attempts dropped because a listen queue was full (each costs its client a SYN retry, 1 s"
        " or more); machine-wide, so other jobs' servers count too.",
        "",
        "| System | Kill -> replacement forked | Kill -> replacement serving | Streams on the replacement"
        " | Surviving worker took | Accept-queue overflows |",
        "|---|---:|---:|---:|---|---:|",
        *rows,
        "",
    ]


def _details(name: str, storm: dict[str, Any]) -> list[str]:
    out = []
    cpu, queries, publish = storm["cpu"], storm["queries"], storm["publish"]
    phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in storm["phases"].items())
    out.append(
        f"{name}: phases {phases}; window filled with {storm['fill']['published']:,} messages in"
        f" {storm['fill']['seconds']:.1f} s; streams per worker before the kill {storm['streams_per_worker']};"
        f" {storm['never_connected']:,} streams were refused at their first request;"
        f" {storm['with_last_id']:,} streams had a Last-Event-ID and {storm['live_at_kill']:,} were connected"
        f" at the kill; {storm['dropped_before_kill']:,} had been dropped by the server before it;"
        f" {storm['resumed']:,} resumed,"
        f" {storm['dropped_twice']:,} dropped more than once, {storm['not_caught_up']:,} never caught up;"
        f" {_fmt(storm['missed_per_resume'])} messages caught up per resume on average;"
        f" {storm['resets']:,} reset events."
    )
    survivors = storm.get("survivor_latency")
    stayed = storm["streams_recorded"] - storm["never_connected"] - storm["dropped"]
    if survivors and not survivors["count"] and stayed:
        out.append(f"{name}: the {stayed:,} streams that stayed connected received **none** of the"
                   " messages published from the kill on.")
    if survivors and survivors["count"]:
        out.append(
            f"{name}: streams that stayed connected, delivery latency of the messages published from"
            f" the kill on: p50 {_ms(survivors['p50_ms'])}, p99 {_ms(survivors['p99_ms'])},"
            f" max {_ms(survivors['max_ms'])} ({survivors['count']:,} deliveries)."
        )
    out.append(
        f"{name}: CPU over the {cpu['window_s']:.1f} s storm window: cores {[round(c) for c in cpu['core_pct']]}%,"
        f" server processes {cpu['server_pct']:.0f}%, load generator {cpu['loadgen_pct']:.0f}%,"
        f" other (jobs sharing the machine, kernel) {cpu.get('other_pct', 0):.0f}%"
        + (" (client-bound)" if cpu["client_bound"] else "") + "."
    )
    if storm.get("dropped_twice_examples"):
        out.append(f"{name}: streams dropped more than once (times from the kill):"
                   f" {storm['dropped_twice_examples']}")
    out.append(
        f"{name}: publisher sent {publish['sent']:,}, acknowledged {publish['acked']:,}, failed {publish['failed']:,}"
        + (f" {publish['errors']}" if publish["errors"] else "")
        + f"; stored without an acknowledgement: {publish['stored_not_acked']:,}"
        + (f"; history check {storm['history_check']}" if storm.get("history_check") else "")
        + "."
    )
    if queries:
        ops = "; ".join(
            f"{op or '(no label)'} {v['storm']:,.0f} (background {v['background']:,.0f})"
            for op, v in queries["by_operation"].items()
        )
        out.append(
            f"{name}: store queries over the {queries['window_s']:.1f} s window, by operation: {ops};"
            f" total {queries['total']:,.0f}, net of background {queries['net']:,.0f};"
            f" per resume {queries['per_resume_raw']} raw, {queries['per_resume_net']} net."
            f" Cross-check from the kill to the end of the run: GET /metrics delta"
            f" {_sum(queries['exposition_delta'])}, per-file delta {_sum(queries['files_delta'])}."
        )
    else:
        out.append(f"{name}: store queries per resume n/a: no `sse_store_queries_total` in the server's metrics.")
    if storm["lost"] or storm["duplicated"] or storm["unexpected"] or storm["out_of_order_streams"]:
        out.append(
            f"{name}: **not exact**: {storm['lost']:,} lost, {storm['duplicated']:,} duplicated,"
            f" {storm['unexpected']:,} received that the truth does not hold,"
            f" {storm['out_of_order_streams']:,} streams out of store order; examples: {storm['examples']}"
        )
    out += [f"{name}: {note}" for note in storm["notes"]]
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def _sum(delta: dict[str, float] | None) -> str:
    return "n/a" if delta is None else f"{sum(delta.values()):,.0f}"
