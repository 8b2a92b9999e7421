"""What the guard uses of the send fence, and the values it passes (no IO here).

Rules: a `Permit` is the whole permission for one SA: the kernel lets the SA's outbound ESP
(and ESP-in-UDP) through only with a sequence number in (lo, hi]; anything else of that SA, and
every ESP packet of an SA with no permit, is dropped and counted. A permit is granted only for a
mark that Raft has committed and the journal accepted from this node as the current sender;
`revoke_all()` leaves nothing permitted. Failures are `FenceError` (the nft command or the
kernel refused); a failed grant leaves the previous permits in force (fail-closed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from ..guard.records import SaKey


class FenceError(RuntimeError):
    """The fence could not be read or changed (nft missing, refused, or timed out)."""


class Permit(NamedTuple):
    """SA `key` may send sequence numbers in (lo, hi]; 64-bit values for ESN SAs. A named
    tuple: made, compared and hashed in C, a promotion makes one per SA (D278)."""

    key: SaKey
    lo: int
    hi: int
    esn: bool


@dataclass(frozen=True)
class FenceCounts:
    """Packets the fence dropped: per SA it knows, and for SAs with no permit ever granted."""

    per_sa: dict[SaKey, int] = field(default_factory=dict)
    unknown: int = 0


class FencePort(Protocol):
    """The fence as the guard's driver uses it (`nft.NftFence`; tests inject fakes)."""

    async def setup(self) -> None:
        """Create the fence if missing and revoke every permit (a start grants nothing)."""
        ...

    async def grant(self, permits: Iterable[Permit], counters: bool = True) -> None:
        """Replace each SA's permit with the given one, all in one kernel transaction; without
        `counters`, the SAs' drop counters wait for the next grant or `counts()` (D266)."""
        ...

    async def prepare(self, permits: Iterable[Permit]) -> None:
        """Make these permits ready, permitting nothing: a later grant of the same permit has
        nothing left to write for it (a backup's standby, D262, D265)."""
        ...

    async def revoke_all(self) -> None:
        """Leave no SA permitted (this node is not, or no longer, the sender)."""
        ...

    async def forget(self, keys: Iterable[SaKey]) -> None:
        """SAs gone from the kernel: drop their permits and counters."""
        ...

    async def counts(self) -> FenceCounts:
        """What the fence dropped so far."""
        ...

    def close(self) -> None:
        """Release what the fence holds in this process (the kernel's rules stay)."""
        ...
