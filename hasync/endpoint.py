"""hasync's end of charon's HA link: a UDP socket bound where charon's ha plugin sends (its
`remote`), accepting datagrams only from charon's `local` address.

Rules: this is the only module that touches the HA socket; every datagram is either handed
on decoded or dropped, logged (rate-limited) and counted by reason, and nothing a datagram
holds can stop the endpoint; the socket is not connect()ed, so foreign datagrams are seen
and counted rather than silently filtered by the kernel. Charon's ha plugin binds `local`
and sends to `remote` (strongswan src/libcharon/plugins/ha/ha_socket.c).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections import Counter
from collections.abc import Callable

from .ha import HaMessage, MalformedMessage, decode

log = logging.getLogger("hasync.ha")
Address = tuple[str, int]
Handler = Callable[[bytes, HaMessage, float], None]
LOG_FIRST = 10  # per reason: log the first few drops, then every LOG_EVERY-th
LOG_EVERY = 1000
RCVBUF = 8 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux socket(7)


def drop_reason(err: MalformedMessage) -> str:
    """A bounded counter key for a malformed datagram (numbers folded away)."""
    words = re.sub(r"\d+", "N", err.reason).split(":")[0]
    attr = err.attribute if isinstance(err.attribute, str) else "-"
    return f"malformed:{attr}:{words}"


class HaEndpoint(asyncio.DatagramProtocol):
    """Receives charon's HA stream and sends datagrams to charon."""

    def __init__(self, charon: Address, handler: Handler,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.charon = charon
        self.handler = handler
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.last_rx: float | None = None  # when charon was last heard
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Decode a datagram from charon; drop and count anything else."""
        self.counters["received"] += 1
        if (str(addr[0]), int(addr[1])) != self.charon:
            self._drop("foreign_source", f"from {addr[0]}:{addr[1]}")
            return
        try:
            msg = decode(data)
        except MalformedMessage as e:
            self._drop(drop_reason(e), str(e))
            return
        now = self.clock()
        self.last_rx = now
        self.counters["accepted"] += 1
        try:
            self.handler(data, msg, now)
        except Exception:  # a handler bug must not stop the stream
            self.counters["handler_error"] += 1
            log.exception("handling %s failed", msg.type.name)

    def error_received(self, exc: Exception) -> None:
        """Count socket errors (ICMP port unreachable while charon is down)."""
        self.counters["socket_error"] += 1

    def send(self, data: bytes) -> bool:
        """Send a datagram to charon; False if the socket is not open."""
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.sendto(data, self.charon)
        self.counters["sent"] += 1
        return True

    def _drop(self, reason: str, detail: str) -> None:
        self.counters["dropped"] += 1
        self.counters[f"dropped:{reason}"] += 1
        n = self.counters[f"dropped:{reason}"]
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning("dropped HA datagram (%s, %d so far): %s", reason, n, detail)


async def open_endpoint(bind: Address, charon: Address, handler: Handler) -> HaEndpoint:
    """Bind the HA endpoint and return its protocol object."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: HaEndpoint(charon, handler), local_addr=bind)
    proto.transport = transport  # connection_made only runs on the loop's next turn
    _grow_rcvbuf(transport.get_extra_info("socket"))
    return proto


def _grow_rcvbuf(sock: socket.socket | None) -> None:
    """Room for a burst from charon (a resync, a mass rekey) while the loop is busy."""
    if sock is None:
        return
    for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # FORCE passes rmem_max, as root
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
            return
        except OSError:
            continue
