"""The sequence guard's journal entries: the master's per-SA marks and inbound replay state.

Rules: an entry payload is msgpack `[format, origin, ts, records, gone]` with explicit limits,
checked when packing and when unpacking (violations raise `EntryError`, like ha batches);
records carry no key material (addresses, SPIs, counters, a rate); `SeqLog.apply()` takes a
committed entry and never raises; marks and inbound counters only move forward per SA, so an
entry applied twice or late changes nothing. Pure: no IO, no clocks.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..journal.seal import MAX_ENTRY, MAX_ORIGIN, EntryError
from .records import U64_MAX, SaKey, SeqRecord

SEQ_FORMAT = 1
MAX_RECORDS = 512  # records (or gone keys) per entry
MAX_BITMAP_WORDS = 128  # 4096-packet ESN replay window (strongSwan's replay_window max is larger,
#                         but no one runs it; a longer bitmap is refused, not truncated)


@dataclass(frozen=True, slots=True)
class SeqEntry:
    """One entry: records and forgotten SA keys from `origin` at wall time `ts`."""

    origin: str
    ts: float
    records: tuple[SeqRecord, ...]
    gone: tuple[SaKey, ...] = ()


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


def _record(item: Any, origin: str) -> SeqRecord:
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
                     rate, origin, ts)


def pack_seq(entry: SeqEntry) -> bytes:
    """Pack an entry payload; raise EntryError if it breaks a limit."""
    if not entry.records and not entry.gone:
        raise EntryError("an entry carries at least one record or gone key")
    if len(entry.records) > MAX_RECORDS or len(entry.gone) > MAX_RECORDS:
        raise EntryError(f"an entry carries at most {MAX_RECORDS} records and gone keys")
    recs = [[list(r.key), r.mark, r.seq, list(r.bitmap), float(r.rate), float(r.ts)]
            for r in entry.records]
    raw = msgpack.packb([SEQ_FORMAT, entry.origin, float(entry.ts), recs,
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
    if not isinstance(data, list) or len(data) != 5:
        raise EntryError("payload must be [format, origin, ts, records, gone]")
    fmt, origin, ts, recs, gone = data
    if type(fmt) is not int or fmt != SEQ_FORMAT:
        raise EntryError(f"unknown seq entry format {fmt!r}")
    if not isinstance(origin, str) or not origin:
        raise EntryError("origin must be a non-empty string")
    if not isinstance(ts, float) or not math.isfinite(ts):
        raise EntryError("ts must be a finite float")
    if not isinstance(recs, list) or not isinstance(gone, list):
        raise EntryError("records and gone must be lists")
    return SeqEntry(origin, ts, tuple(_record(r, origin) for r in recs),
                    tuple(_key(k) for k in gone))


@dataclass
class SeqLog:
    """The committed per-SA records, applied in commit order on every node."""

    records: dict[SaKey, SeqRecord] = field(default_factory=dict)
    applied: int = 0
    moves: int = field(default=0, compare=False)  # entries that moved a mark or brought an SA

    def apply(self, entry: SeqEntry) -> bool:
        """Merge an entry: counters move forward only; never raises on a valid entry. True if
        an outbound mark rose or a new SA came (a backup's targets moved)."""
        moved = False
        for rec in entry.records:
            old = self.records.get(rec.key)
            moved = moved or old is None or rec.mark > old.mark
            if old is not None and (rec.seq < old.seq or rec.mark < old.mark):
                seq, bitmap = (rec.seq, rec.bitmap) if rec.seq >= old.seq else (
                    old.seq, old.bitmap)
                rec = SeqRecord(rec.key, max(rec.mark, old.mark), seq, bitmap, rec.rate,
                                rec.node, rec.ts)
            self.records[rec.key] = rec
        for key in entry.gone:
            self.records.pop(key, None)
        self.applied += 1
        self.moves += moved
        return moved

    def to_dict(self) -> dict[str, Any]:
        """A snapshot as plain data (for the sealed Raft snapshot)."""
        return {"applied": self.applied, "records": [
            [list(r.key), r.mark, r.seq, list(r.bitmap), r.rate, r.node, r.ts]
            for r in self.records.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeqLog:
        """Rebuild from `to_dict()` output."""
        log = cls(applied=int(data.get("applied", 0)))
        for key, mark, seq, bitmap, rate, node, ts in data.get("records", []):
            k = (str(key[0]), int(key[1]), int(key[2]))
            log.records[k] = SeqRecord(k, mark, seq, tuple(bitmap), rate, node, ts)
        return log
