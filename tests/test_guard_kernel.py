"""The guard's kernel adapter: conversions both ways, and its failures by name (no sockets:
`XfrmSocket` is replaced by a fake, or its netlink socket by a scripted kernel whose requests
are decoded); a marked SA's NEWAE carries its XFRMA_MARK, an unmarked one's none."""

from __future__ import annotations

import dataclasses
import errno
from typing import Any

import pytest
from test_xfrm_codec import EXPECTED_SA, FakeKernel, _scripted

from hasync.guard import Guard, Reserve
from hasync.guard import kernel as kernel_mod
from hasync.guard.kernel import KernelSas, esn_state, row_sa
from hasync.guard.records import KernelSa, Write
from hasync.xfrm import (
    Aevent,
    Done,
    Header,
    Mark,
    Message,
    MessageType,
    NetlinkError,
    NlmFlag,
    NlmsgType,
    ReplayState,
    ReplayStateEsn,
    encode_message,
    parse_messages,
)
from hasync.xfrm.errors import XfrmError
from hasync.xfrm.replayrows import ReplayRow
from hasync.xfrm.socket import XfrmSocket

from guardfakes import FakeFence, FakeJournal

KEY = ("192.0.2.101", 7, 50)


def test_kernel_views_and_esn_writes_convert_both_ways() -> None:
    sa = row_sa(ReplayRow("192.0.2.101", 7, 50, 4, 32, True, (1 << 32) | 5, (2 << 32) | 9,
                          (3,)))
    assert sa.key == KEY and sa.esn and sa.reqid == 4 and sa.window == 32
    state = esn_state(Write(sa, (3 << 32) | 1, (2 << 32) | 9, (3,)))
    assert (state.oseq_hi, state.oseq, state.seq_hi, state.seq, state.bmp_len) == (3, 1, 2, 9, 1)
    plain = row_sa(ReplayRow("192.0.2.101", 7, 50, 4, 0, False, 11, 0, (0,)))
    assert not plain.esn and plain.oseq == 11 and plain.reqid == 4


class FakeSocket:
    """Refuses the write to SPI 8; remembers the others."""

    def __init__(self, *, timeout: float) -> None:
        self.done: list[tuple[Any, ...]] = []

    def set_replay(self, daddr: str, spi: int, proto: int, **values: Any) -> None:
        if spi == 8:
            raise XfrmError(errno.ESRCH, "NEWAE", sa=(daddr, spi, proto))
        self.done.append((spi, values))

    def set_replay_esn(self, daddr: str, spi: int, proto: int, *, state: Any,
                       mark: Any = None) -> None:
        self.done.append((spi, state.oseq_hi))

    def close(self) -> None:
        pass


def test_a_refused_write_is_reported_and_the_others_still_land(monkeypatch: Any) -> None:
    monkeypatch.setattr(kernel_mod, "XfrmSocket", FakeSocket)
    writes = [Write(KernelSa(("192.0.2.1", spi, 50), spi == 9, 0, 0, (0,), 32), 1 << 33, 0,
                    (0,)) for spi in (7, 8, 9)]
    k = KernelSas()
    res = k.write_now(writes)
    k.close()
    assert res.done == 2 and len(res.errors) == 1 and "NEWAE" in res.errors[0]


def test_a_socket_that_cannot_open_is_a_kernel_failure(monkeypatch: Any) -> None:
    def refuse(*, timeout: float) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(kernel_mod, "XfrmSocket", refuse)
    k = KernelSas()
    with pytest.raises(XfrmError) as caught:
        k.snapshot_now()
    k.close()
    assert caught.value.errno == errno.EPERM and "NETLINK_XFRM" in str(caught.value)


def test_the_guard_s_default_kernel_opens_its_socket_only_when_first_used(
        monkeypatch: Any) -> None:
    opened: list[float] = []

    def socket(*, timeout: float) -> FakeSocket:
        opened.append(timeout)
        return FakeSocket(timeout=timeout)
    monkeypatch.setattr(kernel_mod, "XfrmSocket", socket)
    g = Guard("gw2", FakeJournal(), Reserve(), lambda: None, FakeFence())
    assert isinstance(g.kernel, KernelSas) and opened == []
    assert g.kernel.write_now([]).done == 0 and g.kernel.write_now([]).done == 0
    assert opened == [2.0]  # one socket, opened at first use
    g.close()


def _ack(seq: int) -> tuple[bytes, int]:
    """The kernel's ACK of request `seq` (a unicast datagram)."""
    ack = NetlinkError(0, Header(80, MessageType.NEWAE, 0x105, seq, 0))
    return encode_message(Message(NlmsgType.ERROR, 0, seq, 0, ack)), 0


