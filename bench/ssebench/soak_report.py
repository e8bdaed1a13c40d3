"""The report's soak section (soak.py's results, one run per store of ours)."""

from __future__ import annotations

from typing import Any


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f} MB"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def soak_lines(soaks: dict[str, dict[str, Any]]) -> list[str]:
    if not soaks:
        return []
    first = next(iter(soaks.values()))
    lines = [
        "## Soak: clients that come and go",
        "",
        f"A full window of other rooms' messages ({first['window']:,}) first; then {first['clients']} clients,"
        f" each opening a stream on one of {first['rooms']} rooms, reading for"
        f" {first['read_seconds'][0]}-{first['read_seconds'][1]} s, dropping it and opening the next at once;"
        f" {first['kept_streams']} streams kept throughout (checked exact); {first['rate']:.0f} messages/s round the"
        f" rooms. {first['warmup_seconds'] / 60:.1f} min warm-up, then {first['measure_seconds'] / 60:.1f} min"
        " measured (BENCH_SOAK_MINUTES). **Server processes on core 0, load generator on core 1** (`taskset`)."
        f" Target: the workers' RSS at the end within {first['target_bytes'] / 2**20:.0f} MB of their RSS"
        " after the warm-up.",
        "",
        "| System | Streams opened / closed | Errors | Kept streams exact (lost / dup) | Workers' RSS after warm-up"
        " | At the end | Growth | Per stream opened (measured part) | Target | Core 0 | Core 1 | Load gen's own CPU |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    notes: list[str] = []
    for name, soak in soaks.items():
        if "rss_growth" not in soak:
            lines.append(f"| {name} | not finished: {'; '.join(soak['notes']) or 'see notes'} | | | | | | | | | |")
            continue
        churn, kept, cores = soak["churn"], soak["kept"], soak["core_pct"]
        per_open = soak["bytes_per_open"]
        bound = " **client-bound**" if soak["client_bound"] else ""
        lines.append(
            f"| {name} | {churn['opened']:,} / {churn['closed']:,} | {sum(churn['errors'].values()):,}"
            f" | {kept['exact']} of {kept['streams']} ({kept['lost']:,} / {kept['duplicated']:,})"
            f" | {_mb(soak['rss_after_warmup'])} | {_mb(soak['rss_end'])} | {soak['rss_growth'] / 2**20:+.1f} MB"
            f" | {'n/a' if per_open is None else f'{per_open:,.0f} B'}"
            f" | {'met' if soak['target_met'] else '**not met**'}"
            f" | {_pct(cores[0] if cores else None)} | {_pct(cores[-1] if len(cores) > 1 else None)}{bound}"
            f" | {_pct(soak['loadgen_pct'])} |"
        )
        if kept["lost"]:
            notes.append(f"{name}: kept streams lost {kept['lost']:,} of {kept['messages_owed']:,} owed messages"
                         f" after the drain; {kept['behind_not_skipping']} of {kept['streams']} only behind"
                         f" (what they got is a prefix of their room's messages); {kept.get('resets', 0)} reset events")
        if churn.get("not_stopped"):
            notes.append(f"{name}: {churn['not_stopped']} churning clients did not stop within 10 s of being told")
        if churn["errors"]:
            notes.append(f"{name}: errors by reason: {churn['errors']}")
        if not soak["same_workers"]:
            notes.append(f"{name}: a worker was replaced during the soak: its RSS is not comparable")
        notes += [f"{name}: {note}" for note in soak["notes"]]
        points = ", ".join(f"{s['t_s'] / 60:.1f} min {sum(s['worker_rss'].values()) / 2**20:.1f}"
                           for s in soak["samples"])
        notes.append(f"{name}: workers' RSS over the soak (MB): {points}")
    lines += [
        "",
        "How to read it: RSS is the sum over the 2 gunicorn workers (not the master, not FerretDB), read"
        " from /proc. *Per stream opened* is the growth over the measured part divided by the streams"
        " opened in it. Core % is each core's busy time over the soak from /proc/stat (other jobs on this"
        " shared machine included); *load gen's own CPU* is the subscriber processes' and the orchestrator's,"
        " in % of one core. A load-generator core at >= 95% marks the run **client-bound**.",
        "",
    ]
    if notes:
        lines += [*(f"- {note}" for note in notes), ""]
    return lines
