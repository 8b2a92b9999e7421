"""Clients' IKE requests as the daemon sees them (ikesniff.py's socket): a new master's responder
message IDs (midsync.py) and peers that moved (roam.py, journal/rehome.py).

Rules: both methods are events (functions of `now` returning the core's commands), run on the
loop by the supervisor; the journal is read under its lock and only the core decides what is
sent. A move is journaled only once the master's kernel holds the IKE_SA's outbound SA at the
new host (the guard's last kernel read).
"""

from __future__ import annotations

import logging
import socket
from ipaddress import ip_address

from .guard import Guard
from .ha import Host
from .ikesniff import read_all
from .midsync import request_key
from .node import Command, NodeCore
from .raft import ClusterJournal
from .role import Role

log = logging.getLogger("hasync")


class ClientRequests:
    """Clients' IKE requests into message ID rewinds and confirmed moves."""

    def __init__(self, core: NodeCore, journal: ClusterJournal, guard: Guard) -> None:
        self.core, self.journal, self.guard = core, journal, guard

    def requests(self, sock: socket.socket, now: float) -> list[Command]:
        """On the master, clients' requests set charon's responder message IDs where the old
        master may have left an exchange in flight (midsync.py)."""
        seen = read_all(sock, self.core.counters)
        out: list[Command] = []
        master = self.core.role.role is Role.MASTER
        for s in seen:
            if not s.header.is_request or not (master or self.core.mids.active):
                continue
            key = request_key(s.header.spi_i, s.header.spi_r, s.header.from_initiator)
            with self.journal.lock:
                state = self.journal.state
                raw = state.responder_mid(key) if self.core.mids.active else None
                host = state.remote_host(key) if master else None
                spis = state.outbound_spis(key) if host is not None and \
                    (host.address, host.port) != (ip_address(s.src), s.sport) else ()
            if host is not None:  # roam.py: a request from elsewhere may be a move
                self.core.roams.seen(key, Host(ip_address(s.src), s.sport), host, spis, now)
            if self.core.mids.active:
                out += self.core.on_ike_request(key, s.header.mid, raw, now)
        return out

    def roams(self, now: float) -> list[Command]:
        """Journal the moves the kernel confirms (roam.py, rehome.py)."""
        confirmed = self.core.roams.confirm(self.guard.kernel_keys, now)
        if not confirmed:
            return []
        with self.journal.lock:
            raws = [(key, host, self.journal.state.roam_update(key, host))
                    for key, host in confirmed]
        for key, host, raw in raws:
            log.info("the peer of IKE_SA %016x_i %016x_r moved to %s:%d%s", key[1], key[2],
                     host.address, host.port, "" if raw else " (the journal has it already)")
        return self.core.on_roamed([raw for _, _, raw in raws if raw], now)
