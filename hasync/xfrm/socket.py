"""Thin synchronous adapter on a NETLINK_XFRM socket: dumps, replay state, async events.

Rules: all I/O of hasync.xfrm lives here and all encoding in `hasync.xfrm.codec`; one raw
`socket(AF_NETLINK, SOCK_RAW, NETLINK_XFRM)` per object, bound to a kernel-chosen port,
used by one thread at a time; every request carries its own sequence number and only
unicast answers with that number count; multicast messages (source group != 0) go to the
event queue and nowhere else; a kernel error, a missing answer within `timeout` seconds
or a lost event raises `XfrmError` naming the operation and the SA; bytes that do not
decode raise `MalformedMessage`; a bad argument raises `XfrmUsageError`. The caller runs
the process in the network namespace whose SAs it means. Kernel behaviour cited from
torvalds/linux net/xfrm/xfrm_user.c and net/netlink/af_netlink.c.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from types import TracebackType
from typing import Any, TypeVar

from hasync.xfrm.codec import (
    getae_request,
    getpolicy_dump_request,
    getsa_dump_request,
    newae_request,
    parse_messages,
)
from hasync.xfrm.enums import (
    IPPROTO_ESP,
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_XFRM,
    SOL_NETLINK,
    XFRMNLGRP_AEVENTS,
    MessageType,
    NlmFlag,
)
from hasync.xfrm.errors import XfrmError, XfrmUsageError
from hasync.xfrm.model import Aevent, Message, PolicyInfo, SaInfo
from hasync.xfrm.netlink import Done, NetlinkError
from hasync.xfrm.replayrows import ReplayRow, parse_replay_rows
from hasync.xfrm.structs import Mark, ReplayState, ReplayStateEsn, SaId, family_of

from ..sockbuf import grow_rcvbuf

RECV_SIZE = 1 << 16  # af_netlink caps a dump skb near 32 KiB; MSG_TRUNC is checked anyway
EVENT_RCVBUF = 4 << 20  # receive queue asked for by subscribe_aevents()
DUMP_ATTEMPTS = 3  # a dump answered with NLM_F_DUMP_INTR is retried this often

Address = IPv4Address | IPv6Address | str
_T = TypeVar("_T")


def sa_id(daddr: Address, spi: int, proto: int = IPPROTO_ESP, family: int | None = None) -> SaId:
    """The SaId of (dst, SPI, proto); `family` defaults to the address's own."""
    try:
        addr = daddr if isinstance(daddr, IPv4Address | IPv6Address) else ip_address(daddr)
    except ValueError as exc:
        raise XfrmUsageError(f"SA destination: {exc}") from None
    if family is not None and family != family_of(addr):
        raise XfrmUsageError(f"family {family} does not match destination {addr}")
    if not isinstance(spi, int) or not 0 <= spi <= 0xFFFFFFFF:
        raise XfrmUsageError(f"SPI {spi!r} is not a u32")
    return SaId(addr, spi, proto, family_of(addr))


