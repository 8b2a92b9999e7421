"""Tests of hasync.xfrm.replayrows, the sequence guard's own GETSA dump decoder.

Rules: its rows agree field for field with the full codec (`parse_messages`) on the hand-written
NEWSA, on the host kernel's captured dumps and on ESP SAs dumped by the lab VM's kernel
(tests/data/xfrm/vm_kernel_6.1_esp.txt: ESN and not, IPv4 and IPv6, UDP-encapsulated); every
cut body is malformed unless it ends on an attribute; only `MalformedMessage` escapes it;
`XfrmSocket.dump_replay_rows` retries an interrupted dump and names the kernel's errors; a row
keeps the SA's XFRMA_MARK (None without one), as the lean codec does.
"""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_xfrm_codec import (
    ENCAP_ATTR,
    EXPECTED_SA,
    FUZZ,
    GOLDEN_SA,
    GOLDEN_SA_KEYED,
    HDR,
    KERNEL,
    REPLAY_ATTR,
    SA_BODY,
    _attribute_ends,
    _messages,
    _scripted,
)

from hasync.xfrm import (
    Attr,
    Done,
    MalformedMessage,
    Mark,
    Message,
    MessageType,
    NlmFlag,
    NlmsgType,
    ReplayStateEsn,
    SaInfo,
    SaReplay,
    XfrmError,
    encode_message,
    parse_messages,
)
from hasync.xfrm.replayrows import ReplayRow, parse_replay_rows

VM_DATA = Path(__file__).parent / "data" / "xfrm" / "vm_kernel_6.1_esp.txt"


def _vm_vectors() -> list[bytes]:
    """The VM kernel's GETSA dump (seq 21), one datagram per line."""
    return [bytes.fromhex(line.split()[1]) for line in VM_DATA.read_text().splitlines()
            if line.startswith("getsa_dump_esp.")]


VM = _vm_vectors()


def _expected(info: SaInfo) -> ReplayRow | None:
    """The row the full codec's SaInfo implies."""
    key = (str(info.id.daddr), info.id.spi, info.id.proto, info.reqid)
    if info.replay_esn is not None:
        r = info.replay_esn
        return ReplayRow(*key, r.replay_window, True, r.oseq_hi << 32 | r.oseq,
                         r.seq_hi << 32 | r.seq, tuple(r.bmp), info.mark)
    if info.replay is not None:
        r1 = info.replay
        return ReplayRow(*key, info.replay_window, False, r1.oseq, r1.seq, (r1.bitmap,),
                         info.mark)
    return None


def _rows_by_codec(data: bytes, seq: int) -> list[ReplayRow]:
    return [row for m in parse_messages(data) if m.seq == seq and isinstance(m.body, SaInfo)
            for row in [_expected(m.body)] if row is not None]


def test_the_vm_kernels_esp_dump_reads_as_the_full_codec_does() -> None:
    rows = [row for data in VM for row in parse_replay_rows(data, 21).rows]
    assert rows == [row for data in VM for row in _rows_by_codec(data, 21)]
    by_spi = {row.spi: row for row in rows}
    assert set(by_spi) == {0xC0FFEE01, 0xC0FFEE02, 0xC0FFEE03, 0xC0FFEE04}
    esn, v6 = by_spi[0xC0FFEE01], by_spi[0xC0FFEE03]
    assert esn == ReplayRow("198.51.100.4", 0xC0FFEE01, 50, 1, 128, True, 1 << 32 | 0x11,
                            2 << 32 | 0x22, (0x80000001, 0, 0, 7))
    assert v6 == ReplayRow("2001:db8::2", 0xC0FFEE03, 50, 2, 64, True, 5, 0x40, (0xFFFF, 0))
    assert by_spi[0xC0FFEE02] == ReplayRow("192.0.2.1", 0xC0FFEE02, 50, 1, 32, False, 0x1234,
                                           0x300, (0xFFFFFFFF,))
    assert by_spi[0xC0FFEE04][4:] == (0, False, 0, 0, (0,), None)
    assert parse_replay_rows(VM[-1], 21).done and not parse_replay_rows(VM[-1], 21).error


