"""The Raft port's limits: who may connect, how many, how long a handshake may take, how big a
message may be; the pure parts (frame reader, admission policy, counters).

Rules:
- Only cluster members may hold a connection to the Raft port: an accepted socket whose peer IP
  is not a member's address (the configured peers and this node's own, resolved once at start)
  is closed at once and counted. Membership is static (`dynamicMembershipChange=False`).
- A member address holds at most `PER_PEER` incoming connections (a member needs one; an IP
  that carries n members' addresses holds n times that). A new connection over the cap
  evicts the oldest one from that address that has not finished pysyncobj's handshake; if all
  of them have, the new one is closed.
- A connection that has not finished the handshake within `HANDSHAKE_S` is closed. With a
  password the handshake is (pysyncobj/transport.py, TCPTransport._onIncomingMessageReceived):
  the peer's random key, our random key back, then the peer's node address; only a holder of
  the cluster key can produce those messages (each is a Fernet token).
- A frame is a 4-byte native signed length and a payload (pysyncobj/tcp_connection.py,
  TcpConnection.send and __processParseMessage). A length below 0 or above `MAX_MESSAGE`
  closes the connection; the buffer is a bytearray consumed from the front, so reading is
  linear in the bytes received, never above `MAX_MESSAGE` + one read.
- Counters are named; each refusal or error is logged the first time its name is hit, then
  only counted (ordinary events are only counted); `hasync status` shows them under
  "raft_port". Pure parts take `now` as an argument.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# The largest legitimate pysyncobj message here is an `apply_command` carrying one sealed entry
# (journal/seal.py MAX_ENTRY = 256 KiB + seal overhead), pickled, zlib'd and made a Fernet token
# (base64: x4/3): about 350 KiB. append_entries carry entries up to appendEntriesBatchSizeBytes
# (64 KiB) plus one entry, a larger entry goes in 64 KiB pieces, snapshot chunks are
# logCompactionBatchSize (64 KiB) (pysyncobj/syncobj.py, __sendAppendEntries; config.py).
MAX_MESSAGE = 4 * 1024 * 1024
PER_PEER = 4
HANDSHAKE_S = 5.0
FRAME_HEADER = struct.Struct("i")  # pysyncobj/tcp_connection.py: struct.pack('i', len(data))


class FrameError(Exception):
    """A frame's announced length is out of bounds; `reason` names the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class FrameReader:
    """Splits a byte stream into length-prefixed frames, bounded by `limit`."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._limit = limit

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes (amortised O(len(data)))."""
        self._buf += data
        self._check()

    def next(self) -> bytes | None:
        """The next complete frame's payload, or None; FrameError on a bad length."""
        length = self._check()
        if length is None or len(self._buf) < FRAME_HEADER.size + length:
            return None
        end = FRAME_HEADER.size + length
        frame = bytes(self._buf[FRAME_HEADER.size:end])
        del self._buf[:end]  # deleting a bytearray's head moves its start, no copy
        return frame

    def clear(self) -> None:
        """Drop whatever is buffered."""
        self._buf = bytearray()

    def _check(self) -> int | None:
        """The head frame's length once known; FrameError if it is out of bounds."""
        if len(self._buf) < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(self._buf)
        if length < 0:
            raise FrameError("bad_length", f"negative frame length {length}")
        if length > self._limit:
            raise FrameError("oversize", f"frame of {length} bytes exceeds {self._limit}")
        return length


def normalise_ip(text: str) -> str:
    """An IP in canonical text; an IPv4-mapped IPv6 address becomes the IPv4 one."""
    ip = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def member_ips(addresses: Iterable[str]) -> dict[str, int]:
    """How many of the `host:port` addresses resolve to each IP (hasync configures IP
    literals; tests run several members on one loopback address)."""
    ips: Counter[str] = Counter()
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]")
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        ips.update({normalise_ip(str(info[4][0])) for info in infos})
    return dict(ips)


@dataclass
class PortPolicy:
    """Admission of incoming connections: members only, `per_peer` for each member address
    (an IP with n members' addresses holds n * `per_peer`), handshake deadline.

    Connections are keys (any hashable); the policy holds no socket. `pending` keeps
    insertion order, which is age order.
    """

    members: dict[str, int]  # IP -> how many members' addresses are on it
    per_peer: int = PER_PEER
    handshake_s: float = HANDSHAKE_S
    pending: dict[Hashable, tuple[str, float]] = field(default_factory=dict)
    live: dict[Hashable, str] = field(default_factory=dict)

    def admit(self, key: Hashable, ip: str, now: float) -> tuple[str | None, list[Hashable]]:
        """(None, connections to evict) if `key` may stay, else (reason, [])."""
        if ip not in self.members:
            return "rejected_not_member", []
        held = sum(1 for p, _ in self.pending.values() if p == ip)
        held += sum(1 for p in self.live.values() if p == ip)
        evict: list[Hashable] = []
        if held >= self.per_peer * self.members[ip]:
            oldest = next((k for k, (p, _) in self.pending.items() if p == ip), None)
            if oldest is None:
                return "rejected_peer_cap", []
            evict.append(oldest)
            del self.pending[oldest]
        self.pending[key] = (ip, now)
        return None, evict

    def authenticated(self, key: Hashable) -> None:
        """`key` finished the handshake: it no longer expires."""
        entry = self.pending.pop(key, None)
        if entry is not None:
            self.live[key] = entry[0]

    def closed(self, key: Hashable) -> None:
        """`key` is gone."""
        self.pending.pop(key, None)
        self.live.pop(key, None)

    def expired(self, now: float) -> list[Hashable]:
        """Pending connections past the handshake deadline (removed from the policy)."""
        late = [k for k, (_, since) in self.pending.items() if now - since >= self.handshake_s]
        for key in late:
            del self.pending[key]
        return late

    def oldest_pending(self) -> Hashable | None:
        """The oldest connection still in its handshake (removed from the policy), or None."""
        for key in self.pending:
            del self.pending[key]
            return key
        return None


class PortCounters:
    """Thread-safe named counters; each name is logged the first time it is hit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def count(self, name: str, detail: object = "", n: int = 1) -> None:
        """Add `n` to `name`; log the first hit (the line comes before the count)."""
        with self._lock:
            first = name not in self._counts
        if first:
            log.warning("raft port: %s: %s (logged once; counted under raft_port.%s)",
                        name, detail, name)
        with self._lock:
            self._counts[name] += n

    def tally(self, name: str) -> None:
        """Count an ordinary event (no log line)."""
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._counts)

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]
