"""The journal's apply machine: opened (unsealed) entries in, what changed out.

Rules: pure (no IO, threads, clocks or logging); the caller serialises `apply` calls (the
journal runs them under its lock, on Raft's thread). `open_entry(kind, payload)` turns an
unsealed payload into an `Entry`, touching no state (so it runs outside the lock), and raises
`EntryError` naming what is wrong with the entry as a whole; a datagram that does not decode
is only counted. `ApplyMachine.apply(entry)` never raises: an unexpected error (a bug in the
state model) is handed back in `Change.errors` as (counter name, exception) for the caller to
log and count. The machine holds the replicated state: the HA model (`JournalState`), the
ESP replay-state log (`SeqLog`, with the sender and its epoch) and the members' latest reports.
`Change.result` is what the replicated call returns, so pysyncobj hands it to the submitter's
callback: a SEQ entry gives `entries.ACCEPTED` or `entries.REJECTED` (not from the sender:
counted as `seq_rejected:not_sender`), a CLAIM its new epoch or `REJECTED` (the sender moved or
showed life since the claimant looked: counted as `claims_rejected:stale`), others None. Member
reports are plain data, never secrets: at most `MAX_MEMBER_FIELDS` fields of str, int, float,
bool or None.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from hasync.ha import HaMessage, MalformedMessage, MessageType, decode_only

from ..guard.entries import ACCEPTED, REJECTED, SeqEntry, SeqLog, unpack_seq
from ..guard.records import U64_MAX
from ..guard.rules import Reserve
from .decoded import DecodedCache
from .seal import MAX_ENTRY, Batch, EntryError, unpack_batch
from .snapshot import StateError
from .state import NAMED, NEEDED, JournalState


class Kind(IntEnum):
    """What a journal entry carries (the first argument of the one replicated call)."""

    BATCH = 1  # ha datagrams (hasync.journal.seal pack_batch)
    SEQ = 2  # ESP replay state (hasync.guard.entries pack_seq)
    BARRIER = 3  # nothing: orders the log
    MEMBER = 4  # a member's report (pack_member)
    CLAIM = 5  # a node becomes the sender of ESP marks at the next epoch (pack_claim)


MEMBER_FORMAT = 1
CLAIM_FORMAT = 2  # 2: the claimant's view of the sender, [format, node, epoch, life] (D207)
CLAIM_GRANT_FORMAT = 3  # 3: and the reserve of the term's first marks, granted with it (D261)
MAX_MEMBER_FIELDS = 16
MAX_NODE_NAME = 64  # characters
MAX_MEMBER_STR = 64  # characters of a field name or string value
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True, slots=True)
class MemberReport:
    """A member's latest report: its name and plain fields (VRRP role, applied index...)."""

    node: str
    info: dict[str, Any]