def test_hand_written_and_host_kernel_answers_agree_with_the_codec() -> None:
    (row,) = parse_replay_rows(GOLDEN_SA, 15).rows
    assert row == ReplayRow("198.51.100.4", 0xC0FFEE01, 50, 1, 32, False, 0x1234, 0x56,
                            (0xFFFFFFFF,))
    assert parse_replay_rows(GOLDEN_SA_KEYED, 15).rows == [row]
    for data in (KERNEL["getsa_dump.0"], KERNEL["getsa_dump.1"]):
        seq = parse_messages(data)[0].seq
        assert parse_replay_rows(data, seq).rows == _rows_by_codec(data, seq)


def test_other_sequence_numbers_are_skipped_and_the_end_is_reported() -> None:
    part = parse_replay_rows(GOLDEN_SA, 16)
    assert part.rows == [] and not part.answered and not part.done
    intr = Message(MessageType.NEWSA, NlmFlag.MULTI | NlmFlag.DUMP_INTR, 15, 0, EXPECTED_SA)
    done = encode_message(Message(NlmsgType.DONE, NlmFlag.MULTI, 15, 0, Done(-errno.EINTR)))
    part = parse_replay_rows(encode_message(intr) + done, 15)
    assert part.answered and part.interrupted and part.done and part.error == -errno.EINTR
    assert len(part.rows) == 1
    part = parse_replay_rows(KERNEL["getae_missing.0"], 12)
    assert part.done and part.error == -errno.ESRCH


def test_every_cut_body_is_malformed_unless_it_ends_on_an_attribute() -> None:
    singles = [GOLDEN_SA, GOLDEN_SA_KEYED, *(_single_newsas(VM))]
    for raw in singles:
        ends = _attribute_ends(raw[: int.from_bytes(raw[:4], "little")], 16 + 224)
        seq = int.from_bytes(raw[8:12], "little")
        for cut in range(16, len(raw)):
            shortened = cut.to_bytes(4, "little") + raw[4:cut]
            if cut in ends:
                parse_replay_rows(shortened, seq)
            else:
                with pytest.raises(MalformedMessage):
                    parse_replay_rows(shortened, seq)
        for cut in range(1, len(raw)):  # a cut datagram: its header claims more than is left
            with pytest.raises(MalformedMessage):
                parse_replay_rows(raw[:cut], seq)


def _single_newsas(datagrams: list[bytes]) -> list[bytes]:
    """Each NEWSA message of the datagrams on its own, padding dropped."""
    out = []
    for data in datagrams:
        offset = 0
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 4], "little")
            if int.from_bytes(data[offset + 4 : offset + 6], "little") == MessageType.NEWSA:
                out.append(data[offset : offset + length])
            offset += (length + 3) & ~3
    return out


def test_a_malformed_attribute_names_itself() -> None:
    raw = bytearray(GOLDEN_SA)
    replay_at = len(raw) - 16  # REPLAY_ATTR is the last attribute: 16 bytes
    raw[replay_at : replay_at + 2] = (8).to_bytes(2, "little")  # 4 payload bytes, not 12
    with pytest.raises(MalformedMessage) as bad:
        parse_replay_rows(bytes(raw), 15)
    assert bad.value.attribute == "XFRMA_REPLAY_VAL" and bad.value.offset == replay_at + 4


