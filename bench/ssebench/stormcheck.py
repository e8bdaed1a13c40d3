"""The reconnect storm's figures, from the streams' records and the store's truth.

Pure functions of what storm.py gathered:
  records  one per stream (resuming.ResumingStream.record)
  truth    each room's marked messages in store order
  sent     the publisher's view of each message (Sent: send and ack times)
  samples  CPU and store-query readings taken every SAMPLE_SECONDS
A stream is *exact* when the sequence of marked messages it received,
duplicates and order included, equals its room's truth: every stream opened
before its room's first message, so all of it is owed to it.
"""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Any

from .cores import client_bound
from .publisher import Sent
from .storequeries import storm_delta, total_delta

EXAMPLES = 5


def analyse(records: list[dict[str, Any]], truth: dict[int, list[int]], sent: list[Sent],
            samples: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    kill_ns = run["kill_ns"]
    ack_ns = {record.seq: record.ack_ns for record in sent if record.ack_ns}
    # Messages published from the kill on: their delivery latency to the
    # streams that stayed connected shows whether live delivery stalled too.
    sent_after_kill = {record.seq: record.sent_ns for record in sent if record.sent_ns >= kill_ns}
    survivor_latency_ns: list[int] = []
    out: dict[str, Any] = {
        "streams_recorded": len(records), "never_connected": 0, "dropped_before_kill": 0,
        "dropped": 0, "resumed": 0, "dropped_twice": 0,
        "exact_streams": 0, "lost": 0, "duplicated": 0, "unexpected": 0, "out_of_order_streams": 0,
        "resets": 0, "not_caught_up": 0, "examples": [], "dropped_twice_examples": [],
    }
    first_byte_ns: list[int] = []
    reconnect_sent_ns: list[int] = []
    answer_ns: list[int] = []  # each resume: its reconnect sent -> the first byte of the answer
    retry_ms: list[int] = []
    caught_up_ns: list[int] = []
    missed: list[int] = []
    for record in records:
        if not record["ever_connected"]:
            # Refused at its first request (as EventSource, it does not retry): it
            # never subscribed, so nothing is owed to it; counted apart.
            out["never_connected"] += 1
            continue
        seqs = array("i")
        seqs.frombytes(record["seqs"])
        received = array("q")
        received.frombytes(record["received_ns"])
        owed = truth.get(record["room"], [])
        owed_set = set(owed)
        got = set(seqs)
        lost = len(owed_set - got)
        duplicated = len(seqs) - len(got)
        unexpected = len(got - owed_set)
        first_seen: dict[int, int] = {}
        order = []
        for seq, at in zip(seqs, received, strict=True):
            if seq not in first_seen:
                first_seen[seq] = at
                order.append(seq)
        in_order = [seq for seq in order if seq in owed_set] == [seq for seq in owed if seq in got]
        out["lost"] += lost
        out["duplicated"] += duplicated
        out["unexpected"] += unexpected
        out["out_of_order_streams"] += not in_order
        out["resets"] += record["resets"]
        out["dropped_before_kill"] += record["drops_before_mark"] > 0
        exact = list(seqs) == owed
        out["exact_streams"] += exact
        if not exact and len(out["examples"]) < EXAMPLES:
            out["examples"].append({
                "room": record["room"], "drops": record["drops"], "received": len(seqs), "owed": len(owed),
                "missing": sorted(owed_set - got)[:10],
                "duplicates": sorted(s for s, n in Counter(seqs).items() if n > 1)[:10],
                "unexpected": sorted(got - owed_set)[:10], "in_order": in_order, "resets": record["resets"],
            })
        if not record["drops"]:
            if record["live_at_mark"]:
                survivor_latency_ns.extend(
                    at - sent_after_kill[seq] for seq, at in first_seen.items() if seq in sent_after_kill
                )
            continue
        out["dropped"] += 1
        if record["drops"] > 1:
            out["dropped_twice"] += 1
            if len(out["dropped_twice_examples"]) < EXAMPLES:
                out["dropped_twice_examples"].append(
                    [f"{what} at {(at - kill_ns) / 1e6:+.0f} ms" for what, at in record["timeline"][:6]]
                )
        if not record["head_ns"]:
            continue
        out["resumed"] += 1
        first_byte_ns.append(record["first_byte_ns"] - kill_ns)
        reconnect_sent_ns.append(record["reconnect_sent_ns"] - kill_ns)
        answer_ns.append(record["first_byte_ns"] - record["reconnect_sent_ns"])
        if record.get("retry_ms") is not None:
            retry_ms.append(record["retry_ms"])
        # Caught up: it has every message of its room that the store had
        # acknowledged by the time the server answered its reconnect.
        answered_at = record["first_byte_ns"]
        due = [seq for seq in owed if 0 < ack_ns.get(seq, 0) <= answered_at]
        missed.append(sum(1 for seq in due if first_seen.get(seq, 0) > record["lost_ns"]))
        if all(seq in first_seen for seq in due):
            caught = max([record["head_ns"]] + [first_seen[seq] for seq in due])
            caught_up_ns.append(caught - kill_ns)
        else:
            out["not_caught_up"] += 1
    out["first_byte"] = _spread(first_byte_ns, out["dropped"])
    out["caught_up"] = _spread(caught_up_ns, out["dropped"])
    out["arrivals"] = _arrivals(reconnect_sent_ns, retry_ms)
    out["answer"] = _spread(answer_ns, len(answer_ns))
    out["missed_per_resume"] = sum(missed) / len(missed) if missed else None
    out["survivor_latency"] = _spread(survivor_latency_ns, len(survivor_latency_ns))
    out["publish"] = _publish(sent, truth)
    last_ms = out["caught_up"].get("max_ms") or out["first_byte"].get("max_ms") or 0
    end_ns = kill_ns + int(1e6 * last_ms)
    window = _window(samples, run["pre_kill_sample"], end_ns)
    out["cpu"] = _cpu(window, run["killed_pid"])
    out["cpu"]["peak_core_pct"] = _peak_core_pct(samples, run["pre_kill_sample"]["t_ns"], end_ns)
    out["queries"] = _queries(window, run, out["resumed"])
    return out


def _spread(values_ns: list[int], population: int) -> dict[str, float | None]:
    """All (max, when every one of `population` has it), p50, p99, in ms from the kill."""
    if not values_ns:
        return {"all_ms": None, "p50_ms": None, "p99_ms": None, "count": 0}
    ordered = sorted(values_ns)

    def pick(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6

    return {
        "all_ms": ordered[-1] / 1e6 if len(ordered) == population else None,
        "max_ms": ordered[-1] / 1e6,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "count": len(ordered),
    }


ARRIVAL_BIN_NS = 100_000_000


def _arrivals(sent_ns: list[int], retry_ms: list[int]) -> dict[str, Any]:
    """When the resumed streams sent their reconnect (from the kill), and the `retry:` they had.

    The wave the server meets: from the first to the last reconnect, and the
    most sent within any 100 ms (fixed bins from the kill).
    """
    if not sent_ns:
        return {"count": 0}
    ordered = sorted(sent_ns)
    bins = Counter(value // ARRIVAL_BIN_NS for value in ordered)
    return {
        "count": len(ordered),
        "first_ms": ordered[0] / 1e6,
        "p50_ms": ordered[len(ordered) // 2] / 1e6,
        "last_ms": ordered[-1] / 1e6,
        "peak_per_100ms": max(bins.values()),
        "retry_min_ms": min(retry_ms) if retry_ms else None,
        "retry_max_ms": max(retry_ms) if retry_ms else None,
        "retry_distinct": len(set(retry_ms)),
    }


def _publish(sent: list[Sent], truth: dict[int, list[int]]) -> dict[str, Any]:
    stored = {seq for seqs in truth.values() for seq in seqs}
    acked = {record.seq for record in sent if record.ack_ns}
    errors: dict[str, int] = {}
    for record in sent:
        if record.error:
            errors[record.error] = errors.get(record.error, 0) + 1
    return {
        "sent": len(sent),
        "acked": len(acked),
        "failed": len(sent) - len(acked),
        "errors": errors,
        # Stored (in the truth) without an acknowledgement: its request died with the worker.
        "stored_not_acked": len(stored - acked),
    }


def _window(samples: list[dict[str, Any]], start: dict[str, Any], end_ns: int) -> tuple[dict, dict]:
    """The readings at the kill and the first one at or after `end_ns` (else the last one)."""
    later = [s for s in samples if s["t_ns"] >= end_ns]
    end = later[0] if later else (samples[-1] if samples else start)
    return start, end


def _peak_core_pct(samples: list[dict[str, Any]], start_ns: int, end_ns: int) -> float | None:
    """The busiest SAMPLE_SECONDS of the first core (the server's) between two times, in %."""
    inside = [s for s in samples if start_ns <= s["t_ns"] <= end_ns]
    peaks = [100 * (b["cores"][0] - a["cores"][0]) / max(1e-6, (b["t_ns"] - a["t_ns"]) / 1e9)
             for a, b in zip(inside, inside[1:], strict=False)]
    return max(peaks) if peaks else None


def _cpu(window: tuple[dict, dict], killed_pid: int) -> dict[str, Any]:
    start, end = window
    seconds = max(1e-6, (end["t_ns"] - start["t_ns"]) / 1e9)
    cores = [100 * (b - a) / seconds for a, b in zip(start["cores"], end["cores"], strict=True)]
    server = 100 * sum(
        cpu - start["server"].get(pid, 0.0) for pid, cpu in end["server"].items() if pid != str(killed_pid)
    ) / seconds
    loadgen = 100 * (end["loadgen"] - start["loadgen"]) / seconds
    loadgen_core = cores[-1] if len(cores) > 1 else None
    return {
        "window_s": seconds,
        "core_pct": cores,
        "server_pct": server,
        "loadgen_pct": loadgen,
        # Busy time of neither: other jobs on this shared machine, and the kernel's
        # work not charged to a process.
        "other_pct": max(0.0, sum(cores) - server - loadgen),
        "client_bound": client_bound(loadgen_core),
    }


def _per_pid(readings: dict[str, dict[str, float]] | None) -> dict[int, dict[str, float]] | None:
    return None if readings is None else {int(pid): counts for pid, counts in readings.items()}


def _queries(window: tuple[dict, dict], run: dict[str, Any], resumed: int) -> dict[str, Any] | None:
    """Store queries over the storm by operation, the background share, and per resume."""
    start, end = window
    before, after = _per_pid(start["queries"]), _per_pid(end["queries"])
    base_start, base_end = (_per_pid(run["baseline"][k]["queries"]) for k in ("start", "end"))
    if before is None or after is None:
        return None
    storm = storm_delta(before, after, run["killed_pid"])
    seconds = (end["t_ns"] - start["t_ns"]) / 1e9
    background: dict[str, float] = {}
    if base_start is not None and base_end is not None:
        base_seconds = (run["baseline"]["end"]["t_ns"] - run["baseline"]["start"]["t_ns"]) / 1e9
        for operation, count in storm_delta(base_start, base_end, -1).items():
            background[operation] = count / base_seconds * seconds
    operations = sorted(set(storm) | set(background))
    by_operation = {
        op: {"storm": storm.get(op, 0.0), "background": background.get(op, 0.0),
             "net": storm.get(op, 0.0) - background.get(op, 0.0)}
        for op in operations
    }
    total = sum(storm.values())
    net = sum(v["net"] for v in by_operation.values())
    end_files = _per_pid(run.get("end_files"))
    return {
        "window_s": seconds,
        "by_operation": by_operation,
        "total": total,
        "net": net,
        "per_resume_raw": round(total / resumed, 2) if resumed else None,
        "per_resume_net": round(net / resumed, 2) if resumed else None,
        # Cross-check over [just before the kill, end of the run]: GET /metrics
        # (whatever it does with the dead worker) against the per-file sum.
        "exposition_delta": total_delta(run.get("pre_kill_metrics"), run.get("end_metrics")),
        "files_delta": storm_delta(before, end_files, run["killed_pid"]) if end_files else None,
    }