class XfrmSocket:
    """One NETLINK_XFRM socket: SA/policy dumps, GETAE/NEWAE per SA, replay events."""

    def __init__(self, *, timeout: float = 5.0) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_XFRM)
        try:
            sock.bind((0, 0))
            for option in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
                # error strings and short ACKs; a kernel without them is fine too
                with contextlib.suppress(OSError):
                    sock.setsockopt(SOL_NETLINK, option, 1)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.timeout = timeout
        self._seq = 0
        self._events: collections.deque[Aevent] = collections.deque()
        self._lost = False
        self.subscribed = False

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._sock.close()

    def fileno(self) -> int:
        """The socket's descriptor, for select()/poll() on events."""
        return self._sock.fileno()

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def dump_sas(self) -> list[SaInfo]:
        """Every SA of this network namespace (no key material)."""
        return [m.body for m in self._dump(getsa_dump_request, "GETSA dump")
                if isinstance(m.body, SaInfo)]

    def dump_replay_rows(self) -> list[ReplayRow]:
        """Every SA's replay state as the sequence guard reads it (`replayrows`), again if
        the kernel flagged the dump interrupted."""
        return self._dump_again_if_interrupted("GETSA dump", self._dump_rows)

    def _dump_rows(self, seq: int) -> tuple[list[ReplayRow], bool]:
        """One GETSA dump read by `parse_replay_rows`: (rows, interrupted)."""
        op = "GETSA dump"
        rows: list[ReplayRow] = []
        interrupted = False

        def take(data: bytes) -> tuple[bool, bool]:
            nonlocal interrupted
            part = parse_replay_rows(data, seq)
            rows.extend(part.rows)
            interrupted |= part.interrupted
            if part.error:
                raise XfrmError(-part.error, op, detail=part.message)
            return part.answered, part.done

        self._exchange(getsa_dump_request(seq=seq), op, None, take)
        return rows, interrupted

    def dump_policies(self) -> list[PolicyInfo]:
        """Every policy of this network namespace."""
        return [m.body for m in self._dump(getpolicy_dump_request, "GETPOLICY dump")
                if isinstance(m.body, PolicyInfo)]

    def get_replay(self, daddr: Address, spi: int, proto: int = IPPROTO_ESP,
                   family: int | None = None, *, mark: Mark | None = None) -> Aevent:
        """The SA's replay state, lifetime counters and event thresholds (GETAE)."""
        sa = sa_id(daddr, spi, proto, family)
        seq = self._next_seq()
        for msg in self._transact(getae_request(sa, seq=seq, mark=mark), seq, "GETAE", sa):
            if msg.type == MessageType.NEWAE and isinstance(msg.body, Aevent):
                return msg.body
        raise XfrmError(errno.EPROTO, "GETAE", sa=sa, detail="answer without NEWAE")

    def set_replay(self, daddr: Address, spi: int, proto: int = IPPROTO_ESP,
                   family: int | None = None, *, seq: int, oseq: int, bitmap: int,
                   mark: Mark | None = None) -> None:
        """Overwrite a non-ESN SA's replay state (NEWAE + NLM_F_REPLACE), ACK checked."""
        self._newae(sa_id(daddr, spi, proto, family), "NEWAE replay", mark=mark,
                    replay=ReplayState(oseq=oseq, seq=seq, bitmap=bitmap))

    def set_replay_esn(self, daddr: Address, spi: int, proto: int = IPPROTO_ESP,
                       family: int | None = None, *, state: ReplayStateEsn,
                       mark: Mark | None = None) -> None:
        """Overwrite an ESN SA's replay state; bmp_len must equal the SA's own."""
        self._newae(sa_id(daddr, spi, proto, family), "NEWAE replay_esn", mark=mark,
                    replay_esn=state)

    def set_thresholds(self, daddr: Address, spi: int, proto: int = IPPROTO_ESP,
                       family: int | None = None, *, replay_maxdiff: int | None = None,
                       replay_maxage: int | None = None, mark: Mark | None = None) -> None:
        """Set when the SA reports replay events: every `replay_maxdiff` packets, or after
        `replay_maxage` jiffies with changes (0 = no timer; GETAE shows it in 100 ms)."""
        self._newae(sa_id(daddr, spi, proto, family), "NEWAE thresholds", mark=mark,
                    replay_maxdiff=replay_maxdiff, replay_maxage=replay_maxage)

    def subscribe_aevents(self, *, rcvbuf: int = EVENT_RCVBUF) -> None:
        """Join XFRMNLGRP_AEVENTS; the kernel makes replay events only while someone has."""
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, XFRMNLGRP_AEVENTS)
        except OSError as exc:
            raise XfrmError(exc.errno or errno.EIO, "subscribe to XFRMNLGRP_AEVENTS") from exc
        grow_rcvbuf(self._sock, rcvbuf)  # past net.core.rmem_max as root, else up to it
        self.subscribed = True

    def read_events(self, timeout: float) -> list[Aevent]:
        """The replay events queued or arriving within `timeout` seconds (maybe none).

        Raises XfrmError(ENOBUFS) once after the receive queue overflowed: events were
        lost, so the caller must re-read every SA it follows with get_replay().
        """
        if not self.subscribed:
            raise XfrmUsageError("read_events() before subscribe_aevents()")
        deadline = time.monotonic() + max(timeout, 0.0)
        while not self._events and not self._lost:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._receive(remaining, "read_events", None)
        while self._receive(0.0, "read_events", None) is not None:
            pass  # drain what is already queued, without waiting
        if self._lost:
            self._lost = False
            raise XfrmError(errno.ENOBUFS, "read_events",
                            detail="receive queue overflowed; events were lost")
        events = list(self._events)
        self._events.clear()
        return events

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    def _newae(self, sa: SaId, op: str, **values: Any) -> None:
        seq = self._next_seq()
        self._transact(newae_request(sa, seq=seq, **values), seq, op, sa, until_ack=True)

    def _dump(self, build: Callable[..., bytes], op: str) -> list[Message]:
        """A whole dump (NLMSG_DONE included), again if the kernel flagged it interrupted."""
        def once(seq: int) -> tuple[list[Message], bool]:
            msgs = self._transact(build(seq=seq), seq, op, None, dump=True)
            return msgs, any(m.flags & NlmFlag.DUMP_INTR for m in msgs)

        return self._dump_again_if_interrupted(op, once)

    def _dump_again_if_interrupted(self, op: str,
                                   once: Callable[[int], tuple[_T, bool]]) -> _T:
        """`once(seq)` with a fresh sequence number until it was not interrupted (the SA table
        changed during the dump), at most DUMP_ATTEMPTS times."""
        for _ in range(DUMP_ATTEMPTS):
            result, interrupted = once(self._next_seq())
            if not interrupted:
                return result
        raise XfrmError(errno.EAGAIN, op, detail=f"interrupted {DUMP_ATTEMPTS} times")

    def _transact(self, request: bytes, seq: int, op: str, sa: SaId | None, *,
                  dump: bool = False, until_ack: bool = False) -> list[Message]:
        """Send one request, gather the unicast answers carrying `seq` until it is done."""
        answers: list[Message] = []

        def take(data: bytes) -> tuple[bool, bool]:
            answered = False
            for msg in parse_messages(data):
                if msg.seq != seq:
                    continue  # the answer to an earlier request that timed out
                answered = True
                if isinstance(msg.body, NetlinkError):
                    if not msg.body.is_ack:
                        raise XfrmError(msg.body.errno, op, sa=sa, detail=msg.body.message)
                    return True, True
                if isinstance(msg.body, Done):
                    if msg.body.error:
                        raise XfrmError(-msg.body.error, op, sa=sa)
                    answers.append(msg)
                    return True, True
                answers.append(msg)
                if not dump and not until_ack:
                    return True, True
            return answered, False

        self._exchange(request, op, sa, take)
        return answers

    def _exchange(self, request: bytes, op: str, sa: SaId | None,
                  take: Callable[[bytes], tuple[bool, bool]]) -> None:
        """Send one request and hand each unicast datagram to `take`, which says whether it
        answered the request and whether that ended it. The timeout runs from the request or
        the last answer: a dump of thousands of SAs on a busy CPU may take longer in all, and
        only a kernel that stopped answering times out."""
        try:
            self._sock.send(request)
        except OSError as exc:
            raise XfrmError(exc.errno or errno.EIO, op, sa=sa) from exc
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise XfrmError(errno.ETIMEDOUT, op, sa=sa,
                                detail=f"no answer within {self.timeout} s")
            data = self._receive_unicast(remaining, op, sa)
            if not data:
                continue
            answered, done = take(data)
            if done:
                return
            if answered:
                deadline = time.monotonic() + self.timeout  # it is still answering

    def _receive(self, timeout: float, op: str, sa: SaId | None) -> list[Message] | None:
        """The unicast messages of one datagram (multicast events are queued instead);
        None when nothing arrived within `timeout` (0: do not wait)."""
        data = self._receive_unicast(timeout, op, sa)
        return None if data is None else parse_messages(data) if data else []

    def _receive_unicast(self, timeout: float, op: str, sa: SaId | None) -> bytes | None:
        """One unicast datagram; b"" after a multicast one (its events are queued) or a lost
        one; None when nothing arrived within `timeout`."""
        try:
            self._sock.settimeout(timeout)
            data, _, flags, address = self._sock.recvmsg(RECV_SIZE)
        except (TimeoutError, BlockingIOError):
            return None
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the queue overflowed: something was dropped
                self._lost = True
                return b""
            raise XfrmError(exc.errno or errno.EIO, op, sa=sa) from exc
        if flags & socket.MSG_TRUNC:
            raise XfrmError(errno.EMSGSIZE, op, sa=sa, detail="datagram truncated")
        if address[1]:  # nl_groups of the source: a multicast event, never an answer
            self._events.extend(m.body for m in parse_messages(data)
                                if m.type == MessageType.NEWAE and isinstance(m.body, Aevent))
            return b""
        return data
