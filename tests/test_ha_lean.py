"""Tests of hasync.ha.decode_only, the decoder that builds only the attributes a reader wants,
and attribute_names, which builds none.

Rules: for any bytes and any wanted table, decode_only and attribute_names raise
MalformedMessage exactly when decode does (same attribute, same offset); otherwise
decode_only gives decode's message with only the wanted attributes, in wire order (with
`named` types, every name as `wire`), and attribute_names every name. Checked on charon's
golden datagrams, their truncations and mutations, and random valid messages.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_ha_codec import FUZZ, messages

from hasync.ha import (
    TABLES,
    HaMessage,
    MalformedMessage,
    MessageType,
    attribute_names,
    decode,
    decode_only,
    encode,
)
from hasync.journal.state import NEEDED
from hasync.mirror import READ_ON_HA

from hastream import golden

GOLDEN = golden()
NAMES = sorted({spec.name for table in TABLES.values() for spec in table.values()})


def wanted_tables() -> st.SearchStrategy[dict[int, frozenset[str]]]:
    """Random tables: some message types, each with some attribute names."""
    return st.dictionaries(st.sampled_from([int(t) for t in MessageType]),
                           st.frozensets(st.sampled_from(NAMES)), max_size=6)


def same_as_decode(data: bytes, wanted: Mapping[int, frozenset[str]]) -> None:
    """decode_only(data, wanted) agrees with decode(data) as the module rules say."""
    every = frozenset(int(t) for t in MessageType)
    try:
        full = decode(data)
    except MalformedMessage as exc:
        for fn in (lambda: decode_only(data, wanted), lambda: attribute_names(data),
                   lambda: decode_only(data, wanted, every)):
            with pytest.raises(MalformedMessage) as lean:
                fn()
            assert (lean.value.attribute, lean.value.offset, str(lean.value)) == (
                exc.attribute, exc.offset, str(exc))
        return
    assert attribute_names(data) == full.names()
    lean_msg = decode_only(data, wanted)
    keep = wanted.get(full.type)
    kept = full.attributes if keep is None else tuple(
        a for a in full.attributes if a.name in keep)
    assert lean_msg == HaMessage(full.version, full.type, kept) and lean_msg.wire is None
    named = decode_only(data, wanted, every)  # names from the same walk (NAMED, D283)
    assert named == lean_msg and named.wire == (None if keep is None else full.names())


@pytest.mark.parametrize("name", sorted(GOLDEN))
@pytest.mark.parametrize("wanted", [NEEDED, READ_ON_HA, {}], ids=["journal", "on_ha", "all"])
def test_golden_datagrams_and_every_truncation(name: str, wanted: Mapping[int, frozenset[str]]
                                               ) -> None:
    data = GOLDEN[name]
    for end in range(len(data) + 1):
        same_as_decode(data[:end], wanted)


def test_a_journal_decode_skips_secrets() -> None:
    msg = decode_only(GOLDEN["ike_add"], NEEDED)
    assert "nonce_i" not in msg.names() and "secret" not in msg.names()
    assert msg.get("ike_id") == decode(GOLDEN["ike_add"]).get("ike_id")


@FUZZ
@given(st.sampled_from(sorted(GOLDEN.values())), wanted_tables(), st.data())
def test_fuzz_mutated_golden(data: bytes, wanted: dict[int, frozenset[str]],
                             draw: st.DataObject) -> None:
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        pos = draw.draw(st.integers(0, len(buf) - 1))
        buf[pos] = draw.draw(st.integers(0, 255))
    same_as_decode(bytes(buf), wanted)


@FUZZ
@given(st.binary(max_size=200), wanted_tables())
def test_fuzz_random_bytes(data: bytes, wanted: dict[int, frozenset[str]]) -> None:
    same_as_decode(data, wanted)


@FUZZ
@given(messages(), wanted_tables())
def test_fuzz_valid_messages(msg: HaMessage, wanted: dict[int, frozenset[str]]) -> None:
    same_as_decode(encode(msg), wanted)
