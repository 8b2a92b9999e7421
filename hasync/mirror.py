"""What flows between hasync and the local charon, decided without IO: which HA datagrams go
into the journal, when a batch is due, what a backup's charon is sent, and the heartbeat
that keeps it passive.

Rules: pure state machines; time is an argument (`now`). One batch is in flight at a time,
so batches commit in the order charon sent their datagrams; a failed batch is retried first.
Charon's ha plugin yields segment N to its peer in any heartbeat conflict when N % 2 differs
from its node bit (strcmp(local, remote) > 0, ha_plugin.c and ha_segments.c handle_status() at
5.9.8): with local 127.0.0.1 < remote 127.0.0.2 that is every odd segment, so a STATUS from
hasync keeps segment 1 passive and hasync supports segment_count = 1 (docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ha import HaMessage, MessageType, encode

JOURNALED = frozenset({MessageType.IKE_ADD, MessageType.IKE_UPDATE, MessageType.IKE_MID_INITIATOR,
                       MessageType.IKE_MID_RESPONDER, MessageType.IKE_DELETE,
                       MessageType.CHILD_ADD, MessageType.CHILD_DELETE, MessageType.IKE_IV})
HEARTBEAT_S = 1.0  # charon's own heartbeat_delay; its timeout is 2.1 s
# Datagrams waiting for Raft at most (issue 17 finding 7): ~60 MB of typical HA datagrams,
# minutes of a busy gateway's stream; past it the node drops and resyncs (node.py, JournalGap)
MAX_BACKLOG = 100_000


@dataclass
class Batcher:
    """Collects journaled datagrams into batches: full, or `max_delay` after the first."""

    max_messages: int = 256
    max_delay: float = 0.005
    max_backlog: int = MAX_BACKLOG
    pending: list[bytes] = field(default_factory=list)
    first_at: float | None = None
    in_flight: list[bytes] | None = None
    retry_at: float | None = None

    def add(self, raw: bytes, now: float) -> bool:
        """Queue one datagram; False (not queued) once `max_backlog` are waiting."""
        if self.backlog >= self.max_backlog:
            return False
        if not self.pending:
            self.first_at = now
        self.pending.append(raw)
        return True

    def next_batch(self, now: float) -> list[bytes] | None:
        """The batch to submit now, if one is due and none is in flight."""
        if self.in_flight is not None:
            if self.retry_at is None or now < self.retry_at:
                return None
            self.retry_at = None
            return self.in_flight
        if not self.pending or self.first_at is None:
            return None
        if len(self.pending) < self.max_messages and now - self.first_at < self.max_delay:
            return None
        batch, self.pending = self.pending[:self.max_messages], self.pending[self.max_messages:]
        self.first_at = now if self.pending else None
        self.in_flight = batch
        return batch

    def done(self, ok: bool, now: float, backoff: float = 0.2) -> None:
        """The in-flight batch committed (ok) or failed (retried after `backoff`)."""
        if ok:
            self.in_flight, self.retry_at = None, None
        else:
            self.retry_at = now + backoff

    def wake_at(self) -> float | None:
        """When next_batch may next return something, if known."""
        if self.in_flight is not None:
            return self.retry_at
        if self.pending and self.first_at is not None:
            return self.first_at + self.max_delay
        return None

    @property
    def backlog(self) -> int:
        """Datagrams not yet committed."""
        return len(self.pending) + len(self.in_flight or ())


def status_message(version: int, segments: int) -> bytes:
    """A STATUS heartbeat claiming segments 1..segments (ha_segments.c send_status())."""
    attrs = [("segment", i) for i in range(1, segments + 1)]
    return encode(HaMessage.build(version, MessageType.STATUS, *attrs))


def resync_message(version: int, segments: int) -> bytes:
    """A RESYNC for segments 1..segments: charon re-sends every cached IKE_SA of them and
    rekeys their CHILD_SAs (ha_dispatcher.c process_resync(), ha_cache.c resync() and
    rekey_segment() at 5.9.8), as it does for a peer that restarted (request_resync())."""
    attrs = [("segment", i) for i in range(1, segments + 1)]
    return encode(HaMessage.build(version, MessageType.RESYNC, *attrs))


def claimed_segments(msg: HaMessage) -> set[int]:
    """The segments a STATUS or SEGMENT_TAKE from charon says it holds or takes."""
    return {int(v) for v in msg.get_all("segment")}  # type: ignore[call-overload]


@dataclass
class Heartbeat:
    """Decides when to send charon a STATUS: every HEARTBEAT_S while this node mirrors."""

    last_sent: float | None = None

    def due(self, mirroring: bool, now: float) -> bool:
        """Whether to send a heartbeat now; a master sends none, so its charon takes over."""
        if not mirroring:
            self.last_sent = None
            return False
        if self.last_sent is None or now - self.last_sent >= HEARTBEAT_S:
            self.last_sent = now
            return True
        return False
