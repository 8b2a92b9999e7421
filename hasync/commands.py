"""The commands NodeCore returns (node.py): frozen dataclasses the adapter (effects.py)
carries out, in order.

Rules: plain data, no behaviour; each docstring says what the adapter does and which event
answers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SubmitBatch:
    """Seal these datagrams as batch `seq` of `stream` and hand it to Raft; answer with
    `on_committed` (pipeline.py)."""

    datagrams: tuple[bytes, ...]
    stream: int = 0
    seq: int = 0


@dataclass(frozen=True)
class SendToCharon:
    """Send one datagram to the local charon now (the STATUS heartbeat)."""

    datagram: bytes


@dataclass(frozen=True)
class FeedCharon:
    """Queue datagrams for the local charon behind those already queued (feed.py's pace)."""

    datagrams: tuple[bytes, ...]


@dataclass(frozen=True)
class CharonFifo:
    """Write one command to charon's HA control FIFO (ha_ctl.c: +N, -N, *N)."""

    command: str


@dataclass(frozen=True)
class StartPromotion:
    """Run the sequence guard's promotion (it calls back `on_activate` at its end)."""


@dataclass(frozen=True)
class CancelPromotion:
    """Cancel a promotion under way, if any."""


@dataclass(frozen=True)
class StartReplay:
    """Queue the journal's whole replay plan for charon; answer with `on_replayed`."""

    generation: int = 0  # which replay: one that charon's restart abandoned is ignored
    clean: bool = True  # charon may hold some of it: delete each IKE_SA first (plans.py)


@dataclass(frozen=True)
class ClearFeed:
    """Drop what is queued for charon (it restarted: a replay into it starts over)."""


@dataclass(frozen=True)
class HandOffLeadership:
    """Ask Raft to move its leadership to another voter (handoff.py)."""


@dataclass(frozen=True)
class Report:
    """Replicate this node's report (VRRP role, Raft role, applied index; no secrets)."""

    info: dict[str, Any]


@dataclass(frozen=True)
class Wake:
    """The next deadline moved earlier: run `tick` by `wake_at()`."""


Command = (SubmitBatch | SendToCharon | FeedCharon | CharonFifo | StartPromotion
           | CancelPromotion | StartReplay | ClearFeed | Report | Wake | HandOffLeadership)
