"""Turns the raw results of a run into bench/results/<date>.md and its plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .cores import LOADGEN_CPUS, SERVER_CPUS, client_bound
from .hostile_report import TARGET_KB_PER_STREAM, hostile_figure, hostile_lines
from .machine import describe_machine
from .measure import median_of
from .soak_report import soak_lines
from .storm_report import retry_storm_lines, storm_lines
from .systems import OURS

Results = dict[str, list[dict[str, Any]]]  # system name -> one dict per repetition


def _fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:,.{digits}f}"
    else:
        text = f"{value:,}"
    return f"{text}{unit}"


def _median(reps: list[dict[str, Any] | None], key: str) -> Any:
    return median_of([rep.get(key) for rep in reps if rep])


def _total(reps: list[dict[str, Any] | None], key: str) -> int:
    return sum(rep.get(key) or 0 for rep in reps if rep)


def _step(rep: dict[str, Any], scenario: str, field: str, value: int) -> dict[str, Any] | None:
    return next((s for s in rep.get(scenario) or [] if s.get(field) == value), None)


def summarise(results: Results, plan: Any) -> dict[str, dict[str, Any]]:
    """Medians over repetitions of every figure the table and the targets use."""
    summary: dict[str, dict[str, Any]] = {}
    for system, reps in results.items():
        entry: dict[str, Any] = {"repeats": len(reps), "notes": []}
        for rep in reps:
            entry["notes"].extend(rep.get("notes", []))
        entry["idle"] = {}
        for streams in plan.idle_steps:
            steps = [_step(rep, "idle", "streams", streams) for rep in reps]
            if any(steps):
                entry["idle"][streams] = {
                    "held": _median(steps, "held"),
                    "rss_per_stream_kb": _median(steps, "rss_per_stream_kb"),
                    "open_seconds": _median(steps, "open_seconds"),
                    "errors": [s["open_errors"] for s in steps if s and s["open_errors"]],
                }
        entry["broadcast"] = {}
        for size in plan.broadcast_sizes:
            runs = [
                next((b for b in rep.get("broadcast") or [] if b.get("target") == size), None)
                for rep in reps
            ]
            if any(runs):
                entry["broadcast"][size] = {
                    key: _median(runs, key)
                    for key in (
                        "subscribers", "one_last_ms", "one_first_ms", "burst_size",
                        "burst_all_ms", "burst_p50_ms", "burst_p99_ms",
                        "server_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct",
                        "lingering_closed_streams",
                    )
                } | {
                    "lost": _total(runs, "lost"),
                    "duplicated": _total(runs, "duplicated"),
                    "publish_failed": _total(runs, "publish_failed"),
                }
        fanouts = [rep.get("fanout") for rep in reps]
        if any(fanouts):
            bests = [f.get("best") if f else None for f in fanouts]
            entry["fanout"] = {
                "max_deliveries_per_s": _median(fanouts, "max_deliveries_per_s"),
                "rate": _median(bests, "rate"),
                "p99_ms": _median(bests, "p99_ms"),
                "server_cpu_us_per_delivery": _median(bests, "server_cpu_us_per_delivery"),
                "server_cpu_pct": _median(bests, "server_cpu_pct"),
                "loadgen_cpu_pct": _median(bests, "loadgen_cpu_pct"),
                "other_cpu_pct": _median(bests, "other_cpu_pct"),
                "lost": _total(fanouts, "lost"),
                "duplicated": _total(fanouts, "duplicated"),
                "first_failures": [f["first_failure"] for f in fanouts if f and f["first_failure"]],
                "points": [f["points"] for f in fanouts if f],
            }
        crosses = [rep.get("cross") for rep in reps]
        if any(crosses):
            entry["cross"] = {
                key: _median(crosses, key)
                for key in (
                    "subscribers", "achieved_rate", "p50_ms", "p99_ms", "max_ms",
                    "server_cpu_pct", "loadgen_cpu_pct", "other_cpu_pct",
                )
            } | {
                "lost": _total(crosses, "lost"),
                "duplicated": _total(crosses, "duplicated"),
                "publish_failed": _total(crosses, "publish_failed"),
                "streams_per_worker": [c.get("streams_per_worker") for c in crosses if c],
            }
        summary[system] = entry
    return summary


def _publish_failures(figures: dict[str, Any]) -> str:
    """A warning for the result text when publish requests failed (not in Lost)."""
    failed = figures.get("publish_failed") or 0
    return f"; **{failed:,} publish requests failed** (all repetitions)" if failed else ""


def _table(summary: dict[str, dict[str, Any]], plan: Any) -> list[str]:
    lines = [
        "| Scenario | System | Result (median) | Lost | Dup | Server CPU | Load-gen CPU | Other CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def row(scenario: str, system: str, result: str, src: dict[str, Any] | None = None) -> None:
        src = src or {}
        if _bound(src):
            # The load generator's core was full: what was measured is the client.
            result = f"**client-bound** (load generator saturated; read as a lower bound): {result}"
        lost = src.get("lost", "-")
        dup = src.get("duplicated", "-")
        lines.append(
            f"| {scenario} | {system} | {result} | {lost} | {dup} |"
            f" {_fmt(src.get('server_cpu_pct'), 0, '%')} |"
            f" {_fmt(src.get('loadgen_cpu_pct'), 0, '%')} |"
            f" {_fmt(src.get('other_cpu_pct'), 0, '%')} |"
            if src
            else f"| {scenario} | {system} | {result} | - | - | - | - | - |"
        )

    for streams in plan.idle_steps:
        for system, entry in summary.items():
            idle = entry["idle"].get(streams)
            if idle:
                row(
                    f"1. idle {streams:,} streams",
                    system,
                    f"held {_fmt(idle['held'], 0)}/{streams:,};"
                    f" {_fmt(idle['rss_per_stream_kb'])} KB RSS/stream;"
                    f" opened in {_fmt(idle['open_seconds'])} s"
                    + (f"; open errors (retried) {idle['errors'][0]}" if idle["errors"] else ""),
                )
            else:
                row(f"1. idle {streams:,} streams", system, "not reached")
    for size in plan.broadcast_sizes:
        for system, entry in summary.items():
            cast = entry["broadcast"].get(size)
            if cast:
                row(
                    f"2. broadcast to {size:,}",
                    system,
                    f"{_fmt(cast['subscribers'], 0)} subs: 1 msg last delivery"
                    f" {_fmt(cast['one_last_ms'])} ms; burst of {_fmt(cast['burst_size'], 0)}"
                    f" all delivered {_fmt(cast['burst_all_ms'], 0)} ms"
                    f" (p99 {_fmt(cast['burst_p99_ms'], 0)} ms)"
                    + (
                        f"; {_fmt(cast['lingering_closed_streams'], 0)} closed streams still held"
                        if cast["lingering_closed_streams"]
                        else ""
                    )
                    + _publish_failures(cast),
                    cast,
                )
            else:
                row(f"2. broadcast to {size:,}", system, "not run")
    for system, entry in summary.items():
        fan = entry.get("fanout")
        if fan:
            row(
                f"3. sustained fan-out, {plan.fanout_subscribers:,} subs",
                system,
                f"max {_fmt(fan['max_deliveries_per_s'], 0)} deliveries/s at p99 <="
                f" {plan.latency_budget_ms:.0f} ms ({_fmt(fan['rate'], 0)} msg/s,"
                f" p99 {_fmt(fan['p99_ms'])} ms);"
                f" {_fmt(fan['server_cpu_us_per_delivery'])} µs server CPU/delivery",
                fan,
            )
        else:
            row(f"3. sustained fan-out, {plan.fanout_subscribers:,} subs", system, "not run")
    for system, entry in summary.items():
        cross = entry.get("cross")
        if cross:
            spread = cross["streams_per_worker"][0] if cross["streams_per_worker"] else []
            row(
                f"4. cross-worker, {plan.cross_rate:.0f} msg/s",
                system,
                f"p50 {_fmt(cross['p50_ms'])} / p99 {_fmt(cross['p99_ms'])} /"
                f" max {_fmt(cross['max_ms'])} ms at {_fmt(cross['achieved_rate'], 0)} msg/s"
                + (f"; streams per worker {spread}" if spread else "")
                + _publish_failures(cross),
                cross,
            )
        else:
            row(f"4. cross-worker, {plan.cross_rate:.0f} msg/s", system, "not run")
    return lines


LOWER, HIGHER = "lower", "higher"
# The least for idle memory, whatever the peers do.
IDLE_KB_FLOOR = 12


def _bound(figures: dict[str, Any] | None) -> bool:
    """The load generator's core was saturated (median over repetitions) while this was measured."""
    return client_bound((figures or {}).get("loadgen_cpu_pct"))


