"""The soak's figures (bench/ssebench/soakcheck.py): kept streams' exactness and the RSS target, from raw readings."""

from array import array

from ssebench.soakcheck import kept_exactness, rss_figures

MB = 2**20


def _record(room: int, seqs: list[int], drops: int = 0) -> dict:
    return {"room": room, "seqs": array("i", seqs).tobytes(), "drops": drops, "drops_before_mark": 0}


def test_a_kept_stream_is_exact_only_with_its_rooms_messages_once_each_in_store_order():
    truth = {0: [1, 3, 5], 1: [2, 4]}
    records = [_record(0, [1, 3, 5]), _record(1, [4, 2]), _record(0, [1, 3, 3, 5]), _record(1, [2])]

    figures = kept_exactness(records, truth)

    assert figures["exact"] == 1
    assert figures["lost"] == 1  # the last stream never got 4
    assert figures["duplicated"] == 1
    assert figures["behind_not_skipping"] == 1  # [2] is a prefix of [2, 4]


def _sample(label: str, t_s: float, rss_mb: float, opened: int) -> dict:
    return {"label": label, "t_s": t_s, "worker_rss": {"1": int(rss_mb * MB / 2), "2": int(rss_mb * MB / 2)},
            "worker_anon": {"1": 0, "2": 0}, "cores": [t_s / 2, t_s / 10], "loadgen_cpu_s": t_s / 20,
            "churn": {"opened": opened}}


def test_the_rss_target_compares_the_end_with_after_the_warm_up_not_with_the_start():
    samples = [_sample("start", 0, 100, 0), _sample("after warm-up", 60, 110, 6000),
               _sample("measure", 120, 113, 12000), _sample("end", 180, 114, 18000)]

    figures = rss_figures(samples, 5 * MB)

    assert figures["rss_growth"] == 4 * MB
    assert figures["target_met"]
    assert figures["bytes_per_open"] == 4 * MB / 12000
    assert [round(pct) for pct in figures["core_pct"]] == [50, 10]
    assert not rss_figures(samples[:2] + [_sample("end", 180, 116, 18000)], 5 * MB)["target_met"]
