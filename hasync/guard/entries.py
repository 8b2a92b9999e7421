"""The sequence guard's journal entries: the master's per-SA marks and inbound replay state.

Rules: an entry payload is msgpack `[format, origin, epoch, ts, records, gone]` with explicit
limits, checked when packing and when unpacking (violations raise `EntryError`, like ha
batches); records carry no key material (addresses, SPIs, counters, a rate). One node at a
time is the sender, `SeqLog.sender = (node, epoch)`: a CHILD_SA's marks may come only from it.
A claim (`SeqLog.claim(node, seen)`, a CLAIM entry) makes `node` the sender at the next epoch
only if the sender is still as the claimant saw it, `seen = (epoch, life)`: no claim since, and
no accepted entry from the sender since (`life` counts them; a master sends an empty entry at
least every BEACON_S). A claim that waited out a partition in a queue thus cannot depose a
sender that kept committing (D207). A claim that carries a reserve also raises every record's
mark to the new term's first (D261): those marks are the claimant's, accepted with the claim;
they are made on the first look at the records after the claim (D281), so the claim's apply,
the promotion's barrier, does no work per SA. `SeqLog.apply()` accepts an entry only if its
(origin, epoch) is the current sender, else it changes nothing and is counted as rejected.
It never raises on a valid entry; marks and inbound counters only move forward per SA, so an entry
applied twice or late changes nothing. Pure: no IO, no clocks.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import msgpack

from ..journal.seal import MAX_ENTRY, MAX_ORIGIN, EntryError
from .records import U64_MAX, SaKey, SeqRecord
from .rules import Reserve, claim_marks

SEQ_FORMAT = 2  # 2: the entry carries its sender epoch (issue 16)
MAX_EPOCH = U64_MAX
ACCEPTED = "accepted"  # what a SEQ entry's replicated apply returns (pysyncobj: `result`)
REJECTED = "rejected"  # not from the current sender: nothing changed
MAX_RECORDS = 512  # records (or gone keys) per entry
MAX_BITMAP_WORDS = 128  # 4096-packet ESN replay window (strongSwan's replay_window max is larger,
#                         but no one runs it; a longer bitmap is refused, not truncated)


@dataclass(frozen=True, slots=True)
class SeqEntry:
    """One entry: records and forgotten SA keys from `origin`, made as the sender of `epoch`,
    at wall time `ts`."""

    origin: str
    ts: float
    records: tuple[SeqRecord, ...]
    gone: tuple[SaKey, ...] = ()
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class SeqApplied:
    """What applying one entry did: accepted (from the sender) and whether a backup's targets
    moved (an outbound mark rose or a new SA came)."""

    accepted: bool
    moved: bool = False


def _key(item: Any) -> SaKey:
    """Check a [daddr, spi, proto] triple."""
    if not isinstance(item, list) or len(item) != 3:
        raise EntryError("an SA key is [daddr, spi, proto]")
    daddr, spi, proto = item
    if not isinstance(daddr, str) or len(daddr) > 45:
        raise EntryError("daddr must be an address string")
    try:
        ipaddress.ip_address(daddr)
    except ValueError:
        raise EntryError(f"daddr {daddr!r} is not an IP address") from None
    if type(spi) is not int or not 0 <= spi <= 0xFFFFFFFF:
        raise EntryError("spi must be a u32")
    if type(proto) is not int or not 0 <= proto <= 255:
        raise EntryError("proto must be a u8")
    return (daddr, spi, proto)


def _counter(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= U64_MAX:
        raise EntryError(f"{what} must be a u64")
    return value


def _record(item: Any, origin: str, epoch: int) -> SeqRecord:
    """Check one [key, mark, seq, bitmap, rate, ts] record."""
    if not isinstance(item, list) or len(item) != 6:
        raise EntryError("a record is [key, mark, seq, bitmap, rate, ts]")
    key, mark, seq, bitmap, rate, ts = item
    if not isinstance(bitmap, list) or len(bitmap) > MAX_BITMAP_WORDS or any(
            type(w) is not int or not 0 <= w <= 0xFFFFFFFF for w in bitmap):
        raise EntryError(f"bitmap must be up to {MAX_BITMAP_WORDS} u32 words")
    for value, what in ((rate, "rate"), (ts, "ts")):
        if not isinstance(value, float) or not math.isfinite(value) or value < 0:
            raise EntryError(f"{what} must be a finite non-negative float")
    return SeqRecord(_key(key), _counter(mark, "mark"), _counter(seq, "seq"), tuple(bitmap),
                     rate, origin, ts, epoch)


def pack_seq(entry: SeqEntry) -> bytes:
    """Pack an entry payload (one without records or gone keys is a sender's beacon, D207);
    raise EntryError if it breaks a limit."""
    if len(entry.records) > MAX_RECORDS or len(entry.gone) > MAX_RECORDS:
        raise EntryError(f"an entry carries at most {MAX_RECORDS} records and gone keys")
    recs = [[list(r.key), r.mark, r.seq, list(r.bitmap), float(r.rate), float(r.ts)]
            for r in entry.records]
    raw = msgpack.packb([SEQ_FORMAT, entry.origin, entry.epoch, float(entry.ts), recs,
                         [list(k) for k in entry.gone]], use_bin_type=True)
    if len(raw) > MAX_ENTRY:
        raise EntryError(f"packed entry of {len(raw)} bytes exceeds {MAX_ENTRY}")
    unpack_seq(raw)  # what we cannot read back we do not journal
    return raw


def unpack_seq(raw: bytes) -> SeqEntry:
    """Unpack and validate an entry payload; raise EntryError on any violation."""
    if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_ENTRY:
        raise EntryError("payload must be bytes within the entry limit")
    try:
        data = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True,
                               max_bin_len=0, max_str_len=MAX_ORIGIN,
                               max_array_len=max(MAX_RECORDS, MAX_BITMAP_WORDS),
                               max_map_len=0, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EntryError(f"payload is not a valid seq entry: {exc}") from None
    if not isinstance(data, list) or len(data) != 6:
        raise EntryError("payload must be [format, origin, epoch, ts, records, gone]")
    fmt, origin, epoch, ts, recs, gone = data
    if type(fmt) is not int or fmt != SEQ_FORMAT:
        raise EntryError(f"unknown seq entry format {fmt!r}")
    if not isinstance(origin, str) or not origin:
        raise EntryError("origin must be a non-empty string")
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise EntryError("epoch must be a u64")
    if not isinstance(ts, float) or not math.isfinite(ts):
        raise EntryError("ts must be a finite float")
    if not isinstance(recs, list) or not isinstance(gone, list):
        raise EntryError("records and gone must be lists")
    return SeqEntry(origin, ts, tuple(_record(r, origin, epoch) for r in recs),
                    tuple(_key(k) for k in gone), epoch)


class Claimed(NamedTuple):
    """A claim with a reserve, as applied: who, its epoch, the reserve, and the version of
    the records it found (its marks are `claim_marks` of those records, D281)."""

    node: str
    epoch: int
    grant: Reserve
    version: int


_VERSIONS = itertools.count(1)  # process-wide: a version names one content of one SeqLog


class SeqLog:
    """The committed per-SA records and the sender, applied in commit order on every node.

    A claim with a reserve applies in O(1) (D281): it keeps what it needs (`claimed`) and the
    first look at `records` afterwards makes its marks, from the records as the claim found
    them. Nothing can change them in between: callers get a read-only view (`put` is for
    tests and benches, and looks first), and `apply` and `to_dict` look first. `version`
    changes whenever a record's mark or rate changes or a record comes or goes (what
    `claim_marks` reads), to a value no other content of any SeqLog in this process had, so
    marks a backup prepared from the records at `version` v are the claim's own if the claim
    found v (`claimed.version`)."""

    __slots__ = (
        "_pending",
        "_records",
        "_view",
        "applied",
        "claimed",
        "life",
        "moves",
        "rejected",
        "sender",
        "version",
    )

    def __init__(self, records: Mapping[SaKey, SeqRecord] | None = None, applied: int = 0,
                 sender: tuple[str, int] = ("", 0), rejected: int = 0, life: int = 0) -> None:
        self._records: dict[SaKey, SeqRecord] = dict(records) if records else {}
        self._view = MappingProxyType(self._records)
        self._pending = False  # `claimed`'s marks are not in the records yet
        self.claimed: Claimed | None = None  # the last claim with a reserve applied
        self.version = next(_VERSIONS)
        self.applied = applied
        self.moves = 0  # entries that moved a mark or brought an SA (not compared)
        self.sender = sender  # (node, epoch): whose marks are accepted; "" none yet
        self.rejected = rejected  # entries not from the sender (seq_rejected:not_sender)
        self.life = life  # entries accepted from the current sender (its signs of life)

    @property
    def records(self) -> MappingProxyType[SaKey, SeqRecord]:
        """The records, a read-only view (a pending claim's marks made first)."""
        if self._pending:
            self._settle()
        return self._view

    def _settle(self) -> None:
        """Make the pending claim's marks (`rules.claim_marks`): past every mark journaled
        before it, the claimant's, accepted with the claim (D261)."""
        assert self.claimed is not None
        node, epoch, grant, _ = self.claimed
        self._pending = False
        records = self._records
        for key, (_, hi) in claim_marks(records, grant).items():
            rec = records[key]
            records[key] = SeqRecord(key, hi, rec.seq, rec.bitmap, rec.rate, node, rec.ts, epoch)
        self.version = next(_VERSIONS)

    def put(self, rec: SeqRecord) -> None:
        """Set one record as it is (tests and benches: the journal changes records only by
        `apply`)."""
        self.records  # noqa: B018 -- a pending claim's marks first
        self._records[rec.key] = rec
        self.version = next(_VERSIONS)

    def copy(self) -> SeqLog:
        """An independent copy (a snapshot's), with any pending claim's marks made."""
        out = SeqLog(self.records.copy(), self.applied, self.sender, self.rejected, self.life)
        out.moves, out.claimed = self.moves, self.claimed
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeqLog):
            return NotImplemented
        return (self.records, self.applied, self.sender, self.rejected, self.life) == (
            other.records, other.applied, other.sender, other.rejected, other.life)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"SeqLog({len(self.records)} records, sender={self.sender}, "
                f"applied={self.applied}, life={self.life}, rejected={self.rejected})")

    def view(self) -> tuple[int, int]:
        """What a claim made now is based on: (the sender's epoch, its signs of life)."""
        return self.sender[1], self.life

    def claim(self, node: str, seen: tuple[int, int],
              grant: Reserve | None = None) -> int | None:
        """`node` becomes the sender at the next epoch if the sender is as `seen`; the epoch,
        or None for a stale claim. With `grant`, the claim also commits the new term's first
        marks (`rules.claim_marks`: past every mark journaled before it), so the claimant
        holds permits from the claim alone (D261); they are made on the next look at the
        records (D281), so the claim's apply does no work per SA."""
        if tuple(seen) != self.view():
            return None
        self.life = 0
        epoch = min(self.sender[1] + 1, MAX_EPOCH)
        self.sender = (node, epoch)
        self.moves += 1  # a new term: every node re-reads what it holds against the sender
        if grant is not None:
            if self._pending:
                self._settle()  # two claims with no look between: the first's marks first
            self.claimed = Claimed(node, epoch, grant, self.version)
            self._pending = True
        return epoch

    def apply(self, entry: SeqEntry) -> SeqApplied:
        """Merge an entry from the sender: counters move forward only; an entry from anyone
        else changes nothing. Never raises on a valid entry."""
        if (entry.origin, entry.epoch) != self.sender:
            self.rejected += 1
            return SeqApplied(accepted=False)
        self.records  # noqa: B018 -- a pending claim's marks first
        records = self._records
        moved = changed = False
        for rec in entry.records:
            old = records.get(rec.key)
            moved = moved or old is None or rec.mark > old.mark
            if old is not None and (rec.seq < old.seq or rec.mark < old.mark):
                seq, bitmap = (rec.seq, rec.bitmap) if rec.seq >= old.seq else (
                    old.seq, old.bitmap)
                rec = SeqRecord(rec.key, max(rec.mark, old.mark), seq, bitmap, rec.rate,
                                rec.node, rec.ts, rec.epoch)
            changed = changed or old is None or rec.mark != old.mark or rec.rate != old.rate
            records[rec.key] = rec
        for key in entry.gone:
            changed = records.pop(key, None) is not None or changed
        if changed:
            self.version = next(_VERSIONS)
        self.applied += 1
        self.life += 1
        self.moves += moved
        return SeqApplied(accepted=True, moved=moved)

    def to_dict(self) -> dict[str, Any]:
        """A snapshot as plain data (for the sealed Raft snapshot)."""
        return {"applied": self.applied, "sender": list(self.sender), "life": self.life,
                "rejected": self.rejected, "records": [
                    [list(r.key), r.mark, r.seq, list(r.bitmap), r.rate, r.node, r.ts, r.epoch]
                    for r in self.records.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeqLog:
        """Rebuild from `to_dict()` output."""
        node, epoch = data.get("sender", ("", 0))
        records = {}
        for key, mark, seq, bitmap, rate, node_, ts, ep in data.get("records", []):
            k = (str(key[0]), int(key[1]), int(key[2]))
            records[k] = SeqRecord(k, mark, seq, tuple(bitmap), rate, node_, ts, int(ep))
        return cls(records, applied=int(data.get("applied", 0)), sender=(str(node), int(epoch)),
                   rejected=int(data.get("rejected", 0)), life=int(data.get("life", 0)))
