"""The kernel side of the sequence guard: read every SA's replay state, write the guard's plans.

Rules: a thin blocking adapter over `hasync.xfrm.socket.XfrmSocket`, run by the daemon on one
worker thread (the socket is used by one thread at a time); conversions between the kernel's
structs and `seqguard.KernelSa` are pure functions; a failed write is reported with the SA and
the kernel's error and never stops the other writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .seqguard import KernelSa, Write
from .xfrm.errors import XfrmError
from .xfrm.replayrows import ReplayRow
from .xfrm.socket import XfrmSocket
from .xfrm.structs import ReplayStateEsn


def row_sa(row: ReplayRow) -> KernelSa:
    """The guard's view of one row of its own dump (`XfrmSocket.dump_replay_rows`)."""
    return KernelSa((row.daddr, row.spi, row.proto), row.esn, row.oseq, row.seq, row.bitmap,
                    row.window, row.reqid)


def esn_state(w: Write) -> ReplayStateEsn:
    """The XFRMA_REPLAY_ESN_VAL that sets an ESN SA to `w`'s counters."""
    return ReplayStateEsn(bmp_len=len(w.bitmap), oseq=w.oseq & 0xFFFFFFFF, seq=w.seq & 0xFFFFFFFF,
                          oseq_hi=w.oseq >> 32, seq_hi=w.seq >> 32, replay_window=w.sa.window,
                          bmp=tuple(w.bitmap))


@dataclass
class WriteResult:
    """What a batch of writes did."""

    done: int = 0
    errors: list[str] = field(default_factory=list)


class KernelSas:
    """One XFRM socket for the daemon's worker thread."""

    def __init__(self) -> None:
        self.sock = XfrmSocket(timeout=2.0)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def snapshot(self) -> list[KernelSa]:
        """Every ESP/AH SA of this namespace with its replay state."""
        return [row_sa(row) for row in self.sock.dump_replay_rows()]

    def write(self, writes: list[Write]) -> WriteResult:
        """Apply every write (NEWAE + NLM_F_REPLACE); errors are collected, not raised."""
        res = WriteResult()
        for w in writes:
            daddr, spi, proto = w.sa.key
            try:
                if w.sa.esn:
                    self.sock.set_replay_esn(daddr, spi, proto, state=esn_state(w))
                else:
                    self.sock.set_replay(daddr, spi, proto, seq=w.seq, oseq=w.oseq,
                                         bitmap=w.bitmap[0] if w.bitmap else 0)
                res.done += 1
            except XfrmError as e:
                res.errors.append(str(e))
        return res
