"""The fence's rules without a kernel: permits as low-32 intervals, the scripts a grant, revoke
and forget produce, and counters read from nft's JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hasync.fence import rules
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
    plan_count,
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
SHUT = [f"flush chain {T} gate_plain", f"flush chain {T} gate_udp",
        f"add rule {T} gate_plain ip daddr . @th,0,32 @sa4 drop",
        f"add rule {T} gate_plain ip6 daddr . @th,0,32 @sa6 drop",
        f"add rule {T} gate_plain meta l4proto @unknown drop", f"add rule {T} gate_plain drop",
        f"add rule {T} gate_udp ip daddr . @th,64,32 @sa4 drop",
        f"add rule {T} gate_udp ip6 daddr . @th,64,32 @sa6 drop",
        f"add rule {T} gate_udp meta l4proto @unknown drop", f"add rule {T} gate_udp drop"]
OPEN = SHUT[:2]
LINKS4 = [f"add element {T} go4 {{ 192.0.2.7 . 4096 : jump {P4} }}",
          f"add element {T} ugo4 {{ 192.0.2.7 . 4096 : jump {U4} }}"]
UNLINKS4 = [f"delete element {T} go4 {{ 192.0.2.7 . 4096 }}",
            f"delete element {T} ugo4 {{ 192.0.2.7 . 4096 }}"]


def opened(book: FenceBook | None = None) -> FenceBook:
    """A book whose gate is open (a sender's, after its first grant)."""
    book = book or FenceBook()
    book.opened = True
    return book


def chain_lines(ivs: list[tuple[int, int]]) -> list[str]:
    """What a grant writes of K4's chains with these intervals."""
    out = [f"add chain {T} {P4}", f"add chain {T} {U4}", f"flush chain {T} {P4}",
           f"flush chain {T} {U4}"]
    for a, b in ivs:
        out += [f"add rule {T} {P4} @th,32,32 {a}-{b} accept",
                f"add rule {T} {U4} @th,96,32 {a}-{b} accept"]
    return out


def grant_text(ivs: list[tuple[int, int]]) -> str:
    """What a grant on an open gate writes for K4 with these intervals."""
    return "\n".join(chain_lines(ivs) + LINKS4) + "\n"


def test_every_esp_packet_meets_the_gate_before_the_maps_and_setup_shuts_it() -> None:
    text = setup_script()
    for chain, gate, spi in (("esp_plain", "gate_plain", "@th,0,32"),
                             ("esp_udp", "gate_udp", "@th,64,32")):
        body = text.split(f"chain {chain} {{")[1].split("}")[0].split("\n")
        assert body[1].strip() == f"jump {gate}"
        assert body[2].strip() == f"ip daddr . {spi} vmap @{'u' * (chain == 'esp_udp')}go4"
        shut = text.split(f"chain {gate} {{")[1].split("}")[0]
        assert [r.strip() for r in shut.strip().split("\n")] == [
            f"ip daddr . {spi} @sa4 drop", f"ip6 daddr . {spi} @sa6 drop",
            "meta l4proto @unknown drop", "drop"]
    assert text.index("chain gate_plain") < text.index("chain esp_plain")


def test_chains_are_named_by_address_and_spi() -> None:
    assert chain_names(K4) == (P4, U4)
    assert chain_names(K6) == ("p_20010db8000000000000000000000007_00002000",
                               "u_20010db8000000000000000000000007_00002000")


def test_a_grant_rewrites_the_sas_chains_and_links_it_and_the_count_adds_its_counter() -> None:
    plan = plan_grant(opened(), [Permit(K4, 0, 10, False)])
    assert plan.script == grant_text([(1, 10)])
    assert plan.book == opened(FenceBook({K4: ((1, 10),)}, {K4}, set()))
    assert plan.keys == {K4} and not plan.gate
    count = plan_count(plan.book)
    assert count.script == f"add element {T} sa4 {{ 192.0.2.7 . 4096 }}\n"
    assert count.book.counted == {K4} and plan_count(count.book).script == ""
    shut = plan_prepare(FenceBook(), [Permit(K6, 0, 3, False)]).book
    assert plan_count(shut).script == ""  # a backup's standby links get no counter


def test_an_esn_grant_across_the_wrap_has_two_rules_per_chain() -> None:
    plan = plan_grant(opened(), [Permit(K4, U32 - 3, U32 + 2, True)])
    assert plan.script == grant_text([(U32 - 2, U32 - 1), (0, 2)])


def test_an_ipv6_sa_uses_the_v6_maps() -> None:
    book = plan_grant(opened(), [Permit(K6, 0, 3, False)]).book
    assert "add element inet hasync_fence go6 { 2001:db8::7 . 8192 : jump p_2001" in plan_grant(
        opened(), [Permit(K6, 0, 3, False)]).script
    assert plan_count(book).script == "add element inet hasync_fence sa6 { 2001:db8::7 . 8192 }\n"


def test_a_grant_of_an_unchanged_linked_permit_is_no_script() -> None:
    book = plan_grant(opened(), [Permit(K4, 0, 10, False)]).book
    plan = plan_grant(book, [Permit(K4, 0, 10, False), Permit(K4, 0, 10, False)])
    assert plan.script == "" and plan.keys == frozenset()


def test_an_empty_permit_leaves_the_sa_linked_with_empty_chains() -> None:
    book = plan_grant(opened(), [Permit(K4, 0, 10, False)]).book
    plan = plan_grant(book, [Permit(K4, 10, 10, False)])
    assert plan.script == grant_text([])
    assert plan.book.installed == {K4: ()}


def test_a_permit_for_a_non_esp_sa_is_not_installed() -> None:
    assert plan_grant(opened(), [Permit(("192.0.2.7", 5, 51), 0, 9, False)]).script == ""


def test_a_revoke_only_shuts_the_gate_and_the_grant_of_the_same_permit_only_opens_it() -> None:
    book = plan_grant(opened(), [Permit(K4, 0, 10, False)]).book
    revoke = plan_revoke(book)
    assert revoke.script == "\n".join(SHUT) + "\n" and revoke.gate
    assert revoke.book == FenceBook({K4: ((1, 10),)}, {K4}, set(), set(), False)
    again = plan_grant(revoke.book, [Permit(K4, 0, 10, False)])
    assert again.script == "\n".join(OPEN) + "\n" and again.gate  # chains and links kept
    assert again.book.opened is True
    moved = plan_grant(revoke.book, [Permit(K4, 0, 11, False)]).script
    assert moved == "\n".join(chain_lines([(1, 11)]) + LINKS4 + OPEN) + "\n"


def test_the_grant_that_opens_the_gate_unlinks_every_sa_it_does_not_permit() -> None:
    """D265: once the gate opens, exactly the opening grant's permits are in force."""
    book = plan_revoke(plan_grant(opened(), [Permit(K4, 0, 10, False)]).book).book
    plan = plan_grant(book, [Permit(K6, 0, 3, False)])
    lines = plan.script.splitlines()
    assert lines[:2] == UNLINKS4 and lines[-2:] == OPEN
    assert f"add element {T} go6 {{ 2001:db8::7 . 8192 : jump p_20010db8" in plan.script
    assert plan.book.linked == {K6} and plan.book.opened is True and plan.keys == {K4, K6}
    assert plan.book.installed[K4] == ((1, 10),)  # its chains stay, unreachable


def test_a_prepared_permit_is_linked_behind_the_shut_gate_and_its_grant_only_opens_it() -> None:
    """D262 and D265: a backup's standby permit fills and links the SA's chains, with no
    counter element, only while the gate is surely shut; the grant of the same permit only
    opens the gate, and a different one rewrites the chains as it opens it."""
    prep = plan_prepare(FenceBook(), [Permit(K4, 0, 10, False), Permit(K6, 0, 3, False)])
    assert prep.script.startswith("\n".join(chain_lines([(1, 10)])))
    assert "sa4" not in prep.script and "sa6" not in prep.script and "gate" not in prep.script
    assert "\n".join(LINKS4) in prep.script and prep.keys == {K4, K6}
    assert prep.book == FenceBook({K4: ((1, 10),), K6: ((1, 3),)}, {K4, K6}, set())
    assert plan_prepare(prep.book, [Permit(K4, 0, 10, False)]).script == ""  # unchanged
    grant = plan_grant(prep.book, [Permit(K4, 0, 10, False), Permit(K6, 0, 3, False)])
    assert grant.script == "\n".join(OPEN) + "\n" and grant.book.linked == {K4, K6}
    moved = plan_grant(prep.book, [Permit(K4, 0, 12, False), Permit(K6, 0, 3, False)])
    assert moved.script == "\n".join(chain_lines([(1, 12)]) + LINKS4 + OPEN) + "\n"
    for book in (grant.book, FenceBook(opened=None)):  # open, or not known to be shut
        assert plan_prepare(book, [Permit(K4, 0, 99, False)]).script == ""


def test_an_unsure_book_rewrites_what_a_failed_script_touched() -> None:
    book = plan_grant(opened(), [Permit(K4, 0, 10, False), Permit(K6, 0, 3, False)]).book
    book.unsure([K4])
    assert book.doubt == {K4} and book.opened is True
    plan = plan_grant(book, [Permit(K4, 0, 10, False)])
    assert plan.script == grant_text([(1, 10)]) and plan.book.doubt == set()
    assert plan_grant(book, [Permit(K6, 0, 3, False)]).script == ""


def test_an_opening_grant_adds_then_deletes_the_links_of_an_sa_in_doubt() -> None:
    """A failed script may or may not have linked K4: the grant that opens the gate unlinks it
    without relying on either (a delete of a missing element would fail the transaction)."""
    book = plan_prepare(FenceBook(), [Permit(K4, 0, 10, False)]).book
    book.unsure([K4], gate=True)
    assert book.opened is None and plan_prepare(book, [Permit(K4, 0, 10, False)]).script == ""
    plan = plan_grant(book, [Permit(K6, 0, 3, False)])
    lines = plan.script.splitlines()
    assert lines[:6] == [f"add chain {T} {P4}", f"add chain {T} {U4}", *LINKS4, *UNLINKS4]
    assert lines[-2:] == OPEN and plan.book.doubt == set() and plan.book.linked == {K6}


def test_forget_adds_then_deletes_so_it_cannot_fail_on_what_is_gone() -> None:
    book = plan_count(plan_grant(opened(), [Permit(K4, 0, 10, False),
                                            Permit(K6, 4, 8, False)]).book).book
    book.doubt.add(K4)
    plan = plan_forget(book, [K4])
    lines = plan.script.splitlines()
    assert lines[:5] == [f"add chain {T} {P4}", f"add chain {T} {U4}", *LINKS4,
                         f"add element {T} sa4 {{ 192.0.2.7 . 4096 }}"]
    assert lines[5:] == [*UNLINKS4, f"delete element {T} sa4 {{ 192.0.2.7 . 4096 }}",
                         f"flush chain {T} {P4}", f"flush chain {T} {U4}",
                         f"delete chain {T} {P4}", f"delete chain {T} {U4}"]
    assert plan.book == opened(FenceBook({K6: ((5, 8),)}, {K6}, {K6}))
    assert plan_forget(book, []).script == ""


def _set_doc(name: str, elems: list[tuple[str, int, int]]) -> str:
    return json.dumps({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"set": {"family": "inet", "name": name, "table": "hasync_fence",
                 "elem": [{"elem": {"val": {"concat": [a, s]},
                                    "counter": {"packets": p, "bytes": p * 100}}}
                          for a, s, p in elems]}}]})


