"""The storm's replacement watch reads a worker's open streams from prometheus_client's own file format."""

import asyncio
import json
import time

import pytest
from ssebench.replacement import listen_overflows, open_streams, watch_replacement


def _write_gauge(directory, pid: int, value: float) -> None:
    """Write `sse_open_streams` as prometheus_client's multiprocess mode does (its MmapedDict)."""
    mmap_dict = pytest.importorskip("prometheus_client.mmap_dict")
    key = json.dumps(["sse_open_streams", "sse_open_streams", {}, "SSE streams open now."], sort_keys=True)
    store = mmap_dict.MmapedDict(str(directory / f"gauge_livesum_{pid}.db"))
    store.write_value(key, value, time.time())
    store.close()


def test_open_streams_reads_the_worker_gauge_and_none_before_the_file(tmp_path):
    assert open_streams(tmp_path, 42) is None
    _write_gauge(tmp_path, 42, 17.0)
    assert open_streams(tmp_path, 42) == 17.0


def test_the_watch_finds_the_new_pid_then_its_first_admitted_stream(tmp_path):
    pids = [1, 2]
    out: dict = {}

    async def scenario() -> None:
        kill_ns = time.monotonic_ns()
        watching = asyncio.create_task(watch_replacement(lambda: list(pids), tmp_path, {1, 2}, kill_ns, 5.0, out))
        await asyncio.sleep(0.1)
        assert out["pid"] is None
        pids[:] = [2, 3]  # 1 killed, 3 forked
        await asyncio.sleep(0.1)
        assert out["pid"] == 3 and out["forked_ms"] is not None and out["serving_ms"] is None
        _write_gauge(tmp_path, 3, 0.0)  # warming: the gauge is written at zero first
        await asyncio.sleep(0.1)
        assert out["serving_ms"] is None
        _write_gauge(tmp_path, 3, 1.0)
        await asyncio.wait_for(watching, 2.0)
        assert out["forked_ms"] <= out["serving_ms"]

    asyncio.run(scenario())


def test_listen_overflows_is_a_count_on_linux():
    value = listen_overflows()
    assert value is None or value >= 0
