"""The guard's kernel adapter: conversions both ways, and its failures by name (no sockets:
`XfrmSocket` is replaced by a fake)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from hasync.guard import Guard, Reserve
from hasync.guard import kernel as kernel_mod
from hasync.guard.kernel import KernelSas, esn_state, row_sa
from hasync.guard.records import KernelSa, Write
from hasync.xfrm.errors import XfrmError
from hasync.xfrm.replayrows import ReplayRow

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

    def set_replay_esn(self, daddr: str, spi: int, proto: int, *, state: Any) -> None:
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
