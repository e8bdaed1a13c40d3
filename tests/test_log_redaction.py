"""No token in a log line, whoever writes it: app/operations/log_redaction.py.

Live, through gunicorn's own "Invalid request" lines:
tests/test_authorization_live.py::test_malformed_request_lines_with_tokens_are_logged_without_them.
"""
from __future__ import annotations

import logging

import pytest

from app.operations.log_lines import SafeLogLines
from app.operations.log_redaction import redact
from tests.support.tokens import claims, mint

TOKEN = mint(claims(["*"]))

CASES = {
    "gunicorn's invalid request line": (
        f"Invalid HTTP request line: 'GET /messages?room=a&access_token={TOKEN}'",
        "Invalid HTTP request line: 'GET /messages?room=a&access_token=***'"),
    "the name percent-encoded": (f"GET /messages?access%5Ftoken={TOKEN}&room=a HTTP/1.1",
                                 "GET /messages?access%5Ftoken=***&room=a HTTP/1.1"),
    "the name percent-encoded another way, the value too": (
        f"Invalid HTTP request line: 'GET /messages?room=a&%61ccess_token=%65{TOKEN[1:]}\x01 HTTP/1.1'",
        "Invalid HTTP request line: 'GET /messages?room=a&%61ccess_token=*** HTTP/1.1'"),
    "a percent-encoded JWT in a path": (f"GET /rooms/%65{TOKEN[1:].replace('.', '%2E')} HTTP/1.1",
                                        "GET /rooms/*** HTTP/1.1"),
    "another parameter that ends like it": ("GET /messages?xaccess_token=kept&room=a",
                                            "GET /messages?xaccess_token=kept&room=a"),
    "a value that is no JWT": ("GET /messages?access_token=opaque-value-1234 x",
                               "GET /messages?access_token=*** x"),
    "a JWT anywhere": (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer ***"),
    "a JWT without its signature": (f"token {TOKEN.rsplit('.', 1)[0]}.", "token ***"),
    "nothing to hide": ("GET /messages/history 200 0.4ms", "GET /messages/history 200 0.4ms"),
}


@pytest.mark.parametrize("line, expected", CASES.values(), ids=CASES.keys())
def test_tokens_are_replaced_by_stars(line, expected):
    assert redact(line) == expected


def test_the_filter_redacts_arguments_and_tracebacks_before_formatting(caplog):
    logger = logging.getLogger("test_log_redaction")
    caplog.handler.addFilter(SafeLogLines())
    try:
        logger.warning("Error handling request %s", f"/messages?access_token={TOKEN}")
        try:
            raise ValueError(f"bad token {TOKEN}")
        except ValueError:
            logger.exception("failed")
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    assert TOKEN.split(".")[1] not in caplog.text
    assert "Error handling request /messages?access_token=***" in caplog.text
    assert "ValueError: bad token ***" in caplog.text
