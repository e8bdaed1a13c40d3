"""The one place that says what a message id looks like (``app/stores/ids.py``), for both stores."""
from __future__ import annotations

import pytest
from bson import ObjectId
from hypothesis import given
from hypothesis import strategies as st

from app.stores.ids import SQLITE_MAX_SEQ, parse_object_id, parse_sqlite_id, sqlite_id
from tests.support.odd_ids import id_shapes, odd_ids

SQLITE_ID = "0a1b2c3d-42"
OBJECT_ID = "665f1c2e9b1e8a3d4c5b6a79"

WELL_FORMED_SQLITE = {
    "smallest": ("0a1b2c3d-1", ("0a1b2c3d", 1)),
    "largest 64-bit sequence": (f"0a1b2c3d-{SQLITE_MAX_SEQ}", ("0a1b2c3d", SQLITE_MAX_SEQ)),
    "another epoch": ("ffffffff-7", ("ffffffff", 7)),
}


@pytest.mark.parametrize("message_id, parsed", WELL_FORMED_SQLITE.values(), ids=WELL_FORMED_SQLITE.keys())
def test_a_well_formed_sqlite_id_parses(message_id, parsed):
    assert parse_sqlite_id(message_id) == parsed
    assert sqlite_id(*parsed) == message_id


@pytest.mark.parametrize("odd", odd_ids(SQLITE_ID).values(), ids=odd_ids(SQLITE_ID).keys())
def test_an_odd_sqlite_id_is_not_an_id(odd):
    """Past 64 bits, signs, spaces, other scripts' digits, NUL: none may reach a query."""
    assert parse_sqlite_id(odd) is None


@pytest.mark.parametrize("odd", [value for value in odd_ids(OBJECT_ID).values() if value != "0" * 24],
                         ids=[name for name, value in odd_ids(OBJECT_ID).items() if value != "0" * 24])
def test_an_odd_mongodb_id_is_not_an_id(odd):
    """ObjectId() itself takes upper case, which we never issue: the window would never find it."""
    assert parse_object_id(odd) is None


def test_a_mongodb_id_as_issued_parses():
    made = ObjectId()
    assert parse_object_id(str(made)) == made
    assert parse_object_id("0" * 24) == ObjectId("0" * 24)  # well-formed, merely unknown


@given(st.one_of(id_shapes(SQLITE_ID), id_shapes(OBJECT_ID), st.text()))
def test_whatever_the_string_each_parser_answers_and_only_with_what_it_issues(candidate):
    sqlite = parse_sqlite_id(candidate)
    if sqlite is not None:
        assert sqlite_id(*sqlite) == candidate and 1 <= sqlite[1] <= SQLITE_MAX_SEQ
    mongodb = parse_object_id(candidate)
    if mongodb is not None:
        assert str(mongodb) == candidate