def _check_rows(data: bytes, seq: int) -> None:
    """Rows read from `data` are what the full codec reads, within the kernel's field ranges,
    at most one per NEWSA of dump `seq`; a datagram the codec reads is never refused."""
    try:
        codec = _rows_by_codec(data, seq)
    except MalformedMessage:
        codec = None
    try:
        part = parse_replay_rows(data, seq)
    except MalformedMessage:
        assert codec is None, "the guard's decoder refused what the full codec reads"
        return
    newsas = sum(1 for m in _headers(data) if m == (MessageType.NEWSA, seq))
    assert len(part.rows) <= newsas
    for row in part.rows:
        assert row.spi <= 0xFFFFFFFF and row.proto <= 0xFF and row.reqid <= 0xFFFFFFFF
        assert row.window <= 0xFFFFFFFF and all(0 <= w <= 0xFFFFFFFF for w in row.bitmap)
        limit = 1 << 64 if row.esn else 1 << 32
        assert row.oseq < limit and row.seq < limit
        assert row.esn or len(row.bitmap) == 1
    if codec is not None:
        assert part.rows == codec


def _headers(data: bytes) -> list[tuple[int, int]]:
    """(type, seq) of each message header the datagram frames (stops where framing fails)."""
    out, offset = [], 0
    while len(data) - offset >= 16:
        length = int.from_bytes(data[offset : offset + 4], "little")
        if length < 16 or length > len(data) - offset:
            break
        out.append((int.from_bytes(data[offset + 4 : offset + 6], "little"),
                    int.from_bytes(data[offset + 8 : offset + 12], "little")))
        offset += (length + 3) & ~3
    return out


@FUZZ
@given(st.binary(max_size=600), st.integers(0, 20))
def test_fuzz_random_bytes_read_as_the_codec_does(data: bytes, seq: int) -> None:
    _check_rows(data, seq)


@FUZZ
@given(st.sampled_from([*_messages(), *VM]),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6))
def test_fuzz_mutated_messages_read_as_the_codec_does(raw: bytes, edits: list) -> None:
    data = bytearray(raw)
    for position, value in edits:
        data[position % len(data)] = value
    seq = int.from_bytes(data[8:12], "little") if len(data) >= 12 else 0
    _check_rows(bytes(data), seq)


def test_socket_dump_rows_retries_an_interrupted_dump_and_names_errors() -> None:
    done = Message(NlmsgType.DONE, NlmFlag.MULTI | NlmFlag.DUMP_INTR, 1, 0, Done())
    sa_msg = Message(MessageType.NEWSA, NlmFlag.MULTI, 2, 0, EXPECTED_SA)
    xs, fake = _scripted([(encode_message(done), 0), (encode_message(sa_msg), 0),
                          (encode_message(dataclasses.replace(done, seq=2, flags=2)), 0)])
    (row,) = xs.dump_replay_rows()
    assert row.spi == 0xC0FFEE01 and row.oseq == 0x1234 and len(fake.sent) == 2
    failed = Message(NlmsgType.DONE, NlmFlag.MULTI, 1, 0, Done(-errno.ENOMEM))
    xs, _ = _scripted([(encode_message(failed), 0)])
    with pytest.raises(XfrmError) as err:
        xs.dump_replay_rows()
    assert err.value.errno == errno.ENOMEM and "GETSA dump" in str(err.value)
    xs, _ = _scripted([(encode_message(dataclasses.replace(sa_msg, seq=1)), 0)])
    with pytest.raises(XfrmError) as late:
        xs.dump_replay_rows()
    assert late.value.errno == errno.ETIMEDOUT


# GOLDEN_SA with the SA's XFRMA_MARK (value 42, mask 0xffffffff, as swanctl's mark_in = 42
# installs it) where copy_to_user_state_extra() puts it: after XFRMA_ENCAP, before the replay
MARK_ATTR = "0c00" "1500" "2a000000" "ffffffff"
GOLDEN_SA_MARKED = bytes.fromhex(HDR.format(len="28010000") + SA_BODY + ENCAP_ATTR + MARK_ATTR
                                 + REPLAY_ATTR)


def _with_attrs(newsa: bytes, attrs: str) -> bytes:
    """One NEWSA message with `attrs` (hex) put right after its xfrm_usersa_info."""
    cut = 16 + 224
    out = newsa[4:cut] + bytes.fromhex(attrs) + newsa[cut:]
    return (len(out) + 4).to_bytes(4, "little") + out


