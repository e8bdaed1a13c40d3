"""Log lines a client cannot forge (``app/operations/log_lines.py``); the live check is in test_hostile_ids.py."""
from __future__ import annotations

import io
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.operations.log_lines import SafeLogLines, escape_control_characters, install_on

ESCAPES = {
    "line feed": ("/rooms/x\nFORGED", "/rooms/x\\nFORGED"),
    "carriage return": ("a\rb", "a\\rb"),
    "tab": ("a\tb", "a\\tb"),
    "NUL": ("a\x00b", "a\\x00b"),
    "escape (terminal colours)": ("\x1b[31mred", "\\x1b[31mred"),
    "DEL": ("a\x7fb", "a\\x7fb"),
    "C1 next line": ("a\x85b", "a\\x85b"),
    "line separator": ("a\u2028b", "a\\u2028b"),
    "paragraph separator": ("a\u2029b", "a\\u2029b"),
    "right-to-left override": ("a\u202eb", "a\\u202eb"),
    "plain text and other scripts stay": ("room ١٢٣ é 😀 \\n", "room ١٢٣ é 😀 \\n"),
}


@pytest.mark.parametrize("raw, escaped", ESCAPES.values(), ids=ESCAPES.keys())
def test_control_characters_are_escaped(raw, escaped):
    assert escape_control_characters(raw) == escaped


@given(st.text())
def test_any_text_becomes_one_line_without_control_characters(text):
    escaped = escape_control_characters(text)
    assert len(escaped.splitlines()) <= 1
    assert not any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in escaped)
    assert escape_control_characters(escaped) == escaped  # escaping twice changes nothing


def test_the_filter_escapes_the_formatted_message_of_any_logger_on_the_handler_but_keeps_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    install_on([handler])
    install_on([handler])  # once only
    assert sum(isinstance(f, SafeLogLines) for f in handler.filters) == 1
    logger = logging.getLogger("tests.log_lines.any")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("%s %s", "GET", "/rooms/x\nFORGED 200")
        try:
            raise ValueError("ours")
        except ValueError:
            logger.exception("failed for %r", "x\ny")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "tests.log_lines.any GET /rooms/x\\nFORGED 200"
    assert lines[1] == "tests.log_lines.any failed for 'x\\ny'"
    assert lines[2] == "Traceback (most recent call last):"
    assert not any(line.startswith("FORGED") for line in lines)