UNKNOWN = json.dumps({"nftables": [{"metainfo": {}}, {"set": {
    "family": "inet", "name": "unknown", "table": "hasync_fence", "type": "inet_proto",
    "elem": [{"elem": {"val": "udp", "counter": {"packets": 3, "bytes": 9}}},
             {"elem": {"val": "esp", "counter": {"packets": 4, "bytes": 9}}}]}}]})


def test_counts_map_elements_to_the_guards_keys() -> None:
    known = {("2001:db8::7", 0x2000): K6}
    counts = counts_from_json([_set_doc("sa4", [("192.0.2.7", 4096, 3)]),
                               _set_doc("sa6", [("2001:0db8::7", 8192, 4)]), UNKNOWN], known)
    assert counts.per_sa == {K4: 3, K6: 4}
    assert counts.unknown == 7


@pytest.mark.parametrize("docs", [
    ["not json", UNKNOWN],
    [_set_doc("sa4", [])],  # no unknown set
    [json.dumps({"nftables": [{"set": {"name": "unknown", "elem": [{"elem": "esp"}]}}]})],
    [_set_doc("sa4", [("192.0.2.7", 4096, -1)]), UNKNOWN],
    [json.dumps({"nftables": [{"set": {"name": "sa4", "elem": [{"elem": "x"}]}}]}), UNKNOWN],
])
def test_counts_refuse_what_they_do_not_understand(docs: list[str]) -> None:
    with pytest.raises(FenceParseError):
        counts_from_json(docs, {})


@given(st.integers(-5, 2 * U32), st.integers(-5, 2 * U32), st.booleans(),
       st.sampled_from([50, 51]))
def test_the_grants_inline_intervals_are_those_of_intervals(lo: int, hi: int, esn: bool,
                                                            proto: int) -> None:
    """D278: the grant computes the common permit's intervals inline; always `intervals`."""
    p = Permit(("192.0.2.7", 4096, proto), lo, hi, esn)
    assert rules._esp([p]) == ({p.key: intervals(p)} if proto == 50 else {})
