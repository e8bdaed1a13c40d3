"""The three PNG plots written next to the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on the bench machine
import matplotlib.pyplot as plt  # noqa: E402


def draw_plots(
    summary: dict[str, dict[str, Any]], results: Any, plan: Any, out_dir: Path, stem: str
) -> list[tuple[str, Path]]:
    """Draw every plot; return (title, path) pairs for the report."""
    return [
        _latency_vs_subscribers(summary, out_dir / f"{stem}-latency.png"),
        _deliveries_vs_rate(summary, plan, out_dir / f"{stem}-fanout.png"),
        _rss_per_stream(summary, out_dir / f"{stem}-rss.png"),
    ]


def _latency_vs_subscribers(summary: dict[str, Any], path: Path) -> tuple[str, Path]:
    title = "Broadcast: delivery time vs subscribers"
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for system, entry in summary.items():
        sizes = sorted(entry["broadcast"])
        if not sizes:
            continue
        subs = [entry["broadcast"][s]["subscribers"] for s in sizes]
        one = [entry["broadcast"][s]["one_last_ms"] for s in sizes]
        burst = [entry["broadcast"][s]["burst_all_ms"] for s in sizes]
        line = axes.plot(subs, one, marker="o", label=f"{system}: 1 message, last delivery")[0]
        axes.plot(subs, burst, marker="s", linestyle="--", color=line.get_color(),
                  label=f"{system}: burst, all delivered")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("subscribers")
    axes.set_ylabel("ms after first publish request")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return title, path


def _deliveries_vs_rate(summary: dict[str, Any], plan: Any, path: Path) -> tuple[str, Path]:
    title = f"Sustained fan-out to {plan.fanout_subscribers:,} subscribers"
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for system, entry in summary.items():
        fan = entry.get("fanout")
        if not fan or not fan["points"]:
            continue
        # Every repetition, one line each: the ladder is sensitive to one noisy
        # step, and the spread between repetitions is part of the result.
        color = None
        for repetition, ladder in enumerate(fan["points"]):
            points = sorted(ladder, key=lambda p: p["rate"])
            rates = [p["rate"] for p in points]
            label = system if repetition == 0 else None
            line = top.plot(rates, [p["deliveries_per_s"] for p in points], marker="o",
                            color=color, alpha=0.8, label=label)[0]
            color = line.get_color()
            bottom.plot(rates, [p["p99_ms"] for p in points], marker="o", color=color,
                        alpha=0.8, label=label)
            failed = [p for p in points if not p["passed"]]
            bottom.scatter([p["rate"] for p in failed], [p["p99_ms"] or 0 for p in failed],
                           marker="x", s=80, color=color)
    top.set_ylabel("deliveries/s received")
    top.set_title(title)
    bottom.axhline(plan.latency_budget_ms, color="grey", linestyle=":", label="p99 budget")
    bottom.set_ylabel("p99 publish->receive (ms)")
    bottom.set_xlabel("publish rate (messages/s); one line per repetition; x = failed step")
    for axes in (top, bottom):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return title, path


def _rss_per_stream(summary: dict[str, Any], path: Path) -> tuple[str, Path]:
    title = "Server RSS per idle stream"
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for system, entry in summary.items():
        steps = sorted(n for n, i in entry["idle"].items() if i["rss_per_stream_kb"] is not None)
        if steps:
            axes.plot(steps, [entry["idle"][n]["rss_per_stream_kb"] for n in steps], marker="o", label=system)
    axes.axhline(12, color="grey", linestyle=":", label="target for ours: 12 KB")
    axes.set_xscale("log")
    axes.set_xlabel("streams held")
    axes.set_ylabel("KB RSS per stream (all server processes)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return title, path