def _kernel_sas(monkeypatch: Any, script: list) -> tuple[KernelSas, FakeKernel]:
    """A KernelSas whose XfrmSocket talks to a scripted kernel that records each request."""
    made: list[FakeKernel] = []

    def socket(*, timeout: float) -> XfrmSocket:
        xs, fake = _scripted(script)
        made.append(fake)
        return xs
    monkeypatch.setattr(kernel_mod, "XfrmSocket", socket)
    k = KernelSas()  # its *_now calls run on this thread; its pool never starts a worker
    k._socket()
    return k, made[0]


def _sent_aevents(fake: FakeKernel) -> list[Aevent]:
    out = []
    for raw in fake.sent:
        (msg,) = parse_messages(raw)
        if msg.type == MessageType.NEWAE:
            assert msg.flags & NlmFlag.REPLACE and isinstance(msg.body, Aevent)
            out.append(msg.body)
    return out


def test_a_marked_sa_s_write_carries_its_mark_from_the_dump_to_newae(monkeypatch: Any) -> None:
    """Finding (issue 18): the guard dropped an SA's XFRMA_MARK between its dump and its
    NEWAE, so xfrm_new_ae() looked the SA up with mark 0 and refused every write to an SA of
    a route-based tunnel (swanctl mark_in/mark_out) with ESRCH."""
    esn = ReplayStateEsn(1, 2, 3, 0, 0, 32, (7,))
    sas = [dataclasses.replace(EXPECTED_SA, mark=Mark(42, 0xFFFFFFFF)),
           dataclasses.replace(EXPECTED_SA, id=dataclasses.replace(EXPECTED_SA.id, spi=0x77),
                               replay=None, replay_esn=esn, flags=128, mark=Mark(5, 0xFF),
                               if_id=3)]
    dump = b"".join(encode_message(Message(MessageType.NEWSA, NlmFlag.MULTI, 1, 0, sa))
                    for sa in sas)
    dump += encode_message(Message(NlmsgType.DONE, NlmFlag.MULTI, 1, 0, Done()))
    k, fake = _kernel_sas(monkeypatch, [(dump, 0), _ack(2), _ack(3)])
    plain, wide = k.snapshot_now()
    assert (plain.xfrm_mark, wide.xfrm_mark) == (Mark(42, 0xFFFFFFFF), Mark(5, 0xFF))
    res = k.write_now([Write(plain, 0x9000, plain.seq, plain.bitmap),
                       Write(wide, 1 << 33, wide.seq, wide.bitmap)])
    assert (res.done, res.errors) == (2, [])
    first, second = _sent_aevents(fake)
    assert first.id.sa_id.spi == 0xC0FFEE01 and first.mark == Mark(42, 0xFFFFFFFF)
    assert first.replay == ReplayState(oseq=0x9000, seq=0x56, bitmap=0xFFFFFFFF)
    assert second.id.sa_id.spi == 0x77 and second.mark == Mark(5, 0xFF)
    assert second.replay_esn is not None and second.replay_esn.oseq_hi == 2
    assert second.if_id is None  # XFRMA_IF_ID takes no part in the kernel's SA lookup


def test_an_unmarked_sa_s_write_sends_no_mark(monkeypatch: Any) -> None:
    k, fake = _kernel_sas(monkeypatch, [_ack(1), _ack(2)])
    plain = KernelSa(("198.51.100.4", 0xC0FFEE01, 50), False, 10, 0, (0,), 32)
    wide = KernelSa(("198.51.100.4", 0xC0FFEE02, 50), True, 10, 0, (0,), 32)
    assert plain.xfrm_mark is None  # the default: constructors without it still work
    assert k.write_now([Write(plain, 500, 0, (0,)), Write(wide, 500, 0, (0,))]).done == 2
    sent = _sent_aevents(fake)
    assert [ae.mark for ae in sent] == [None, None] and len(fake.sent) == 2
    assert all(b"\x0c\x00\x15\x00" not in raw[16 + 48 :] for raw in fake.sent)


def test_row_sa_keeps_the_mark() -> None:
    sa = row_sa(ReplayRow("192.0.2.101", 7, 50, 4, 32, False, 5, 9, (3,), Mark(9, 0xF)))
    assert sa.key == KEY and sa.xfrm_mark == Mark(9, 0xF)
    assert row_sa(ReplayRow("192.0.2.101", 7, 50, 4, 32, False, 5, 9, (3,))).xfrm_mark is None

