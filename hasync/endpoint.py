"""hasync's end of charon's HA link: a UDP socket bound where charon's ha plugin sends (its
`remote`) and connected to charon's `local` address, trusting only a socket owned by root.

Rules: this is the only module that touches the HA socket. Charon's ha plugin binds `local`
and sends to `remote` (strongswan src/libcharon/plugins/ha/ha_socket.c); port 4510 is not
privileged, so while charon is down anyone may bind its address (issue 17, finding 1):
- The socket is connect()ed to charon's address: the kernel delivers nothing from any other
  source, so a flood from elsewhere cannot fill its queue (udp(7)).
- Who is at charon's address is read from /proc/net/udp (procudp.py): the owner's uid and the
  socket's inode. A batch of datagrams (all that is queued) is handed on only if the one socket
  there is owned by root and is the same socket (inode) seen at the end of the previous batch:
  a bound UDP socket cannot be bound again, so every datagram in between came from it.
  Otherwise the whole batch is dropped and counted (`dropped:not_root`, `dropped:owner_changed`);
  the first batch after charon restarts is dropped that way, and the replay carries its state.
- Nothing is sent unless the one socket at charon's address is owned by root (checked once per
  loop callback: the feed sends a chunk in one), else counted under `send_refused:*`.
- Kernel drops on this socket (a full receive queue) are counted from SO_RXQ_OVFL
  (socket(7)): `kernel_drops` in `hasync status`.
Every datagram is either handed on decoded or dropped, logged (rate-limited) and counted by
reason; nothing a datagram holds can stop the endpoint.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping

from . import procudp
from .ha import HaMessage, MalformedMessage, decode_only
from .sockbuf import grow_rcvbuf

log = logging.getLogger("hasync.ha")
Address = tuple[str, int]
Handler = Callable[[bytes, HaMessage, float], None]
Owner = tuple[int, int]  # (uid, inode) of the one socket at charon's address
Lookup = Callable[[], list[procudp.UdpSocket]]
LOG_FIRST = 10  # per reason: log the first few drops, then every LOG_EVERY-th
LOG_EVERY = 1000
RCVBUF = 8 * 1024 * 1024
BATCH_MAX = 512  # datagrams read per readable event before the loop runs others
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)  # Linux asm-generic/socket.h
CMSG_SPACE = socket.CMSG_SPACE(4)
ROOT = 0


def drop_reason(err: MalformedMessage) -> str:
    """A bounded counter key for a malformed datagram (numbers folded away)."""
    words = re.sub(r"\d+", "N", err.reason).split(":")[0]
    attr = err.attribute if isinstance(err.attribute, str) else "-"
    return f"malformed:{attr}:{words}"


def root_owner(rows: list[procudp.UdpSocket]) -> tuple[Owner | None, str]:
    """The one root-owned socket at charon's address, or None and why not."""
    if not rows:
        return None, "no_socket"
    if len(rows) > 1:
        return None, "shared_address"
    if rows[0].uid != ROOT:
        return None, "not_root"
    return (rows[0].uid, rows[0].inode), ""


