"""What flows between hasync and the local charon, decided without IO: which HA datagrams go
into the journal, what a backup's charon is sent, and the heartbeat that keeps it passive.

Rules: pure state machines; time is an argument (`now`). Batches go through pipeline.py,
which keeps charon's order across several in flight.
Charon's ha plugin yields segment N to its peer in any heartbeat conflict when N % 2 differs
from its node bit (strcmp(local, remote) > 0, ha_plugin.c and ha_segments.c handle_status() at
5.9.8): with local 127.0.0.1 < remote 127.0.0.2 that is every odd segment, so a STATUS from
hasync keeps segment 1 passive and hasync supports segment_count = 1 (docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ha import HaMessage, MessageType, encode

JOURNALED = frozenset({MessageType.IKE_ADD, MessageType.IKE_UPDATE, MessageType.IKE_MID_INITIATOR,
                       MessageType.IKE_MID_RESPONDER, MessageType.IKE_DELETE,
                       MessageType.CHILD_ADD, MessageType.CHILD_DELETE, MessageType.IKE_IV})
# What NodeCore.on_ha() and the daemon's _on_ha read of a journaled datagram: its type, and
# the IKE_SA of an IKE_MID_RESPONDER; the endpoint only checks the rest (ha.decode_only).
READ_ON_HA: dict[int, frozenset[str]] = {
    **{t: frozenset() for t in JOURNALED}, MessageType.IKE_MID_RESPONDER: frozenset({"ike_id"})}
HEARTBEAT_S = 1.0  # charon's own heartbeat_delay; its timeout is 2.1 s
# Datagrams waiting for Raft at most (issue 17 finding 7): ~60 MB of typical HA datagrams,
# minutes of a busy gateway's stream; past it the node drops and resyncs (node.py, JournalGap)
MAX_BACKLOG = 100_000


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
