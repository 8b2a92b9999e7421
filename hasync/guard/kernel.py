"""The kernel side of the sequence guard: read every SA's replay state, write the guard's plans.

Rules: `KernelPort` is what the driver needs (an async snapshot and write; tests inject fakes);
`KernelSas` implements it over `hasync.xfrm.socket.XfrmSocket` on one worker thread of its own
(the socket is used by one thread at a time, and the event loop never blocks on netlink); the
socket opens on first use, and failing to open it is an `XfrmError` like any other kernel
refusal; conversions between the kernel's structs and `KernelSa` are pure functions; a failed
write is reported with the SA and the kernel's error and never stops the other writes; every
NEWAE carries the SA's XFRM mark as dumped (value and mask), since xfrm_new_ae() finds an SA
through xfrm_state_lookup(), which skips one whose (mark & mask) != value (net/xfrm/xfrm_user.c,
net/xfrm/xfrm_state.c __xfrm_state_lookup()); XFRMA_IF_ID takes no part in that lookup.
Replay state: torvalds/linux include/uapi/linux/xfrm.h (xfrm_replay_state[_esn], XFRM_MSG_NEWAE).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
from typing import Protocol

from ..xfrm.errors import MalformedMessage, XfrmError
from ..xfrm.replayrows import ReplayRow
from ..xfrm.socket import XfrmSocket
from ..xfrm.structs import ReplayStateEsn
from .records import KernelSa, Write, WriteResult

# what a kernel read may fail with and the guard survives: the kernel refused or never
# answered (XfrmError), or it answered bytes that do not decode (MalformedMessage)
KERNEL_FAILURES: tuple[type[Exception], ...] = (XfrmError, MalformedMessage)


class KernelPort(Protocol):
    """The kernel as the guard's driver uses it."""

    async def snapshot(self) -> list[KernelSa]:
        """Every ESP/AH SA of this namespace with its replay state."""
        ...

    async def write(self, writes: list[Write]) -> WriteResult:
        """Apply every write; refusals are collected in the result, not raised."""
        ...

    def close(self) -> None:
        """Release what the port holds."""
        ...


def row_sa(row: ReplayRow) -> KernelSa:
    """The guard's view of one row of its own dump (`XfrmSocket.dump_replay_rows`)."""
    return KernelSa((row.daddr, row.spi, row.proto), row.esn, row.oseq, row.seq, row.bitmap,
                    row.window, row.reqid, row.mark)


def esn_state(w: Write) -> ReplayStateEsn:
    """The XFRMA_REPLAY_ESN_VAL that sets an ESN SA to `w`'s counters."""
    return ReplayStateEsn(bmp_len=len(w.bitmap), oseq=w.oseq & 0xFFFFFFFF, seq=w.seq & 0xFFFFFFFF,
                          oseq_hi=w.oseq >> 32, seq_hi=w.seq >> 32, replay_window=w.sa.window,
                          bmp=tuple(w.bitmap))


class KernelSas:
    """One XFRM socket on one worker thread: the guard's `KernelPort` in the daemon."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._sock: XfrmSocket | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xfrm")

    def close(self) -> None:
        """Stop the worker thread and close the socket."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._sock is not None:
            self._sock.close()

    async def snapshot(self) -> list[KernelSa]:
        """Every ESP/AH SA of this namespace with its replay state (on the worker thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.snapshot_now)

    async def write(self, writes: list[Write]) -> WriteResult:
        """Apply every write on the worker thread (see `write_now`)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self.write_now, writes)

    def _socket(self) -> XfrmSocket:
        if self._sock is None:
            try:
                self._sock = XfrmSocket(timeout=self.timeout_s)
            except XfrmError:
                raise
            except OSError as e:
                raise XfrmError(e.errno or errno.EIO, "open NETLINK_XFRM socket") from e
        return self._sock

    def snapshot_now(self) -> list[KernelSa]:
        """Blocking: every SA with its replay state."""
        return [row_sa(row) for row in self._socket().dump_replay_rows()]

    def write_now(self, writes: list[Write]) -> WriteResult:
        """Blocking: apply every write (NEWAE + NLM_F_REPLACE); errors are collected."""
        res = WriteResult()
        sock = self._socket()
        for w in writes:
            daddr, spi, proto = w.sa.key
            try:
                if w.sa.esn:
                    sock.set_replay_esn(daddr, spi, proto, state=esn_state(w),
                                        mark=w.sa.xfrm_mark)
                else:
                    sock.set_replay(daddr, spi, proto, seq=w.seq, oseq=w.oseq,
                                    bitmap=w.bitmap[0] if w.bitmap else 0, mark=w.sa.xfrm_mark)
                res.done += 1
            except XfrmError as e:
                res.errors.append(str(e))
        return res
