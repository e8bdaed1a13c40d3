"""Odd resume ids, made from a real one: a table of named shapes, and a hypothesis strategy.

Made from a real id because the dangerous ones are *nearly* right: the
SQLite store's epoch is in every public id, so ``<epoch>-9999999999999999999``
(a sequence past 64 bits) got through the old pattern and into a query.
Works for both stores' ids: ``<epoch>-<seq>`` (SQLite) and 24 hex digits
(MongoDB); the numeric shapes use the part before the last ``-``, or the
whole id when there is none.
"""
from __future__ import annotations

from hypothesis import strategies as st

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def _prefix(real_id: str) -> str:
    return real_id.rsplit("-", 1)[0] if "-" in real_id else real_id


def odd_ids(real_id: str) -> dict[str, str]:
    """Return named ids that are not ``real_id`` and must each get the one ``reset`` (never a 5xx)."""
    prefix = _prefix(real_id)
    shapes = {
        "sequence past 64 bits": f"{prefix}-9999999999999999999",
        "sequence of 2**63": f"{prefix}-{2**63}",
        "sequence of 40 digits": f"{prefix}-{'9' * 40}",
        "sequence zero": f"{prefix}-0",
        "leading zero": f"{prefix}-01",
        "plus sign": f"{prefix}-+1",
        "minus sign": f"{prefix}--1",
        "sign before the id": f"+{real_id}",
        "underscore in the number": f"{prefix}-1_0",
        "leading space": f" {real_id}",
        "trailing space": f"{real_id} ",
        "tab inside": real_id[:4] + "\t" + real_id[4:],
        "Arabic-Indic digits": real_id.translate(ARABIC_INDIC),
        "fullwidth digits": real_id.translate(FULLWIDTH),
        "superscript two": f"{prefix}-\u00b2",
        "upper case": real_id.upper(),
        "empty sequence": f"{prefix}-",
        "empty epoch": "-1",
        "only a dash": "-",
        "NUL after": f"{real_id}\x00",
        "NUL inside": real_id[:4] + "\x00" + real_id[5:],
        "newline after": f"{real_id}\n",
        "one character cut": real_id[:3] + real_id[4:],
        "256 nines": "9" * 256,
        "24 zeros": "0" * 24,
        "another store's shape": "ffffffff-1" if "-" not in real_id else "0123456789abcdef01234567",
    }
    return {name: value for name, value in shapes.items() if value != real_id}


_PIECES = ["-", "+", " ", "\t", "\x00", "\x01", "\n", "0", "1", "9" * 20, "٣", "１", "²", "ﬀ", "%", "\u2028",
           "e", "f" * 8, "_"]


def id_shapes(real_id: str) -> st.SearchStrategy[str]:
    """Ids near ``real_id`` and far from it: numbers of any size, pieces glued together, mutations."""
    prefix = _prefix(real_id)
    near = st.tuples(st.integers(0, len(real_id)), st.integers(0, len(real_id)), st.sampled_from(_PIECES)).map(
        lambda cut: real_id[:min(cut[0], cut[1])] + cut[2] + real_id[max(cut[0], cut[1]):])
    numbered = st.integers(min_value=-2**70, max_value=2**70).map(lambda n: f"{prefix}-{n}")
    glued = st.lists(st.sampled_from([prefix, real_id, *_PIECES]), min_size=1, max_size=5).map("".join)
    anything = st.text(min_size=1, max_size=40)
    return st.one_of(near, numbered, glued, anything).filter(lambda value: value != real_id and len(value) <= 256)
