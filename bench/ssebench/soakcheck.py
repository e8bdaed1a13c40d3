"""The soak's figures, from what soak.py gathered (pure functions, no processes touched).

  records  one per kept stream (resuming.ResumingStream.record)
  truth    each kept room's acknowledged messages in store order
  samples  the workers' RSS, both cores' busy time, the load generator's CPU
           and the churn counts, read now and then (soak.Soak._sample)
"""

from __future__ import annotations

from array import array
from typing import Any


def kept_exactness(records: list[dict[str, Any]], truth: dict[int, list[int]]) -> dict[str, Any]:
    """How many kept streams hold exactly their room's truth; lost and duplicated messages over all."""
    exact = lost = duplicated = drops = behind = resets = 0
    for record in records:
        seqs = array("i")
        seqs.frombytes(record["seqs"])
        owed = truth.get(record["room"], [])
        exact += list(seqs) == owed
        lost += len(set(owed) - set(seqs))
        # Lost messages that all come after the last one received: the stream is behind, not skipping.
        behind += bool(owed) and list(seqs) == owed[:len(seqs)] and len(seqs) < len(owed)
        duplicated += len(seqs) - len(set(seqs))
        drops += record["drops"] + record["drops_before_mark"]
        resets += record.get("resets", 0)
    return {"streams": len(records), "exact": exact, "lost": lost, "duplicated": duplicated,
            "messages_owed": sum(len(seqs) for seqs in truth.values()), "drops": drops,
            "behind_not_skipping": behind,
            # `event: reset`: the server said the stream's place was gone from the window.
            "resets": resets}


def rss_figures(samples: list[dict[str, Any]], target_bytes: int) -> dict[str, Any]:
    """RSS after the warm-up and at the end, growth, per-core busy % and the load generator's CPU % over the soak."""
    after = next(s for s in samples if s["label"] == "after warm-up")
    first, end = samples[0], samples[-1]
    growth = sum(end["worker_rss"].values()) - sum(after["worker_rss"].values())
    wall = end["t_s"] - first["t_s"]
    core_pct = [100 * (b - a) / wall for a, b in zip(first["cores"], end["cores"], strict=True)] if wall else []
    loadgen_pct = 100 * (end["loadgen_cpu_s"] - first["loadgen_cpu_s"]) / wall if wall else None
    opened = end["churn"]["opened"] - after["churn"]["opened"]
    result = {
        "rss_after_warmup": sum(after["worker_rss"].values()),
        "rss_end": sum(end["worker_rss"].values()),
        "rss_growth": growth,
        "anon_growth": sum(end.get("worker_anon", {}).values()) - sum(after.get("worker_anon", {}).values()),
        "target_met": abs(growth) <= target_bytes,
        "same_workers": set(after["worker_rss"]) == set(end["worker_rss"]),
        "opened_measured": opened,
        "bytes_per_open": growth / opened if opened else None,
        "core_pct": core_pct,
        "loadgen_pct": loadgen_pct,
    }
    return result
