"""The sequence guard's record types, shared by its rules, journal entries, kernel adapter and
driver (no logic, no imports from the rest of the guard, so none of them imports another back).

Rules: plain frozen data; no key material anywhere (addresses, SPIs, counters, a rate); an SA
is named the way XFRM names it, (destination address, SPI, IPPROTO_*); 64-bit counters for
ESN SAs (torvalds/linux include/uapi/linux/xfrm.h, struct xfrm_replay_state_esn). A kernel SA
also keeps its XFRM mark (`xfrm_mark`, route-based tunnels: swanctl mark_in/mark_out), which
every NEWAE for it must carry: net/xfrm/xfrm_state.c __xfrm_state_lookup() skips an SA unless
(request mark & SA mask) == SA value. It is not part of the key: XFRM names an SA without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ..xfrm.structs import Mark

SaKey = tuple[str, int, int]  # (destination address, SPI, IPPROTO_*): how XFRM names an SA
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class KernelSa:
    """One SA's replay state as the kernel reports it (64-bit counters for ESN SAs)."""

    key: SaKey
    esn: bool
    oseq: int
    seq: int
    bitmap: tuple[int, ...]  # non-ESN: (bitmap,); ESN: the bmp words
    window: int  # replay window in packets
    reqid: int = 0  # charon keeps a CHILD_SA's reqid across rekeys
    xfrm_mark: Mark | None = None  # XFRMA_MARK (value, mask); not the journal's outbound mark


class SeqRecord(NamedTuple):
    """What the journal holds per SA; no key material. A named tuple: a claim makes one per
    SA in its apply, on every node, inside the promotion's barrier (D278)."""

    key: SaKey
    mark: int  # outbound: `node` sends nothing above this before a higher mark commits
    seq: int  # inbound: highest sequence number accepted when journaled
    bitmap: tuple[int, ...]
    rate: float  # peak outbound packets/s the mark was sized from
    node: str  # the master that journaled it
    ts: float  # wall-clock time of journaling (shown in status, used for pruning)
    epoch: int = 0  # the sender epoch it was accepted in (journal/machine.py, CLAIM)


@dataclass(frozen=True, slots=True)
class Write:
    """One replay-state write: set the SA to these counters."""

    sa: KernelSa
    oseq: int
    seq: int
    bitmap: tuple[int, ...]

    @property
    def jump(self) -> int:
        """How far the outbound counter moves."""
        return self.oseq - self.sa.oseq


@dataclass
class WriteResult:
    """What a batch of writes did: how many landed, and each refusal's text."""

    done: int = 0
    errors: list[str] = field(default_factory=list)
