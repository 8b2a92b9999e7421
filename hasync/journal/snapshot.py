"""The snapshot form of `JournalState`: freezing it, formatting it, and reading it back checked.

Rules: pure (no IO, no clocks); internal to hasync.journal. The format (SNAPSHOT_FORMAT) is
part of Raft snapshots and of the golden vectors in tests/data: a change to what is written
or to what is accepted needs a new format. Every item read back is checked for its exact type
(bool is not int) and a malformed snapshot raises StateError, never anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .model import Key, _Child, _Ike, _Lineage, _Update

SNAPSHOT_FORMAT = 1


class StateError(ValueError):
    """A snapshot given to JournalState.from_dict() has the wrong shape."""


@dataclass(frozen=True, slots=True)
class FrozenState:
    """`JournalState.freeze()`: what `to_dict()` formats, outside the lock if need be."""

    applied: int
    last_ts: float
    anomalies: dict[str, int]
    lineages: list[tuple[list[tuple[Any, ...]], tuple[_Child, ...]]]  # never mutated

    def to_dict(self) -> dict[str, Any]:
        """`JournalState.to_dict()` of the state as it was when frozen."""
        return {
            "format": SNAPSHOT_FORMAT,
            "applied": self.applied,
            "last_ts": self.last_ts,
            "anomalies": dict(sorted(self.anomalies.items())),
            "lineages": [
                [[_ike_to_list(i) for i in ikes], [_child_to_list(c) for c in children]]
                for ikes, children in self.lineages
            ],
        }


def freeze(applied: int, last_ts: float, anomalies: dict[str, int],
           lineages: Iterable[_Lineage]) -> FrozenState:
    """A structural copy that later applies cannot change, cheap enough to take under the
    journal's lock (issue 17 finding 6): stored _Update and _Child objects are never
    mutated, so they are shared; _Ike fields and the lists that change are copied."""
    frozen = [([(i.key, i.add, i.created, i.inherited, tuple(i.updates), i.mid_i, i.mid_r,
                 i.iv) for i in lin.ikes], tuple(lin.children))
              for lin in lineages]
    return FrozenState(applied, last_ts, dict(anomalies), frozen)


def load(data: Any,
         restore: Callable[[list[_Ike], list[_Child]], None]) -> tuple[int, float, dict[str, int]]:
    """Read a snapshot made by `FrozenState.to_dict()`: each lineage goes to `restore` in
    order, and (applied, last_ts, anomalies) is returned; raise StateError if malformed."""
    try:
        if data["format"] != SNAPSHOT_FORMAT:
            raise StateError(f"unknown snapshot format {data['format']!r}")
        applied = _check(data["applied"], int)
        last_ts = _check(data["last_ts"], float)
        anomalies = _check(data["anomalies"], dict)
        counts = {_check(k, str): _check(v, int) for k, v in anomalies.items()}
        for item in _check(data["lineages"], list):
            ikes, children = _typed(item, (list, list))
            restore(
                [_Ike(*_typed(i, _IKE_KINDS)) for i in ikes],
                [_Child(*_typed(c, _CHILD_KINDS)) for c in children],
            )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, StateError):
            raise
        raise StateError(f"malformed snapshot: {exc!r}") from None
    return applied, last_ts, counts


def _check(value: Any, kind: type) -> Any:
    """`value` if it is exactly of `kind` (bool is not int), else StateError."""
    if type(value) is not kind:
        raise StateError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _typed(value: Any, kinds: tuple[Any, ...]) -> list[Any]:
    """Check a snapshot list item by item: each kind is a type or a converter."""
    items = _check(value, list)
    if len(items) != len(kinds):
        raise StateError(f"expected {len(kinds)} items, got {len(items)}")
    return [
        _check(v, k) if isinstance(k, type) else k(v) for v, k in zip(items, kinds, strict=True)
    ]


def _opt_bytes(value: Any) -> bytes | None:
    """A snapshot's optional datagram."""
    return None if value is None else _check(value, bytes)


def _key_from(value: Any) -> Key:
    """A Key from its snapshot list."""
    version, spi_i, spi_r, initiator = _typed(value, (int, int, int, bool))
    return (version, spi_i, spi_r, initiator)


def _updates_from(value: Any) -> list[_Update]:
    """Kept IKE_UPDATEs from their snapshot lists."""
    names = lambda v: [_check(n, str) for n in _check(v, list)]  # noqa: E731
    return [_Update(*_typed(u, (bytes, names, int, bool))) for u in _check(value, list)]


_IKE_KINDS = (
    _key_from,
    bytes,
    float,
    _opt_bytes,
    _updates_from,
    _opt_bytes,
    _opt_bytes,
    _opt_bytes,
)
_CHILD_KINDS = (int, _key_from, bytes, float)


def _ike_to_list(ike: tuple[Any, ...]) -> list[Any]:
    """Snapshot form of one frozen IKE_SA (`JournalState.freeze()`), in _Ike field order."""
    key, add, created, inherited, updates, mid_i, mid_r, iv = ike
    ups = [[u.raw, list(u.fields), u.extensions, u.additive] for u in updates]
    return [list(key), add, created, inherited, ups, mid_i, mid_r, iv]


def _child_to_list(child: _Child) -> list[Any]:
    """Snapshot form of one CHILD_SA, in _Child field order."""
    return [child.spi, list(child.origin), child.add, child.created]
