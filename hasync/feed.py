"""Feeding charon's ha plugin what the journal committed, at the pace charon reads it.

Rules: charon reads its HA socket with one thread, and a datagram the kernel cannot queue on
that socket is lost without a word (UDP; strongswan src/libcharon/plugins/ha/ha_socket.c). A
restored backup replays hundreds of datagrams at once, which overflowed charon's receive
buffer under load and left it without most of the SAs. So before each burst the feed reads
the receive queue of charon's socket (the `rx_queue` column of this namespace's
/proc/net/udp, in the kernel's accounting: a datagram costs its truesize, about 768 bytes
plus its length rounded up to a slab size) and sends only what fills it to half of charon's
receive buffer, which is the namespace's net.core.rmem_default (ha_socket.c sets no
SO_RCVBUF). Half, because the queue shown lags the memory charged by up to a quarter of the
buffer (udp_rqueue_get: rmem_alloc less forward_deficit, net/ipv4/udp.c). A full queue is read
again every POLL_S, so a fast reader is fed as fast as it reads (D252; the fixed 16-datagram
chunks before paced a 400k-datagram replay at about 18k/s). Order is kept: one FIFO for the
replay and what is applied after it. Without that file the feed pauses FALLBACK_PAUSE_S per
MIN_BURST; if charon reads nothing for STALL_S, the next MIN_BURST goes anyway and the stall
is counted. `udp_rx_queue` is pure.

Bound (issue 17 finding 7): what is queued beyond the replay under way is at most
MAX_FEED_BYTES (a replay raises the ceiling by its own size: its datagrams are the journal's
own bytes objects, so it costs pointers). A `put` past the ceiling drops the whole queue and
returns False: charon then misses datagrams, so the caller must start over with a full replay
(node.py `on_feed_overflow`); nothing is dropped without that and a count ("overflows",
"overflow_dropped").
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from . import procudp

Address = tuple[str, int]
MIN_BURST = 16 * 1024  # the least room worth a burst; also a burst without the file or stalled
SKB_COST = 1024  # a datagram's cost beyond twice its length: bounds its truesize (tested)
POLL_S = 0.001
FALLBACK_PAUSE_S = 0.05
STALL_S = 5.0
MAX_FEED_BYTES = 64 * 1024 * 1024  # mirrored datagrams charon has not read yet, at most
PROC_UDP = Path("/proc/net/udp")
RMEM_DEFAULT = Path("/proc/sys/net/core/rmem_default")
DEFAULT_RCVBUF = 212992  # Linux's rmem_default when the file cannot be read


def default_rcvbuf(path: Path = RMEM_DEFAULT) -> int:
    """The receive buffer of a socket that sets none, as charon's HA socket does."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return DEFAULT_RCVBUF


def udp_rx_queue(text: str, addr: Address) -> int | None:
    """Bytes queued on the UDP socket bound to `addr`, from /proc/net/udp text (procudp.py)."""
    rows = procudp.sockets_at(addr, text)
    return rows[0].rx_queue if rows else None


def datagram_cost(datagram: bytes) -> int:
    """At least what `datagram` adds to a receive queue (skb truesize: 1280 bytes for 400,
    2304 for 1000, measured on Linux 6.1 and 6.18)."""
    return SKB_COST + 2 * len(datagram)


class CharonFeed:
    """A FIFO of datagrams for charon, sent in chunks as charon's socket has room."""

    def __init__(self, send: Callable[[bytes], object], charon: Address,
                 proc_udp: Path = PROC_UDP, max_bytes: int = MAX_FEED_BYTES,
                 rcvbuf: int | None = None) -> None:
        self._send, self._charon = send, charon
        self._proc = procudp.ProcFile(proc_udp)  # kept open: read on every burst (D272)
        # what a burst fills charon's queue to (bytes, kernel accounting; see the rules)
        self.high_water = max(2 * MIN_BURST, (rcvbuf or default_rcvbuf()) // 2)
        self._queue: deque[bytes] = deque()
        self._bytes = 0  # queued
        self.max_bytes = max_bytes
        self._ceiling = max_bytes  # max_bytes above the last replay's size, until empty
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.counters = {"fed": 0, "stalls": 0, "fallback": 0, "overflows": 0,
                         "overflow_dropped": 0}

    def put(self, datagrams: Iterable[bytes], replay: bool = False) -> bool:
        """Queue datagrams behind those already queued; a `replay` raises the bound by its
        size. False: past the bound, the queue (and these) were dropped and counted."""
        batch = list(datagrams)
        size = sum(len(d) for d in batch)
        if replay:
            self._ceiling = self._bytes + size + self.max_bytes
        elif self._bytes + size > self._ceiling:
            self.counters["overflows"] += 1
            self.counters["overflow_dropped"] += len(self._queue) + len(batch)
            self._drop()
            return False
        self._queue.extend(batch)
        self._bytes += size
        if self._queue:
            self._idle.clear()
            self._wake.set()
        return True

    def _drop(self) -> None:
        """Empty the queue."""
        self._queue.clear()
        self._bytes, self._ceiling = 0, self.max_bytes
        self._idle.set()

    def clear(self) -> int:
        """Drop everything queued (charon restarted); how many datagrams were dropped."""
        dropped = len(self._queue)
        self._drop()
        self.counters["cleared"] = self.counters.get("cleared", 0) + dropped
        return dropped

    @property
    def queued(self) -> int:
        """Datagrams not yet sent."""
        return len(self._queue)

    async def drained(self) -> None:
        """Return once everything queued so far has been sent."""
        await self._idle.wait()

    async def run(self) -> None:
        """Send what is queued, burst by burst, forever."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                room = await self._room()
                while self._queue and room > 0:
                    datagram = self._queue.popleft()
                    self._bytes -= len(datagram)
                    self._send(datagram)
                    self.counters["fed"] += 1
                    room -= datagram_cost(datagram)
            self._bytes, self._ceiling = 0, self.max_bytes
            self._idle.set()

    def rx_queue(self) -> int | None:
        """Bytes waiting on charon's socket now (None: not readable here)."""
        try:
            return udp_rx_queue(self._proc.read(), self._charon)
        except OSError:
            return None

    async def _room(self) -> int:
        """Wait until charon's socket has room for a burst; return that room in bytes."""
        deadline = time.monotonic() + STALL_S
        while True:
            queued = self.rx_queue()
            if queued is None:
                self.counters["fallback"] += 1
                await asyncio.sleep(FALLBACK_PAUSE_S)
                return MIN_BURST
            if queued <= self.high_water - MIN_BURST:
                return self.high_water - queued
            if time.monotonic() >= deadline:
                self.counters["stalls"] += 1
                return MIN_BURST
            await asyncio.sleep(POLL_S)