def target_figures(summary: dict[str, dict[str, Any]], storms: dict[str, dict[str, Any]], plan: Any,
                   hostile: dict[str, dict[str, Any]] | None = None,
                   ) -> list[tuple[str, str, str, dict[str, tuple[float | None, bool]]]]:
    """(row, unit, better, {system: (figure, client-bound)}) for every target of the issue's table."""
    largest = max(plan.idle_steps)
    held = [n for n in plan.idle_steps if (summary.get("ours", {}).get("idle", {}).get(n) or {}).get("held") == n]
    step = max(held) if held else largest
    size = max(plan.broadcast_sizes)

    def per_system(pick: Any) -> dict[str, tuple[float | None, bool]]:
        return {name: pick(name, entry) for name, entry in summary.items()}

    def idle(name: str, entry: dict[str, Any]) -> tuple[float | None, bool]:
        figures = entry["idle"].get(step)
        # A step a system did not fully hold is no figure for it.
        if not figures or figures["held"] != step:
            return None, False
        return figures["rss_per_stream_kb"], False

    def broadcast(key: str) -> Any:
        def pick(name: str, entry: dict[str, Any]) -> tuple[float | None, bool]:
            cast = entry["broadcast"].get(size)
            if not cast or (cast["subscribers"] or 0) < size or cast["lost"] or cast["publish_failed"]:
                return None, False
            return cast[key], _bound(cast)
        return pick

    def fanout(name: str, entry: dict[str, Any]) -> tuple[float | None, bool]:
        fan = entry.get("fanout") or {}
        # A ladder the repetition's time budget cut short found no maximum, only a lower bound.
        if any(not _ladder_finished(points, plan) for points in fan.get("points", [])):
            return None, False
        return fan.get("max_deliveries_per_s"), _bound(fan)

    def cross(name: str, entry: dict[str, Any]) -> tuple[float | None, bool]:
        figures = entry.get("cross") or {}
        if figures.get("lost") or figures.get("publish_failed"):
            return None, False
        return figures.get("p99_ms"), _bound(figures)

    rows = [
        (f"idle RSS per held stream ({step:,} streams)", "KB", LOWER, per_system(idle)),
        (f"one message to {size:,} subscribers, last delivery", "ms", LOWER, per_system(broadcast("one_last_ms"))),
        (f"burst of {plan.burst_size} to {size:,}, all delivered", "ms", LOWER, per_system(broadcast("burst_all_ms"))),
        (f"max deliveries/s at p99 <= {plan.latency_budget_ms:.0f} ms ({plan.fanout_subscribers:,} subscribers)",
         "/s", HIGHER, per_system(fanout)),
        (f"cross-worker p99, {plan.fanout_subscribers:,} x {plan.cross_rate:.0f} msg/s", "ms", LOWER,
         per_system(cross)),
    ]
    if storms:
        storm_row: dict[str, tuple[float | None, bool]] = {}
        for name, storm in storms.items():
            # A resume that lost or repeated messages is no resume to compare with.
            if "dropped" in storm and not storm["lost"] and not storm["duplicated"]:
                storm_row[name] = (storm["first_byte"]["all_ms"], bool(storm["cpu"]["client_bound"]))
        rows.append(("reconnect storm, time until all resumed (first byte)", "ms", LOWER, storm_row))
    if hostile:
        # Memory per stream does not depend on how fast the client opened them: never client-bound.
        rows.append((HOSTILE_ROW, "KB", LOWER, {name: (hostile_figure(run), False) for name, run in hostile.items()}))
    return rows


