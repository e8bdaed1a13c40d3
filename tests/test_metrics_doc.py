"""docs/operations.md's metrics table lists what ``GET /metrics`` exports: every metric, its type, its labels.

The table once lacked ``sse_window_messages``, ``sse_window_bytes`` and the
``client_limit`` reason; this compares it with a first scrape, which lists
every metric and known label value at zero (tests/test_ops.py holds that).
"""
from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
ROW = re.compile(r"\| `(sse_\w+)(?:\{(\w+)\})?` \| (\w+) \| (.*) \|$")


def documented() -> dict[str, tuple[str, str | None, str]]:
    """Return {metric: (type, label name or None, meaning)} from the metrics table."""
    rows = {}
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            name, label, kind, meaning = match.groups()
            rows[name] = (kind, label, meaning)
    return rows


def exported(client) -> dict[str, tuple[str, dict[str, set[str]]]]:
    """Return {metric as scraped: (type, {label name: values})} from a scrape."""
    metrics = {}
    for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True)):
        if not family.name.startswith("sse_") or family.name.endswith("_created"):
            continue  # not ours; ``_created``: prometheus_client's creation times, absent under gunicorn
        labels: dict[str, set[str]] = {}
        for sample in family.samples:
            for name, value in sample.labels.items():
                if name != "le":  # a histogram's buckets
                    labels.setdefault(name, set()).add(value)
        metrics[family.name + ("_total" if family.type == "counter" else "")] = (family.type, labels)
    return metrics


def test_the_metrics_table_lists_every_exported_metric_with_its_type_and_labels(client):
    table, scraped = documented(), exported(client)
    assert len(table) >= 10, f"the metrics table was not found in {OPERATIONS}"
    assert set(table) == set(scraped)
    for name, (kind, labels) in scraped.items():
        shown_kind, shown_label, meaning = table[name]
        assert shown_kind == kind, name
        assert ([shown_label] if shown_label else []) == sorted(labels), name
        for values in labels.values():
            missing = {value for value in values if f"`{value}`" not in meaning}
            assert not missing, f"{name}: the table does not name {sorted(missing)}"
