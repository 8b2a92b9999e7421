"""The fence's rules without a kernel: permits as low-32 intervals, the scripts a grant, revoke
and forget produce, and counters read from nft's JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasync.fence.port import Permit
from hasync.fence.rules import (
    ESN_WIDTH,
    U32,
    FenceBook,
    FenceParseError,
    chain_names,
    counts_from_json,
    intervals,
    permitted,
    plan_forget,
    plan_grant,
    plan_prepare,
    plan_revoke,
    setup_script,
)

K4 = ("192.0.2.7", 0x1000, 50)
K6 = ("2001:db8::7", 0x2000, 50)
U64 = 1 << 64


def test_a_non_esn_permit_is_one_interval_above_lo() -> None:
    assert intervals(Permit(K4, 100, 200, False)) == ((101, 200),)


def test_a_non_esn_permit_is_clamped_to_the_32_bit_sequence_space() -> None:
    assert intervals(Permit(K4, 0, U32 + 50, False)) == ((1, U32 - 1),)
    assert intervals(Permit(K4, U32 - 1, U32 + 50, False)) == ()


@pytest.mark.parametrize("lo,hi", [(5, 5), (7, 3), (0, 0)])
def test_an_empty_permit_permits_nothing(lo: int, hi: int) -> None:
    assert intervals(Permit(K4, lo, hi, False)) == ()
    assert intervals(Permit(K4, lo, hi, True)) == ()


def test_an_esn_permit_that_wraps_the_low_32_bits_is_two_intervals() -> None:
    assert intervals(Permit(K4, U32 - 10, U32 + 5, True)) == ((U32 - 9, U32 - 1), (0, 5))


def test_a_wide_esn_permit_keeps_its_top_two_to_the_31() -> None:
    assert intervals(Permit(K4, 0, 3 * ESN_WIDTH, True)) == ((1, ESN_WIDTH),)
    ivs = intervals(Permit(K4, 0, 5 * U32 + 9, True))
    assert sum(b - a + 1 for a, b in ivs) == ESN_WIDTH


@given(st.integers(0, U32 + 100), st.integers(0, U32 + 100), st.integers(1, U32 - 1))
def test_a_non_esn_seq_is_permitted_iff_it_is_in_lo_hi(lo: int, hi: int, seq: int) -> None:
    assert permitted(Permit(K4, lo, hi, False), seq) == (lo < seq <= hi)


@given(st.integers(0, U64 - 1), st.integers(0, U32 * 4), st.integers(-U32 + 1, ESN_WIDTH))
def test_an_esn_seq_is_permitted_iff_it_is_in_the_trimmed_window(hi: int, width: int,
                                                                 offset: int) -> None:
    """Exact for every seq from 2^32 below hi to 2^31 above it (the low-32 residues repeat)."""
    lo = max(hi - width, 0)
    seq = hi + offset
    if seq < 0:
        return
    low = max(lo, hi - ESN_WIDTH)
    assert permitted(Permit(K4, lo, hi, True), seq) == (low < seq <= hi)


def test_the_setup_script_replaces_the_table_whole_and_checks_the_port() -> None:
    text = setup_script(4501)
    assert text.startswith("add table inet hasync_fence\ndelete table inet hasync_fence\n")
    assert "meta l4proto udp udp sport 4501 @th,64,32 != 0 jump esp_udp" in text
    with pytest.raises(ValueError):
        setup_script(0)


T = "inet hasync_fence"
P4, U4 = "p_c0000207_00001000", "u_c0000207_00001000"


def grant_text(ivs: list[tuple[int, int]]) -> str:
    """What a grant writes for K4 with these intervals."""
    out = [f"add chain {T} {P4}", f"add chain {T} {U4}", f"flush chain {T} {P4}",
           f"flush chain {T} {U4}"]
    for a, b in ivs:
        out += [f"add rule {T} {P4} @th,32,32 {a}-{b} accept",
                f"add rule {T} {U4} @th,96,32 {a}-{b} accept"]
    out += [f"add element {T} go4 {{ 192.0.2.7 . 4096 : jump {P4} }}",
            f"add element {T} ugo4 {{ 192.0.2.7 . 4096 : jump {U4} }}",
            f"add element {T} sa4 {{ 192.0.2.7 . 4096 }}"]
    return "\n".join(out) + "\n"


def test_chains_are_named_by_address_and_spi() -> None:
    assert chain_names(K4) == (P4, U4)
    assert chain_names(K6) == ("p_20010db8000000000000000000000007_00002000",
                               "u_20010db8000000000000000000000007_00002000")


def test_a_grant_rewrites_the_sas_chains_and_links_and_counts_it() -> None:
    plan = plan_grant(FenceBook(), [Permit(K4, 0, 10, False)])
    assert plan.script == grant_text([(1, 10)])
    assert plan.book == FenceBook({K4: ((1, 10),)}, {K4}, {K4})
    assert plan.keys == {K4}


def test_an_esn_grant_across_the_wrap_has_two_rules_per_chain() -> None:
    plan = plan_grant(FenceBook(), [Permit(K4, U32 - 3, U32 + 2, True)])
    assert plan.script == grant_text([(U32 - 2, U32 - 1), (0, 2)])


def test_an_ipv6_sa_uses_the_v6_maps() -> None:
    script = plan_grant(FenceBook(), [Permit(K6, 0, 3, False)]).script
    assert "add element inet hasync_fence go6 { 2001:db8::7 . 8192 : jump p_2001" in script
    assert "add element inet hasync_fence sa6 { 2001:db8::7 . 8192 }" in script


def test_a_grant_of_an_unchanged_linked_permit_is_no_script() -> None:
    book = plan_grant(FenceBook(), [Permit(K4, 0, 10, False)]).book
    plan = plan_grant(book, [Permit(K4, 0, 10, False), Permit(K4, 0, 10, False)])
    assert plan.script == "" and plan.keys == frozenset()


def test_an_empty_permit_leaves_the_sa_linked_with_empty_chains() -> None:
    book = plan_grant(FenceBook(), [Permit(K4, 0, 10, False)]).book
    plan = plan_grant(book, [Permit(K4, 10, 10, False)])
    assert plan.script == grant_text([])
    assert plan.book.installed == {K4: ()}


def test_a_permit_for_a_non_esp_sa_is_not_installed() -> None:
    assert plan_grant(FenceBook(), [Permit(("192.0.2.7", 5, 51), 0, 9, False)]).script == ""


def test_after_a_revoke_the_same_permit_is_linked_again() -> None:
    book = plan_grant(FenceBook(), [Permit(K4, 0, 10, False)]).book
    revoke = plan_revoke(book)
    assert revoke.script == "".join(f"flush map {T} {m}\n" for m in ("go4", "ugo4", "go6", "ugo6"))
    assert revoke.book == FenceBook({K4: ((1, 10),)}, set(), {K4})
    links = "".join(grant_text([(1, 10)]).splitlines(keepends=True)[-3:])
    assert plan_grant(revoke.book, [Permit(K4, 0, 10, False)]).script == links  # chains kept
    assert plan_grant(revoke.book, [Permit(K4, 0, 11, False)]).script == grant_text([(1, 11)])


def test_a_prepared_permit_is_filled_in_but_linked_only_by_its_grant() -> None:
    """D262: a backup's standby permit fills the SA's chains and links nothing; the grant of
    the same permit only links; a different one rewrites; a linked SA is never prepared."""
    prep = plan_prepare(FenceBook(), [Permit(K4, 0, 10, False), Permit(K6, 0, 3, False)])
    assert prep.script.startswith("".join(grant_text([(1, 10)]).splitlines(keepends=True)[:6]))
    assert "element" not in prep.script and prep.keys == {K4, K6}
    assert prep.book == FenceBook({K4: ((1, 10),), K6: ((1, 3),)}, set(), set())
    assert plan_prepare(prep.book, [Permit(K4, 0, 10, False)]).script == ""  # unchanged
    links = "".join(grant_text([(1, 10)]).splitlines(keepends=True)[-3:])
    grant = plan_grant(prep.book, [Permit(K4, 0, 10, False)])
    assert grant.script == links and grant.keys == {K4} and grant.book.linked == {K4}
    assert plan_grant(prep.book, [Permit(K4, 0, 12, False)]).script == grant_text([(1, 12)])
    assert plan_prepare(grant.book, [Permit(K4, 0, 99, False)]).script == ""  # linked: kept


def test_an_unsure_book_rewrites_what_a_failed_script_touched() -> None:
    book = plan_grant(FenceBook(), [Permit(K4, 0, 10, False), Permit(K6, 0, 3, False)]).book
    book.unsure([K4])
    assert plan_grant(book, [Permit(K4, 0, 10, False)]).script == grant_text([(1, 10)])
    assert plan_grant(book, [Permit(K6, 0, 3, False)]).script == ""


def test_forget_adds_then_deletes_so_it_cannot_fail_on_what_is_gone() -> None:
    book = plan_grant(FenceBook(), [Permit(K4, 0, 10, False), Permit(K6, 4, 8, False)]).book
    plan = plan_forget(book, [K4])
    lines = plan.script.splitlines()
    assert lines[:5] == [f"add chain {T} {P4}", f"add chain {T} {U4}",
                         f"add element {T} go4 {{ 192.0.2.7 . 4096 : jump {P4} }}",
                         f"add element {T} ugo4 {{ 192.0.2.7 . 4096 : jump {U4} }}",
                         f"add element {T} sa4 {{ 192.0.2.7 . 4096 }}"]
    assert lines[5:] == [f"delete element {T} go4 {{ 192.0.2.7 . 4096 }}",
                         f"delete element {T} ugo4 {{ 192.0.2.7 . 4096 }}",
                         f"delete element {T} sa4 {{ 192.0.2.7 . 4096 }}",
                         f"flush chain {T} {P4}", f"flush chain {T} {U4}",
                         f"delete chain {T} {P4}", f"delete chain {T} {U4}"]
    assert plan.book == FenceBook({K6: ((5, 8),)}, {K6}, {K6})
    assert plan_forget(book, []).script == ""


def _set_doc(name: str, elems: list[tuple[str, int, int]]) -> str:
    return json.dumps({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"set": {"family": "inet", "name": name, "table": "hasync_fence",
                 "elem": [{"elem": {"val": {"concat": [a, s]},
                                    "counter": {"packets": p, "bytes": p * 100}}}
                          for a, s, p in elems]}}]})


UNKNOWN = json.dumps({"nftables": [{"metainfo": {}}, {"counter": {
    "family": "inet", "name": "unknown", "table": "hasync_fence", "packets": 7, "bytes": 9}}]})


def test_counts_map_elements_to_the_guards_keys() -> None:
    known = {("2001:db8::7", 0x2000): K6}
    counts = counts_from_json([_set_doc("sa4", [("192.0.2.7", 4096, 3)]),
                               _set_doc("sa6", [("2001:0db8::7", 8192, 4)]), UNKNOWN], known)
    assert counts.per_sa == {K4: 3, K6: 4}
    assert counts.unknown == 7


@pytest.mark.parametrize("docs", [
    ["not json", UNKNOWN],
    [_set_doc("sa4", [])],  # no unknown counter
    [_set_doc("sa4", [("192.0.2.7", 4096, -1)]), UNKNOWN],
    [json.dumps({"nftables": [{"set": {"name": "sa4", "elem": [{"elem": "x"}]}}]}), UNKNOWN],
])
def test_counts_refuse_what_they_do_not_understand(docs: list[str]) -> None:
    with pytest.raises(FenceParseError):
        counts_from_json(docs, {})
