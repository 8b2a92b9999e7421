"""VRRP advertisements as a node of the lab's public LAN hears them, to measure the master-down
interval: from the old master's last advertisement to its successor's MASTER line.

Rules: one daemon thread enters the node's network namespace (setns(2) acts on that thread
only), joins 224.0.0.18 on the node's address and reads IP protocol 112 on a raw socket until
closed; each advertisement is kept as (monotonic time, source, VRID, priority), the time from
the kernel's receive timestamp. `parse_advert` is pure. RFC 5798 5.1 and 5.2 give the layout.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from .linkfault import enter_netns
from .probe import SO_TIMESTAMPNS, kernel_time

VRRP_PROTO = 112  # RFC 5798 5.1.1.4
VRRP_GROUP = "224.0.0.18"  # RFC 5798 5.1.1.2


@dataclass(frozen=True)
class Advert:
    """One VRRP advertisement heard on the LAN."""

    t: float  # time.monotonic() of its arrival
    src: str
    vrid: int
    priority: int  # 0: the master resigns (RFC 5798 6.4.3)


def parse_advert(packet: bytes, t: float) -> Advert | None:
    """An IPv4 packet carrying a VRRP advertisement, or None if it is anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != VRRP_PROTO:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8 or packet[ihl] & 0x0F != 1:  # type 1: ADVERTISEMENT
        return None
    return Advert(t, socket.inet_ntoa(packet[12:16]), packet[ihl + 1], packet[ihl + 2])


@dataclass
class AdvertLog:
    """Advertisements heard from inside one node's namespace, from start() to close()."""

    ns_path: str
    address: str  # the node's address on the LAN: the group is joined there
    adverts: list[Advert] | None = None
    _stop: threading.Event | None = None
    _ready: threading.Event | None = None
    error: str | None = None

    def start(self, timeout: float = 10) -> None:
        """Start listening; return once the socket is open (or the thread failed)."""
        self.adverts, self._stop, self._ready = [], threading.Event(), threading.Event()
        threading.Thread(target=self._listen, name="vrrp-adverts", daemon=True).start()
        self._ready.wait(timeout)

    def last_from(self, src: str, before: float) -> Advert | None:
        """The last advertisement from `src` that arrived at or before `before`."""
        heard = [a for a in list(self.adverts or []) if a.src == src and a.t <= before]
        return heard[-1] if heard else None

    def close(self) -> None:
        """Stop listening (the thread ends within its 0.5 s receive timeout)."""
        if self._stop:
            self._stop.set()

    def _listen(self) -> None:
        assert self._ready is not None and self._stop is not None
        try:
            sock = self._open()
        except OSError as e:
            self.error = str(e)
            self._ready.set()
            return
        self._ready.set()
        with sock:
            while not self._stop.is_set():
                try:
                    data, anc, _flags, _addr = sock.recvmsg(2048, 64)
                except TimeoutError:
                    continue
                except OSError as e:
                    self.error = str(e)
                    return
                now = time.monotonic()
                adv = parse_advert(data, kernel_time(anc, time.time() - now) or now)
                if adv is not None and self.adverts is not None:
                    self.adverts.append(adv)

    def _open(self) -> socket.socket:
        """The raw socket, opened inside the node's namespace, member of the VRRP group."""
        enter_netns(self.ns_path)
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP_PROTO)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        socket.inet_aton(VRRP_GROUP) + socket.inet_aton(self.address))
        sock.settimeout(0.5)
        return sock
