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
            restore([_ike_from(i) for i in ikes], [_child_from(c) for c in children])
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


def _items(value: Any, n: int) -> list[Any]:
    """`value` if it is a list of `n` items, else StateError."""
    if type(value) is not list:
        raise StateError(f"expected list, got {type(value).__name__}")
    if len(value) != n:
        raise StateError(f"expected {n} items, got {len(value)}")
    return value


def _opt_bytes(value: Any) -> bytes | None:
    """A snapshot's optional datagram."""
    return None if value is None else _check(value, bytes)


def _key_from(value: Any) -> Key:
    """A Key from its snapshot list."""
    version, spi_i, spi_r, initiator = _items(value, 4)
    if type(version) is not int or type(spi_i) is not int or type(spi_r) is not int:
        raise StateError("expected int in a key")
    return (version, spi_i, spi_r, _check(initiator, bool))


def _update_from(value: Any) -> _Update:
    """A kept IKE_UPDATE from its snapshot list."""
    raw, names, extensions, additive = _items(value, 4)
    for name in _check(names, list):
        _check(name, str)
    return _Update(_check(raw, bytes), list(names), _check(extensions, int),
                   _check(additive, bool))


def _ike_from(value: Any) -> _Ike:
    """One IKE_SA from its snapshot list (`_ike_to_list`); one function, not a table of
    checkers, because a 100k-tunnel snapshot loads 100k of them (issue 19 catch-up)."""
    key, add, created, inherited, updates, mid_i, mid_r, iv = _items(value, 8)
    return _Ike(_key_from(key), _check(add, bytes), _check(created, float),
                _opt_bytes(inherited), [_update_from(u) for u in _check(updates, list)],
                _opt_bytes(mid_i), _opt_bytes(mid_r), _opt_bytes(iv))


def _child_from(value: Any) -> _Child:
    """One CHILD_SA from its snapshot list (`_child_to_list`)."""
    spi, origin, add, created = _items(value, 4)
    return _Child(_check(spi, int), _key_from(origin), _check(add, bytes),
                  _check(created, float))


def _ike_to_list(ike: tuple[Any, ...]) -> list[Any]:
    """Snapshot form of one frozen IKE_SA (`JournalState.freeze()`), in _Ike field order."""
    key, add, created, inherited, updates, mid_i, mid_r, iv = ike
    ups = [[u.raw, list(u.fields), u.extensions, u.additive] for u in updates]
    return [list(key), add, created, inherited, ups, mid_i, mid_r, iv]


def _child_to_list(child: _Child) -> list[Any]:
    """Snapshot form of one CHILD_SA, in _Child field order."""
    return [child.spi, list(child.origin), child.add, child.created]