def test_a_marked_sa_reads_with_its_mark_in_both_decoders() -> None:
    """Finding (issue 18): the guard's rows had no XFRMA_MARK, so its NEWAE could not carry
    it and the kernel's lookup (xfrm_state_lookup with mark 0) missed every marked SA."""
    marked = dataclasses.replace(EXPECTED_SA, mark=Mark(42, 0xFFFFFFFF))
    built = encode_message(Message(MessageType.NEWSA, NlmFlag.MULTI, 15, 0x3DA7, marked))
    assert built == GOLDEN_SA_MARKED  # the codec's encoder writes what the kernel sends
    (row,) = parse_replay_rows(GOLDEN_SA_MARKED, 15).rows
    assert row == ReplayRow("198.51.100.4", 0xC0FFEE01, 50, 1, 32, False, 0x1234, 0x56,
                            (0xFFFFFFFF,), Mark(42, 0xFFFFFFFF))
    (lean,) = parse_messages(GOLDEN_SA_MARKED, lean=True)
    assert isinstance(lean.body, SaReplay) and lean.body.mark == row.mark
    assert parse_replay_rows(GOLDEN_SA_MARKED, 15).rows == _rows_by_codec(GOLDEN_SA_MARKED, 15)
    # the VM kernel's ESN IPv6 SA with a partial mark, an XFRMA_IF_ID, and the mark repeated:
    # the last one wins, as in nla_parse() and the codec
    v6 = next(m for m in _single_newsas(VM) if m[56 + 16 + 16 : 56 + 16 + 20]
              == (0xC0FFEE03).to_bytes(4, "big"))
    raw = _with_attrs(v6, "0c00" "1500" "01000000" "ff000000" "0800" "1f00" "07000000"
                          "0c00" "1500" "05000000" "ff000000")
    (row,) = parse_replay_rows(raw, 21).rows
    assert (row.spi, row.esn, row.oseq, row.mark) == (0xC0FFEE03, True, 5, Mark(5, 0xFF))
    assert [row] == _rows_by_codec(raw, 21)
    (lean,) = parse_messages(raw, lean=True)
    assert isinstance(lean.body, SaReplay) and lean.body.mark == Mark(5, 0xFF)
    assert parse_replay_rows(GOLDEN_SA, 15).rows[0].mark is None  # no attribute, no mark
    assert parse_messages(GOLDEN_SA, lean=True)[0].body.mark is None


def test_a_short_mark_is_malformed_in_both_decoders() -> None:
    raw = _with_attrs(GOLDEN_SA, "0800" "1500" "2a000000")  # xfrm_mark cut to 4 bytes
    with pytest.raises(MalformedMessage) as rows:
        parse_replay_rows(raw, 15)
    with pytest.raises(MalformedMessage) as lean:
        parse_messages(raw, lean=True)
    assert rows.value.attribute == lean.value.attribute == f"XFRMA_{Attr.MARK.name}"
    assert rows.value.offset == lean.value.offset == 16 + 224 + 4


def test_socket_dump_rows_carry_the_mark() -> None:
    marked = dataclasses.replace(EXPECTED_SA, mark=Mark(42, 0xFFFFFFFF), if_id=3,
                                 replay=None, flags=128, replay_esn=ReplayStateEsn(
                                     1, 2, 3, 0, 0, 32, (7,)))
    sa_msg = encode_message(Message(MessageType.NEWSA, NlmFlag.MULTI, 1, 0, marked))
    done = encode_message(Message(NlmsgType.DONE, NlmFlag.MULTI, 1, 0, Done()))
    xs, _ = _scripted([(sa_msg + done, 0)])
    (row,) = xs.dump_replay_rows()
    assert (row.esn, row.oseq, row.seq, row.mark) == (True, 2, 3, Mark(42, 0xFFFFFFFF))

