"""What this node may send: its sender epoch and, per SA, the permit its accepted marks make.

Rules: pure (no IO, no clocks). A node holds permits only as the current sender of one epoch
(journal `SeqLog.sender`, issue 16): `start(epoch)` opens a term with nothing held; a record
becomes a permit (lo, hi] only when the entry carrying it was committed and ACCEPTED in that
same epoch (`accepted`), lo being what the master planned when it submitted the record
(`planned`) and hi the accepted mark. `drop()` ends the term and asks for a kernel-wide revoke
(`revoke`), which the driver clears once the fence did it. `pending` holds the permits not yet
in the kernel; a grant that fails leaves them pending (the fence keeps the older ones).
An ESN SA carries only the low 32 bits of its number on the wire, and the fence matches those
(hasync/fence/rules.py: at most 2^31 numbers ending at hi): a counter 2^31 past hi would wrap
into the permit's low-32 window. So once a read finds an ESN SA's counter ESN_STOP (2^30) past
its permit's hi, its permit is emptied (`stop_wrapping`: (hi, hi], nothing passes) until an
accepted mark lies within ESN_STOP of the counter again (docs/takeover.md, Limits).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..fence import port as fenceport  # a module: hasync.fence.port imports guard.records
from .entries import SeqEntry
from .records import KernelSa, SaKey
from .rules import Held

ESN_STOP = 1 << 30  # an ESN SA's counter this far past its permit's hi: the permit is emptied


@dataclass
class SenderTerm:
    """This node's term as sender: its epoch, what it holds and what the fence still lacks."""

    epoch: int | None = None
    held: dict[SaKey, Held] = field(default_factory=dict)
    pending: dict[SaKey, fenceport.Permit] = field(default_factory=dict)
    planned: dict[SaKey, tuple[int, bool]] = field(default_factory=dict)  # key -> (lo, esn)
    revoke: bool = True  # a start grants nothing: the fence is emptied first
    stopped: dict[SaKey, int] = field(default_factory=dict)  # ESN key -> counter that stopped it

    def start(self, epoch: int) -> None:
        """This node's claim made it the sender of `epoch`: a term with nothing held yet."""
        self.epoch = epoch
        self.held.clear()
        self.pending.clear()
        self.planned.clear()
        self.stopped.clear()

    def drop(self) -> None:
        """No longer the sender (or about to claim anew): nothing may stay permitted."""
        self.start(0)
        self.epoch = None
        self.revoke = True

    def plan(self, lows: dict[SaKey, int], esn: dict[SaKey, bool]) -> None:
        """Records are submitted: the lo each one's permit will have once accepted."""
        for key, lo in lows.items():
            self.planned[key] = (lo, esn.get(key, False))

    def hold(self, held: dict[SaKey, Held], epoch: int) -> None:
        """The claim's own marks (D261): permits held from the claim of `epoch`, pending for
        the fence (non-ESN form: `rules.claim_marks` grants none past 2^32 - 1, where both
        match alike); none once the term has ended or moved on (deposed meanwhile)."""
        if self.epoch != epoch:
            return
        self.held.update(held)
        permit = fenceport.Permit
        self.pending.update({key: permit(key, h.lo, h.hi, False) for key, h in held.items()})

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
            if held.hi + ESN_STOP < self.stopped.get(rec.key, -1):
                continue  # still too far behind the counter: the permit stays empty
            self.stopped.pop(rec.key, None)
            if old is None or held.hi > old.hi:
                permit = fenceport.Permit(rec.key, held.lo, held.hi, esn)
                self.pending[rec.key] = permit
                out.append(permit)
        for key in entry.gone:
            self.forget([key])
        return out

    def stop_wrapping(self, sas: Iterable[KernelSa]) -> list[SaKey]:
        """Empty the permit of every held ESN SA whose counter ran ESN_STOP past its hi (before
        its low 32 bits can wrap into the permit); the SAs newly stopped."""
        out = []
        for sa in sas:
            held = self.held.get(sa.key)
            if not sa.esn or held is None or sa.oseq <= held.hi + ESN_STOP:
                continue
            if sa.key not in self.stopped:
                out.append(sa.key)
                self.pending[sa.key] = fenceport.Permit(sa.key, held.hi, held.hi, True)
            self.stopped[sa.key] = sa.oseq
        return out

    def granted(self, permits: Iterable[fenceport.Permit]) -> None:
        """The fence holds these permits now (later ones for the same SA stay pending)."""
        pending = self.pending
        for p in permits:
            q = pending.get(p.key)
            if q is p or q == p:  # the same object, as a grant of `pending` hands them back
                del pending[p.key]

    def forget(self, keys: Iterable[SaKey]) -> None:
        """SAs gone: nothing held or planned for them."""
        for key in keys:
            self.held.pop(key, None)
            self.pending.pop(key, None)
            self.planned.pop(key, None)
            self.stopped.pop(key, None)


__all__ = ["ESN_STOP", "SenderTerm"]
