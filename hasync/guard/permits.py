"""What this node may send: its sender epoch and, per SA, the permit its accepted marks make.

Rules: pure (no IO, no clocks). A node holds permits only as the current sender of one epoch
(journal `SeqLog.sender`, issue 16): `start(epoch)` opens a term with nothing held; a record
becomes a permit (lo, hi] only when the entry carrying it was committed and ACCEPTED in that
same epoch (`accepted`), lo being what the master planned when it submitted the record
(`planned`) and hi the accepted mark. `drop()` ends the term and asks for a kernel-wide revoke
(`revoke`), which the driver clears once the fence did it. `pending` holds the permits not yet
in the kernel; a grant that fails leaves them pending (the fence keeps the older ones).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..fence import port as fenceport  # a module: hasync.fence.port imports guard.records
from .entries import SeqEntry
from .records import SaKey
from .rules import Held


@dataclass
class SenderTerm:
    """This node's term as sender: its epoch, what it holds and what the fence still lacks."""

    epoch: int | None = None
    held: dict[SaKey, Held] = field(default_factory=dict)
    pending: dict[SaKey, fenceport.Permit] = field(default_factory=dict)
    planned: dict[SaKey, tuple[int, bool]] = field(default_factory=dict)  # key -> (lo, esn)
    revoke: bool = True  # a start grants nothing: the fence is emptied first

    def start(self, epoch: int) -> None:
        """This node's claim made it the sender of `epoch`: a term with nothing held yet."""
        self.epoch = epoch
        self.held.clear()
        self.pending.clear()
        self.planned.clear()

    def drop(self) -> None:
        """No longer the sender (or about to claim anew): nothing may stay permitted."""
        self.start(0)
        self.epoch = None
        self.revoke = True

    def plan(self, lows: dict[SaKey, int], esn: dict[SaKey, bool]) -> None:
        """Records are submitted: the lo each one's permit will have once accepted."""
        for key, lo in lows.items():
            self.planned[key] = (lo, esn.get(key, False))

    def accepted(self, entry: SeqEntry) -> list[fenceport.Permit]:
        """A committed entry was accepted: the permits it makes (none from another epoch)."""
        if self.epoch is None or entry.epoch != self.epoch:
            return []
        out = []
        for rec in entry.records:
            lo, esn = self.planned.get(rec.key, (rec.mark, False))
            old = self.held.get(rec.key)
            if old is not None:
                lo = old.lo
            held = Held(lo, max(rec.mark, old.hi if old else rec.mark))
            self.held[rec.key] = held
            if old is None or held.hi > old.hi:
                permit = fenceport.Permit(rec.key, held.lo, held.hi, esn)
                self.pending[rec.key] = permit
                out.append(permit)
        for key in entry.gone:
            self.forget([key])
        return out

    def granted(self, permits: Iterable[fenceport.Permit]) -> None:
        """The fence holds these permits now (later ones for the same SA stay pending)."""
        for p in permits:
            if self.pending.get(p.key) == p:
                del self.pending[p.key]

    def forget(self, keys: Iterable[SaKey]) -> None:
        """SAs gone: nothing held or planned for them."""
        for key in keys:
            self.held.pop(key, None)
            self.pending.pop(key, None)
            self.planned.pop(key, None)


__all__ = ["SenderTerm"]