class HaEndpoint:
    """Receives charon's HA stream and sends datagrams to charon."""

    def __init__(self, sock: socket.socket, charon: Address, handler: Handler,
                 lookup: Lookup, clock: Callable[[], float] = time.monotonic,
                 wanted: Mapping[int, frozenset[str]] | None = None,
                 named: frozenset[int] = frozenset()) -> None:
        self.sock, self.charon, self.handler, self.clock = sock, charon, handler, clock
        self.wanted = wanted or {}  # attributes the handler reads, by type (decode_only)
        self.named = named  # types whose every attribute name the handler reads (decode_only)
        self.lookup = lookup
        self.counters: Counter[str] = Counter(kernel_drops=0)
        self.last_rx: float | None = None  # when charon was last heard
        self.verified: Owner | None = self._owner()[0]  # who sent what the next batch holds
        self._send_ok: tuple[bool, str] | None = None  # this loop callback's owner check
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sockname(self) -> Address:
        """Where this endpoint is bound."""
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read datagrams on `loop`."""
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self.readable)

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def readable(self) -> None:
        """Read what is queued, then hand it on if charon's socket vouches for it."""
        batch = self._read_batch()
        if not batch:
            return
        self.counters["received"] += len(batch)
        owner, why = self._owner()
        trusted, before, self.verified = owner is not None and owner == self.verified, \
            self.verified, owner
        if not trusted:
            reason = why or "owner_changed"
            self._drop(reason, f"{len(batch)} datagrams from {self.charon[0]}:{self.charon[1]}"
                       f" (socket owner/inode {before} -> {owner})", len(batch))
            return
        for data in batch:
            self._accept(data)

    def _read_batch(self) -> list[bytes]:
        batch: list[bytes] = []
        while len(batch) < BATCH_MAX:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65535, CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # ICMP port unreachable while charon is down
                self.counters["socket_error"] += 1
                if e.errno != errno.ECONNREFUSED:
                    log.warning("HA socket: %s", e)
                continue
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                    self.counters["kernel_drops"] = struct.unpack("=I", value[:4])[0]
            batch.append(data)
        return batch

    def _accept(self, data: bytes) -> None:
        try:
            msg = decode_only(data, self.wanted, self.named)  # checks all, builds what is wanted
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

    def send(self, data: bytes) -> bool:
        """Send a datagram to charon if a root-owned socket is there; False if not sent."""
        if self.sock.fileno() < 0:
            return False
        ok, why = self._may_send()
        if not ok:
            self.counters[f"send_refused:{why}"] += 1
            return False
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.counters["send_dropped:full"] += 1
            return False
        except OSError:  # ECONNREFUSED: an earlier datagram found no charon
            self.counters["socket_error"] += 1
            return False
        self.counters["sent"] += 1
        return True

    def _may_send(self) -> tuple[bool, str]:
        """The owner check, once per loop callback (the feed sends a chunk in one)."""
        if self._send_ok is None:
            owner, why = self._owner()
            self._send_ok = (owner is not None, why)
            if self._loop is not None:
                self._loop.call_soon(self._forget_send_check)
            else:
                ok = self._send_ok
                self._send_ok = None
                return ok
        return self._send_ok

    def _forget_send_check(self) -> None:
        self._send_ok = None

    def _owner(self) -> tuple[Owner | None, str]:
        try:
            return root_owner(self.lookup())
        except OSError as e:
            self.counters["owner_lookup_errors"] += 1
            return None, f"lookup_failed:{e.errno}"

    def _drop(self, reason: str, detail: str, n: int = 1) -> None:
        self.counters["dropped"] += n
        self.counters[f"dropped:{reason}"] += n
        k = self.counters[f"dropped:{reason}"]
        if k - n < LOG_FIRST or (k - n) // LOG_EVERY != k // LOG_EVERY:
            log.warning("dropped HA datagram (%s, %d so far): %s", reason, k, detail)


def open_endpoint(bind: Address, charon: Address, handler: Handler,
                  lookup: Lookup | None = None,
                  wanted: Mapping[int, frozenset[str]] | None = None,
                  named: frozenset[int] = frozenset()) -> HaEndpoint:
    """Bind and connect the HA socket, start reading it on the running loop."""
    sock = socket.socket(procudp.family(bind), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        _grow_rcvbuf(sock)
        sock.bind(bind)
        sock.connect(charon)
    except OSError:
        sock.close()
        raise
    ep = HaEndpoint(sock, charon, handler, lookup or (lambda: procudp.sockets_at(charon)),
                    wanted=wanted, named=named)
    ep.start(asyncio.get_running_loop())
    return ep


def _grow_rcvbuf(sock: socket.socket) -> None:
    """Room for a burst from charon (a resync, a mass rekey) while the loop is busy."""
    grow_rcvbuf(sock, RCVBUF)