def _ladder_finished(points: list[dict[str, Any]], plan: Any) -> bool:
    """The fan-out ladder found its limit: a step failed, or the top rate passed."""
    if any(not point["passed"] for point in points):
        return True
    return bool(points) and points[-1]["rate"] >= max(plan.ladder_rates)


HOSTILE_ROW = "hostile readers, RSS growth per non-reading stream"


def _targets(summary: dict[str, dict[str, Any]], storms: dict[str, dict[str, Any]], plan: Any,
             hostile: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's targets: our figure as a ratio to the best peer's in this run."""
    if "ours" not in summary:
        return ["Our server was not measured in this run, so no target is checked."]
    lines = [
        "| Target | ours | ours-mongodb (FerretDB) | best peer | ours / best peer | Met |",
        "|---|---:|---:|---|---:|---|",
    ]
    for row, unit, better, figures in target_figures(summary, storms, plan, hostile):
        ours, ours_bound = figures.get("ours", (None, False))
        peers = {
            name: value for name, (value, bound) in figures.items()
            if name not in OURS and value is not None and not bound
        }
        best_name = (min if better == LOWER else max)(peers, key=peers.__getitem__) if peers else None
        best = peers.get(best_name) if best_name else None
        ratio = ours / best if ours is not None and best else None
        if ours_bound:
            met = "client-bound"
        elif ratio is None:
            met = "n/a"
        else:
            met = "yes" if (ratio <= 1.0 if better == LOWER else ratio >= 1.0) else "no"
        if row.startswith("idle RSS") and ours is not None:
            met += f"; the floor, <= {IDLE_KB_FLOOR} KB: {'yes' if ours <= IDLE_KB_FLOOR else 'no'}"
        if row == HOSTILE_ROW and ours is not None:
            met += f"; the target, <= {TARGET_KB_PER_STREAM} KB: {'yes' if ours <= TARGET_KB_PER_STREAM else 'no'}"
        mongo, mongo_bound = figures.get("ours-mongodb", (None, False))
        lines.append(
            f"| {row} | {_cell(ours, unit, ours_bound)} | {_cell(mongo, unit, mongo_bound)}"
            f" | {f'{best_name} {_cell(best, unit, False)}' if best_name else 'n/a'}"
            f" | {_fmt(ratio, 2, ' x')} | {met} |"
        )
    lost = dup = 0
    ours = summary["ours"]
    for figures in [*ours["broadcast"].values(), ours.get("fanout") or {}, ours.get("cross") or {}]:
        lost += figures.get("lost", 0)
        dup += figures.get("duplicated", 0)
    storm = storms.get("ours") or {}
    lost += storm.get("lost", 0)
    dup += storm.get("duplicated", 0)
    lines.append(f"| lost / duplicated (every scenario, every repetition) | {lost:,} / {dup:,} | | 0 / 0 | |"
                 f" {'yes' if lost == 0 and dup == 0 else 'no'} |")
    lines += [
        "",
        "Best peer: the best figure among the peers (not ours, not ours-mongodb) in this run, leaving"
        " out cells that are client-bound, that lost or failed to publish messages, that did not"
        " hold every stream, or whose fan-out ladder the repetition's time budget cut short"
        " (no limit found). Ratios below 1.0 are better for us where lower is better (memory, times),"
        " above 1.0 where higher is better (deliveries/s).",
    ]
    return lines


def _cell(value: float | None, unit: str, bound: bool) -> str:
    if bound:
        return "client-bound"
    if value is None:
        return "n/a"
    digits = 0 if unit == "/s" or value >= 100 else 1
    return f"{_fmt(float(value), digits)} {unit}"


def write_report(
    results: Results,
    storms: dict[str, dict[str, Any]],
    skipped: dict[str, str],
    systems: dict[str, tuple[str, tuple[str, ...]]],
    plan: Any,
    out_dir: Path,
    stem: str,
    started: str,
    elapsed_s: float,
    command: str,
    server_root: Path,
    machine: list[str] | None = None,
    hostile: dict[str, dict[str, Any]] | None = None,
    soaks: dict[str, dict[str, Any]] | None = None,
    retry_storms: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> Path:
    """Write <stem>.md, <stem>.json and the plots; return the Markdown path."""
    from .plots import draw_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    hostile = hostile or {}
    soaks = soaks or {}
    retry_storms = retry_storms or {}
    summary = summarise(results, plan)
    # Described when the run began (or taken from the run's .json when a report is
    # written again), so it names the server commit that was measured.
    machine = machine or describe_machine(server_root)
    meta = {
        "machine": machine,
        "started": started,
        "elapsed_s": elapsed_s,
        "command": command,
        "server_root": str(server_root),
        "systems": systems,
    }
    (out_dir / f"{stem}.json").write_text(
        json.dumps(
            {"plan": plan.__dict__, "skipped": skipped, "results": results, "storms": storms,
             "hostile": hostile, "soaks": soaks, "retry_storms": retry_storms, "meta": meta},
            indent=1,
            default=_json_default,
        )
    )
    plots = draw_plots(summary, results, plan, out_dir, stem) if results else []
    lines = [
        f"# SSE benchmark, {started}",
        "",
        (
            f"Mode: **{plan.mode}** ({plan.repeats} repetition{'s' if plan.repeats > 1 else ''} per system,"
            " medians shown; lost/dup are totals over all repetitions"
            + ("; the reconnect storm and the hostile readers run once per system)." if storms or hostile
               else ").")
            if results
            else f"Mode: **{plan.mode}**, "
            + " and ".join(name for name, ran in (("the reconnect storm", storms),
                                                  ("the reconnect storm with and without jitter", retry_storms),
                                                  ("the hostile readers", hostile), ("the soak", soaks)) if ran)
            + " only (once per system)."
        )
        + f" Wall time: {elapsed_s / 60:.1f} min.",
        f"Produced by `{command}`.",
        "",
        "## Machine",
        "",
        *[f"- {line}" for line in machine],
        "",
        "## Systems",
        "",
        *[f"- **{name}**: {description}" for name, (description, _) in systems.items()],
        "",
    ]
    caveats = [(name, c) for name, (_, notes) in systems.items() for c in notes]
    if caveats:
        lines += ["Caveats:", ""] + [f"- {name}: {c}" for name, c in caveats] + [""]
    if skipped:
        lines += ["Systems not run:", ""] + [f"- {name}: {why}" for name, why in skipped.items()] + [""]
    if results:
        lines += _classic_lines(summary, plan, plots, storms, hostile)
    lines += storm_lines(storms, plan)
    lines += retry_storm_lines(retry_storms, plan)
    lines += hostile_lines(hostile, plan)
    lines += soak_lines(soaks)
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _json_default(value: Any) -> Any:
    """Bytes (raw receipts) are not kept in the .json; anything else becomes text."""
    return None if isinstance(value, bytes) else str(value)


def _classic_lines(summary: dict[str, dict[str, Any]], plan: Any, plots: list[tuple[str, Path]],
                   storms: dict[str, dict[str, Any]], hostile: dict[str, dict[str, Any]]) -> list[str]:
    """The sections of scenarios 1-4 (the ones scenarios.py runs)."""
    lines = [
        "## Results",
        "",
        *_table(summary, plan),
        "",
        "Server CPU: all processes of the system (workers, master, Redis or Pushpin's"
        " condure/proxy/handler/zurl and GRIP backend), as % of one core over the scenario;"
        " they all share core 0, so 100% is the most any system gets. Load-gen CPU: the subscriber processes plus the"
        " publisher. Other CPU: everything else busy on the machine at the time"
        " (other jobs share it), so a saturated client or a noisy neighbour is visible."
        " Lost: deliveries not received by the end of the scenario's wait"
        f" ({plan.broadcast_timeout_seconds:.0f} s after a broadcast,"
        f" {plan.drain_timeout_seconds:.0f} s after a rate step).",
        "",
    ]
    notes = [(name, note) for name, entry in summary.items() for note in entry["notes"]]
    if notes:
        lines += ["Notes from the run:", ""] + [f"- {name}: {note}" for name, note in notes] + [""]
    failures = [
        (name, failure)
        for name, entry in summary.items()
        for failure in (entry.get("fanout") or {}).get("first_failures", [])
    ]
    if failures:
        lines += ["Fan-out ladder, first failing step per repetition:", ""]
        for name, f in failures:
            lines.append(
                f"- {name}: {f['rate']:.0f} msg/s (sent {f['achieved_rate']:.0f}/s),"
                f" {f['deliveries_per_s']:.0f} deliveries/s, p99 {_fmt(f['p99_ms'])} ms,"
                f" lost {f['lost']}, server {f['server_cpu_pct']:.0f}%,"
                f" load-gen {f['loadgen_cpu_pct']:.0f}% CPU"
            )
        lines.append("")
    lines += [
        "## Targets: ours as a ratio to the best peer",
        "",
        "How to read it: each row takes our median figure (SQLite store) and divides it by the best"
        " peer's median figure from this same run, on the same core split. The ratio must be at most"
        " 1.0 for a time or a memory figure and at least 1.0 for a throughput figure. ours-mongodb is"
        " shown for reference and is not compared. Its store is FerretDB, so what it costs is"
        " FerretDB's cost. Raw figures for every system are in the Results table below.",
        "",
        *_targets(summary, storms, plan, hostile),
        "",
    ]
    lines += ["## Plots", ""] + [f"![{title}]({path.name})" for title, path in plots] + [""]
    lines += [
        "## How it was measured",
        "",
        "- Every system runs on loopback with 2 worker processes, logs off, 15 s heartbeats,"
        " and is started fresh for each repetition; streams open once per repetition:"
        " 1k -> 5k -> 10k -> 20k (idle RSS after each step, minus RSS before the first stream),"
        " then closed down to each broadcast size, then to the fan-out size.",
        "- Each message carries `SSEB:<scenario>:<seq>:<CLOCK_MONOTONIC ns at send>;` in its text;"
        " subscribers scan the raw stream for it, so latency is publish request -> receipt and"
        " every (stream, message) pair is checked for loss and duplication."
        " Only messages published during the scenario count.",
        "- Publish requests that failed (error status or no answer in"
        " 30 s) are not in Lost, which counts only published messages; the result"
        " text flags them.",
        "- Fan-out: 1k subscribers, publish rate doubled step by step (open-loop schedule) until"
        f" p99 > {plan.latency_budget_ms:.0f} ms, a loss, a publish error or the publisher"
        " falling behind; one extra step halfway between the last pass and the failure."
        " Server CPU µs per delivery = utime+stime of all server processes / deliveries.",
        "- The load generator is asyncio + uvloop with raw sockets, several processes, each with"
        " its own source address (127.0.0.2, ...).",
        f"- **Core split**: every system's server processes (workers, masters, Redis, FerretDB,"
        f" Pushpin's helpers, a Go server's supervisor loop) run on core {SERVER_CPUS} (`taskset`"
        f" at launch, inherited by children), the load generator (subscriber processes and the"
        f" orchestrator, which publishes) on core {', '.join(map(str, sorted(LOADGEN_CPUS)))}"
        " (`sched_setaffinity`), in every scenario. Every system so gets the same single core. A cell"
        " whose load-generator CPU was >= 95% (its core full) says **client-bound**: it measured the"
        " client, and it is left out of the best-peer comparison. Other jobs on this shared machine"
        " are not kept off either core; the Other CPU column shows them.",
        "",
    ]
    return lines
