"""The README's configuration table says what app/config.py does: every variable, its default, its range.

Read from README.md's table, never copied here, so a setting added, renamed or
re-bounded in the code without the README (or the other way round) fails.
"""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from app.config import _PARSERS, ConfigError, Settings

README = Path(__file__).resolve().parents[1] / "README.md"
# Read by gunicorn.conf.py before the app, not by app/config.py.
READ_BY_GUNICORN_CONF = {"PROMETHEUS_MULTIPROC_DIR"}
# Settings refused at start-up unless another is set beside them (they would tune nothing).
_HOOK = {"AUTH_SUBSCRIBE_URL": "http://127.0.0.1:5000/sse-auth"}
NEEDS = {"AUTH_SUBSCRIBE_TIMEOUT_MS": _HOOK, "AUTH_SUBSCRIBE_MAX_CONCURRENT": _HOOK}
SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")


def settings_table() -> dict[str, tuple[str, str]]:
    """Return {variable: (default, allowed)} from the README's configuration table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([A-Z_]+)` \| (.*?) \| (.*?) \| ", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def number(text: str) -> int:
    """Read a README number: ``4,096``, ``10⁹``, ``2²⁶``."""
    base, power = re.fullmatch(r"(\d+)([⁰¹²³⁴⁵⁶⁷⁸⁹]*)", text.replace(",", "").strip()).groups()
    return int(base) ** int(power.translate(SUPERSCRIPTS)) if power else int(base)


TABLE = settings_table()
INTEGER_RANGES = {name: tuple(number(part) for part in match.groups())
                  for name, (_, allowed) in TABLE.items()
                  if (match := re.match(r"([\d,⁰¹²³⁴⁵⁶⁷⁸⁹]+)–([\d,⁰¹²³⁴⁵⁶⁷⁸⁹]+)(?: \(|$)", allowed))}
SECONDS_RANGES = {name: number(match.group(1)) for name, (_, allowed) in TABLE.items()
                  if (match := re.fullmatch(r"above 0, at most ([\d,]+)", allowed))}


def test_the_table_names_every_setting_and_nothing_else():
    assert set(TABLE) == set(_PARSERS) | READ_BY_GUNICORN_CONF
    # Every setting is a field of Settings, so the table's defaults can be held against them.
    assert {name.lower() for name in _PARSERS} <= {field.name for field in fields(Settings)}


def test_the_table_was_read():
    assert len(INTEGER_RANGES) == 21 and len(SECONDS_RANGES) == 4, (INTEGER_RANGES, SECONDS_RANGES)
    assert INTEGER_RANGES["CAPPED_SIZE_BYTES"] == (4096, 2**50)


@pytest.mark.parametrize("name", sorted(TABLE), ids=str)
def test_a_default_shown_as_a_value_is_the_default(name):
    shown = TABLE[name][0]
    default = getattr(Settings(), name.lower(), None)
    if not re.fullmatch(r"`[^`×]*`", shown):
        # Said in words ("unset", "a fresh temp dir", a formula): unset in code, or worked out at start.
        if name == "MAX_BODY_BYTES":
            assert shown == "`6 × MAX_TEXT_CHARS + 1024`" and default == 6 * Settings().max_text_chars + 1024
        else:
            assert default in (None, ()), f"{name}: the README says {shown}, the code {default!r}"
        return
    value = shown.strip("`")
    if isinstance(default, bool):
        assert value == str(default).lower()
    elif isinstance(default, (int, float)):
        assert float(value) == default
    else:
        assert value == default


@pytest.mark.parametrize("name", sorted(INTEGER_RANGES), ids=str)
def test_a_whole_number_setting_takes_exactly_its_range(name):
    low, high = INTEGER_RANGES[name]
    for accepted in (low, high):
        assert getattr(Settings.from_env({**NEEDS.get(name, {}), name: str(accepted)}), name.lower()) == accepted
    for refused in (low - 1, high + 1):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**NEEDS.get(name, {}), name: str(refused)})


@pytest.mark.parametrize("name", sorted(SECONDS_RANGES), ids=str)
def test_a_seconds_setting_takes_above_zero_up_to_its_bound(name):
    high = SECONDS_RANGES[name]
    assert getattr(Settings.from_env({name: str(high)}), name.lower()) == high
    assert getattr(Settings.from_env({name: "0.001"}), name.lower()) == 0.001
    for refused in ("0", str(high + 0.001)):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: refused})


def test_log_level_takes_the_levels_the_table_lists():
    listed = re.findall(r"`(\w+)`", TABLE["LOG_LEVEL"][1])
    assert listed == ["debug", "info", "warning", "error", "critical"]
    for level in listed:
        assert Settings.from_env({"LOG_LEVEL": level.upper()}).log_level == level
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        Settings.from_env({"LOG_LEVEL": "verbose"})