def _check_member(node: object, info: object) -> None:
    """Raise EntryError unless `node` and `info` make a valid report."""
    if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_NAME:
        raise EntryError(f"member name must be 1 to {MAX_NODE_NAME} characters")
    if not isinstance(info, dict) or len(info) > MAX_MEMBER_FIELDS:
        raise EntryError(f"a member report has at most {MAX_MEMBER_FIELDS} fields")
    for key, value in info.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_MEMBER_STR:
            raise EntryError(f"member field name {key!r} is not 1 to {MAX_MEMBER_STR} characters")
        if not isinstance(value, _SCALARS):
            raise EntryError(f"member field {key!r} holds a {type(value).__name__}")
        if isinstance(value, str) and len(value) > MAX_MEMBER_STR:
            raise EntryError(f"member field {key!r} longer than {MAX_MEMBER_STR} characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise EntryError(f"member field {key!r} is not finite")


def pack_member(node: str, info: dict[str, Any]) -> bytes:
    """Pack a report payload: msgpack [format, node, {field: scalar}]."""
    _check_member(node, info)
    return msgpack.packb([MEMBER_FORMAT, node, dict(info)], use_bin_type=True)


def unpack_member(raw: bytes) -> MemberReport:
    """Unpack and validate a report payload; raise EntryError on any violation."""
    if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_ENTRY:
        raise EntryError("payload must be bytes within the entry limit")
    try:
        data = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True,
                               max_bin_len=0, max_str_len=MAX_MEMBER_STR * 4,
                               max_array_len=3, max_map_len=MAX_MEMBER_FIELDS, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EntryError(f"payload is not a valid member report: {exc}") from None
    if not isinstance(data, list) or len(data) != 3:
        raise EntryError("payload must be [format, node, fields]")
    fmt, node, info = data
    if type(fmt) is not int or fmt != MEMBER_FORMAT:
        raise EntryError(f"unknown member report format {fmt!r}")
    _check_member(node, info)
    return MemberReport(node, info)


MAX_GRANT = 1 << 31  # packets: a claim's reserve floors are at most this
MAX_HORIZON_MS = 3_600_000


def pack_claim(node: str, seen: tuple[int, int], grant: Reserve | None = None) -> bytes:
    """Pack a claim payload: msgpack [format, node, epoch, life] (format 2), or with `grant`
    (format 3, D261) [format, node, epoch, life, floor, horizon_ms, takeover_floor], the
    reserve the claim's own marks are made with; `seen` is the claimant's view of the sender
    (its epoch, its signs of life: SeqLog.life)."""
    if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_NAME:
        raise EntryError(f"a claimant's name must be 1 to {MAX_NODE_NAME} characters")
    if len(seen) != 2 or not all(type(v) is int and 0 <= v <= U64_MAX for v in seen):
        raise EntryError("a claim's view is two u64: (epoch, life)")
    if grant is None:
        return msgpack.packb([CLAIM_FORMAT, node, *seen], use_bin_type=True)
    raw = msgpack.packb([CLAIM_GRANT_FORMAT, node, *seen, grant.floor,
                         round(grant.horizon_s * 1000), grant.takeover_floor],
                        use_bin_type=True)
    unpack_claim(raw)  # what we cannot read back we do not journal
    return raw


def _grant(floor: Any, horizon_ms: Any, takeover_floor: Any) -> Reserve:
    """Check a claim's reserve: floors in packets, the horizon in whole milliseconds."""
    if not all(type(v) is int and 0 <= v <= MAX_GRANT for v in (floor, takeover_floor)):
        raise EntryError(f"a claim's floors must be integers in 0..{MAX_GRANT}")
    if type(horizon_ms) is not int or not 0 <= horizon_ms <= MAX_HORIZON_MS:
        raise EntryError(f"a claim's horizon must be 0..{MAX_HORIZON_MS} ms")
    return Reserve(floor=floor, horizon_s=horizon_ms / 1000, takeover_floor=takeover_floor)


def unpack_claim(raw: bytes) -> tuple[str, tuple[int, int], Reserve | None]:
    """The claimant, its view of the sender and the reserve of the marks it asks with its
    claim (None: format 2, no marks); raise EntryError on any violation."""
    if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_ENTRY:
        raise EntryError("payload must be bytes within the entry limit")
    try:
        data = msgpack.unpackb(raw, raw=False, use_list=True, max_bin_len=0,
                               max_str_len=MAX_NODE_NAME * 4, max_array_len=7, max_map_len=0,
                               max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EntryError(f"payload is not a valid claim: {exc}") from None
    if not isinstance(data, list) or len(data) not in (4, 7):
        raise EntryError("payload must be [format, node, epoch, life] or with a reserve")
    fmt, node, epoch, life, *rest = data
    if type(fmt) is not int or (fmt, len(data)) not in ((CLAIM_FORMAT, 4),
                                                        (CLAIM_GRANT_FORMAT, 7)):
        raise EntryError(f"unknown claim format {fmt!r} of {len(data)} fields")
    if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_NAME:
        raise EntryError(f"a claimant's name must be 1 to {MAX_NODE_NAME} characters")
    if not all(type(v) is int and 0 <= v <= U64_MAX for v in (epoch, life)):
        raise EntryError("a claim's epoch and life must be u64")
    return node, (epoch, life), _grant(*rest) if rest else None


Errors = tuple[tuple[str, Exception], ...]

# A numbered batch's answer to its submitter (pipeline.py): (code, number). APPLIED and
# DUPLICATE give the next number the origin's stream expects (everything below it is in),
# GAP the number it waits for (this batch was skipped), OTHER_STREAM the stream it follows.
APPLIED, DUPLICATE, GAP, OTHER_STREAM = "applied", "duplicate", "gap", "other_stream"


@dataclass(frozen=True, slots=True)
class Entry:
    """An opened entry, decoded but not yet applied."""

    kind: Kind
    batch: Batch | None = None
    messages: tuple[tuple[bytes, HaMessage], ...] = ()  # the batch's datagrams that decode
    malformed: int = 0  # datagrams that do not decode (MalformedMessage)
    seq: SeqEntry | None = None
    member: MemberReport | None = None
    claimant: str = ""
    seen: tuple[int, int] = (0, 0)  # a claim's view of the sender: (epoch, life)
    grant: Reserve | None = None  # a claim's reserve for the term's first marks (D261)
    errors: Errors = ()  # unexpected decode errors, per datagram
    reused: int = 0  # datagrams whose decode was this node's own, from charon (decoded.py)


def _open_batch(payload: bytes, known: DecodedCache | None = None) -> Entry:
    """Unpack a batch and decode its datagrams (or take this node's decode of the same
    bytes from `known`); one bad datagram does not spoil the others."""
    batch = unpack_batch(payload)
    messages: list[tuple[bytes, HaMessage]] = []
    malformed, errors, reused = 0, [], 0
    kept = known.take(batch.items) if known is not None else [None] * len(batch.items)
    for raw, msg in zip(batch.items, kept, strict=True):
        if msg is not None:
            messages.append((raw, msg))
            reused += 1
            continue
        try:
            messages.append((raw, decode_only(raw, NEEDED, NAMED)))
        except MalformedMessage:
            malformed += 1
        except Exception as exc:  # a decoder bug: the journal logs it with its traceback
            errors.append(("apply_error", exc))
    return Entry(Kind.BATCH, batch=batch, messages=tuple(messages), malformed=malformed,
                 errors=tuple(errors), reused=reused)


def open_entry(kind: int, payload: bytes, known: DecodedCache | None = None) -> Entry:
    """Decode an unsealed payload of `kind` (a batch's datagrams found in `known` are not
    decoded again); raise EntryError if the entry is unusable."""
    try:
        k = Kind(kind)
    except ValueError:
        raise EntryError(f"unknown entry kind {kind!r}") from None
    if k is Kind.BATCH:
        return _open_batch(payload, known)
    if k is Kind.SEQ:
        return Entry(k, seq=unpack_seq(payload))
    if k is Kind.MEMBER:
        return Entry(k, member=unpack_member(payload))
    if k is Kind.CLAIM:
        claimant, seen, grant = unpack_claim(payload)
        return Entry(k, claimant=claimant, seen=seen, grant=grant)
    if payload:
        raise EntryError("a barrier carries no payload")
    return Entry(k)


@dataclass(frozen=True, slots=True)
class Change:
    """What one applied entry changed, for the journal to count and announce."""

    kind: Kind
    batch: Batch | None = None
    applied: tuple[tuple[bytes, HaMessage], ...] = ()  # datagrams now in the state
    child_adds: int = 0  # CHILD_ADDs among them
    refeed: tuple[bytes, ...] = ()  # datagrams a passive charon needs besides (rehome.py)
    moved: bool = False  # an outbound mark rose or a new SA came (SeqLog.apply)
    member: MemberReport | None = None
    counts: dict[str, int] = field(default_factory=dict)  # counters to add
    errors: Errors = ()  # unexpected errors: (counter name, exception), not in `counts`
    result: Any = None  # what the replicated call returns to the submitter's callback


class ApplyMachine:
    """The replicated state and the rules that apply committed entries to it."""

    def __init__(self, state: JournalState | None = None, seqs: SeqLog | None = None,
                 members: dict[str, dict[str, Any]] | None = None,
                 streams: dict[str, tuple[int, int]] | None = None) -> None:
        self.state = state if state is not None else JournalState()
        self.seqs = seqs if seqs is not None else SeqLog()
        self.members: dict[str, dict[str, Any]] = members if members is not None else {}
        # origin -> (its stream, the next number it expects): replicated, in snapshots
        self.streams: dict[str, tuple[int, int]] = streams if streams is not None else {}

    def apply(self, entry: Entry) -> Change:
        """Apply one opened entry in commit order; never raises."""
        if entry.kind is Kind.BATCH:
            return self._apply_batch(entry)
        if entry.kind is Kind.SEQ:
            return self._apply_seq(entry)
        if entry.kind is Kind.CLAIM and entry.claimant:
            epoch = self.seqs.claim(entry.claimant, entry.seen, entry.grant)
            if epoch is None:
                return Change(entry.kind, counts={"claims_rejected:stale": 1}, result=REJECTED)
            return Change(entry.kind, moved=True, counts={"claims_applied": 1}, result=epoch)
        if entry.kind is Kind.MEMBER and entry.member is not None:
            self.members[entry.member.node] = dict(entry.member.info)
            return Change(entry.kind, member=entry.member,
                          counts={"member_reports_applied": 1})
        return Change(entry.kind, counts={"barriers_applied": 1})

    def order(self, batch: Batch) -> Change | None:
        """A numbered batch goes in only as the next of its origin's stream (a newer stream
        starts at 1); the Change that refuses or skips it, or None to apply it."""
        stream, expected = self.streams.get(batch.origin, (-1, 1))
        if batch.stream != stream:
            if batch.stream < stream:  # an older process's, or a renumbered, late batch
                return Change(Kind.BATCH, counts={"batches_refused:other_stream": 1},
                              result=(OTHER_STREAM, stream))
            expected = 1
        if batch.seq < expected:
            return Change(Kind.BATCH, counts={"batches_duplicate": 1},
                          result=(DUPLICATE, expected))
        if batch.seq > expected:
            return Change(Kind.BATCH, counts={"batches_refused:gap": 1}, result=(GAP, expected))
        self.streams[batch.origin] = (batch.stream, expected + 1)
        return None

    def _apply_batch(self, entry: Entry) -> Change:
        """Feed each decoded datagram to the HA model (a numbered batch only in its turn)."""
        assert entry.batch is not None
        if entry.batch.seq and (refused := self.order(entry.batch)) is not None:
            return refused
        applied: list[tuple[bytes, HaMessage]] = []
        errors = list(entry.errors)
        for raw, msg in entry.messages:
            try:
                self.state.apply(raw, msg, entry.batch.ts)
            except Exception as exc:  # JournalState.apply never raises: a bug, logged upstream
                errors.append(("apply_error", exc))
                continue
            applied.append((raw, msg))
        refeed: list[bytes] = []
        try:  # after the whole batch: the lineage as it now stands (rehome.py)
            refeed = self.state.take_rehomed() if self.state.rehomed else []
        except Exception as exc:  # pure and total: a bug, logged upstream
            self.state.rehomed.clear()
            errors.append(("rehome_error", exc))
        counts = Counter({"batches_applied": 1, "messages_applied": len(applied),
                          "datagram_rejected": entry.malformed,
                          "decodes_reused": entry.reused,
                          "peers_moved": sum(d[1] == MessageType.IKE_DELETE for d in refeed)})
        b = entry.batch
        return Change(entry.kind, batch=b, applied=tuple(applied), refeed=tuple(refeed),
                      child_adds=sum(m.type == MessageType.CHILD_ADD for _, m in applied),
                      counts={k: v for k, v in counts.items() if v}, errors=tuple(errors),
                      result=(APPLIED, b.seq + 1) if b.seq else None)

    def _apply_seq(self, entry: Entry) -> Change:
        """Merge replay-state records from the sender; marks only move forward (SeqLog.apply)."""
        assert entry.seq is not None
        try:
            done = self.seqs.apply(entry.seq)
        except Exception as exc:  # SeqLog.apply never raises on a valid entry: a bug
            return Change(entry.kind, errors=(("seq_apply_error", exc),), result=REJECTED)
        if not done.accepted:
            return Change(entry.kind, counts={"seq_rejected:not_sender": 1}, result=REJECTED)
        return Change(entry.kind, moved=done.moved, counts={"seq_entries_applied": 1},
                      result=ACCEPTED)

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The HA model and replay state as fresh plain data (members and streams apart)."""
        return self.state.to_dict(), self.seqs.to_dict()

    def streams_data(self) -> dict[str, list[int]]:
        """The streams as fresh plain data, for a snapshot."""
        return {origin: list(value) for origin, value in self.streams.items()}

    @classmethod
    def restore(cls, state: dict[str, Any], seqs: dict[str, Any],
                streams: Any = None) -> ApplyMachine:
        """A machine rebuilt from snapshot data; raise StateError if it is malformed."""
        return cls(JournalState.from_dict(state), SeqLog.from_dict(seqs),
                   streams=check_streams(streams or {}))


def check_streams(data: Any) -> dict[str, tuple[int, int]]:
    """The streams of a snapshot ({origin: [stream, next]}), or StateError."""
    if not isinstance(data, dict):
        raise StateError("streams must be a dict")
    out = {}
    for origin, value in data.items():
        if (not isinstance(origin, str) or not isinstance(value, list | tuple) or len(value) != 2
                or not all(type(v) is int and 0 <= v <= U64_MAX for v in value)):
            raise StateError(f"bad stream record {origin!r}: {value!r}")
        out[origin] = (value[0], value[1])
    return out
