"""Tests of hasync.safetext: no control character survives, and the escaping is unambiguous."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasync.safetext import safe_text

DANGEROUS = ([chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
             + [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]
             + ["\u2028", "\u2029", "\ud800", "\udfff"])


@pytest.mark.parametrize("char", DANGEROUS)
def test_finding8_every_control_character_is_escaped(char: str) -> None:
    out = safe_text(f"a{char}b")
    assert char not in out and out.startswith("a\\") and out.endswith("b")


def test_finding8_ansi_sequences_are_shown_not_obeyed() -> None:
    assert safe_text("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert safe_text("\x9b2J") == "\\x9b2J"
    assert safe_text("\u202egnp.exe") == "\\u202egnp.exe"


def test_plain_text_and_non_strings_pass_unchanged() -> None:
    for text in ("CN=alice, O=Example", "héllo wörld", "日本", "198.51.100.7", ""):
        assert safe_text(text) == text
    assert safe_text(None) == "None" and safe_text(42) == "42"


def test_a_backslash_is_doubled_so_no_escape_can_be_faked() -> None:
    assert safe_text("\\x1b") == "\\\\x1b"
    assert safe_text("\\x1b") != safe_text("\x1b")


@given(st.text())
def test_no_control_character_survives_any_text(text: str) -> None:
    out = safe_text(text)
    assert all(c not in out for c in DANGEROUS)
