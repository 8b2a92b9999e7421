"""Golden vectors for what the journal writes to disk: sealed entries of every kind and sealed
snapshot chunks, in tests/data/journal/<name>.hex.

Rules: each vector is checked both ways (sealing its value with fixed nonces, key ids and
snapshot ids gives the committed bytes; opening the committed bytes gives the value) and every
strict prefix of it is refused. A missing or extra vector file fails. The vectors are made by
`make_vectors()`; after a deliberate format change, re-make them with `write_vectors()`:
    PYTHONPATH=$PWD:tests python -c 'import test_journal_vectors as t; t.write_vectors()'
and say in the commit why the bytes changed (issue 17 finding 8: seal format 2, per-node and
per-purpose subkeys, snapshot chunks bound to their snapshot). Fixed nonces, key ids and
snapshot ids are for vectors only: production draws them at random (hasync/journal/seal.py).
"""

from __future__ import annotations

import hashlib
import itertools
import pickle
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hasync.guard.entries import SeqEntry, pack_seq, unpack_seq
from hasync.guard.records import SeqRecord
from hasync.journal.machine import (
    ApplyMachine,
    Kind,
    open_entry,
    pack_claim,
    pack_member,
    unpack_claim,
    unpack_member,
)
from hasync.journal.seal import (
    PURPOSE_SNAPSHOT,
    EntryError,
    Sealer,
    SealError,
    derive_keys,
    derive_subkey,
    open_chunks,
    pack_batch,
    seal_chunks,
    unpack_batch,
)
from hasync.raftsnap import SNAPSHOT_FORMAT, pack_snapshot, unpack_snapshot

import hastream

VECTORS = Path(__file__).parent / "data" / "journal"
KEYS = derive_keys(bytes(range(32)), "vectors")
TUNNEL = ("ike_add", "ike_mid_responder", "ike_update", "child_add")
RAFT_DATA = ((b"\x01cmd-2", 2, 1), (b"\x01cmd-1", 1, 1), ("127.0.0.1:4321",))  # opaque to us


ENTRIES: dict[str, Callable[[Any], bytes]] = {
    "batch_entry": lambda v: pack_batch(*v), "numbered_batch_entry": lambda v: pack_batch(*v),
    "seq_entry": pack_seq,
    "member_report": lambda v: pack_member(*v), "barrier_entry": bytes,
    "claim_entry": lambda v: pack_claim(*v)}
NODE = "gw1"  # the sealing node of every vector
KINDS = {"batch_entry": Kind.BATCH, "numbered_batch_entry": Kind.BATCH, "seq_entry": Kind.SEQ,
         "member_report": Kind.MEMBER, "barrier_entry": Kind.BARRIER, "claim_entry": Kind.CLAIM}


def _fixed_nonces(name: str) -> Callable[[], bytes]:
    """Deterministic nonces, distinct per vector: sha256(name)[:8] || counter (4 bytes)."""
    prefix, counter = hashlib.sha256(name.encode()).digest()[:8], itertools.count(1)
    return lambda: prefix + next(counter).to_bytes(4, "big")


def _fixed_id(name: str, size: int) -> Callable[[], bytes]:
    """A deterministic key id or snapshot id: sha256(what || name)[:size]."""
    return lambda: hashlib.sha256(f"{size}:{name}".encode()).digest()[:size]


def _sealer(name: str) -> Sealer:
    """gw1's Sealer with fixed nonces and key ids for vector `name`."""
    return Sealer(KEYS, NODE, nonce=_fixed_nonces(name), key_id=_fixed_id(name, 8))


def _seq_entry() -> SeqEntry:
    """Two SAs (IPv4 outbound, IPv6 inbound with a bitmap) and one forgotten SA."""
    out = SeqRecord(("192.0.2.100", 0xCD79F2D5, 50), 1 << 20, 0, (), 125.5, "gw1", 1700000000.5,
                    1)
    inb = SeqRecord(("2001:db8::1", 0xC6B2260C, 50), 0, 4242, (0xFFFFFFFF, 0x0000F00F), 0.0,
                    "gw1", 1700000000.5, 1)
    return SeqEntry("gw1", 1700000000.5, (out, inb), (("192.0.2.100", 0x01020304, 50),), 1)


STREAM = 1700000000123456789  # a numbered batch's stream (pipeline.py: seeded from the clock)


def _snapshot_state() -> tuple[Any, ...]:
    """The replicated state after one golden tunnel (batch 1 of gw1's stream), gw1's claim and
    the seq entry: (state, seqs, raft data, streams) as the snapshot file holds them."""
    m = ApplyMachine()
    m.apply(open_entry(Kind.CLAIM, pack_claim("gw1", (0, 0))))
    golden = hastream.golden()
    m.apply(open_entry(Kind.BATCH, pack_batch([golden[n] for n in TUNNEL], "gw1", 1700000000.25,
                                              STREAM, 1)))
    m.apply(open_entry(Kind.SEQ, pack_seq(_seq_entry())))
    return (*m.snapshot(), RAFT_DATA, m.streams_data())


def _values() -> dict[str, Any]:
    """What each vector holds, as the code sees it once opened."""
    golden = hastream.golden()
    return {
        "batch_entry": ([golden[n] for n in TUNNEL], "gw1", 1700000000.25),
        "numbered_batch_entry": ([golden[n] for n in TUNNEL], "gw1", 1700000000.25, STREAM, 7),
        "seq_entry": _seq_entry(),
        "member_report": ("gw1", {"vrrp": "MASTER", "raft": "leader", "applied": 42,
                                  "ts": 1700000000.75}),
        "barrier_entry": b"",
        "claim_entry": ("gw1", (0, 0), None),
        "snapshot_chunks": bytes(range(200)),  # 64-byte chunks: four of them
        "snapshot_file": _snapshot_state(),
    }


def make_vectors() -> dict[str, bytes]:
    """Every vector's bytes, sealed under `KEYS` with `_fixed_nonces(name)`."""
    out: dict[str, bytes] = {}
    for name, value in _values().items():
        sealer, snap_id = _sealer(name), _fixed_id(name, 16)
        if name in KINDS:
            out[name] = sealer.seal(ENTRIES[name](value), KINDS[name])
        elif name == "snapshot_chunks":
            out[name] = seal_chunks(sealer, value, chunk=64, snapshot_id=snap_id)
        else:
            out[name] = seal_chunks(sealer, pack_snapshot(*value), snapshot_id=snap_id)
    return out


def _open(name: str, data: bytes) -> Any:
    """Open a vector's bytes back to its value (raises SealError or EntryError)."""
    sealer = Sealer(KEYS, "gw2")  # another node opens what gw1 sealed
    if name == "snapshot_chunks":
        return open_chunks(sealer, data)
    if name == "snapshot_file":
        return unpack_snapshot(open_chunks(sealer, data))
    plain = sealer.open(data, KINDS[name])
    if name == "batch_entry":
        batch = unpack_batch(plain)
        return (list(batch.items), batch.origin, batch.ts)
    if name == "numbered_batch_entry":
        batch = unpack_batch(plain)
        return (list(batch.items), batch.origin, batch.ts, batch.stream, batch.seq)
    if name == "seq_entry":
        return unpack_seq(plain)
    if name == "member_report":
        report = unpack_member(plain)
        return (report.node, report.info)
    if name == "claim_entry":
        return unpack_claim(plain)
    return plain


def write_vectors(directory: Path = VECTORS) -> None:
    """(Re-)write the committed vector files: a comment header, then hex, 64 digits a line."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in make_vectors().items():
        head = (f"# {name}: hasync journal golden vector (tests/test_journal_vectors.py "
                f"make_vectors); cluster key bytes(range(32)), cluster 'vectors', node "
                f"{NODE!r}, fixed nonces, key ids and snapshot ids; seal format 2. "
                f"snapshot format {SNAPSHOT_FORMAT}.")
        comment = "\n".join("# " + line for line in textwrap.wrap(head[2:], 94))
        body = "\n".join(textwrap.wrap(data.hex(), 64))
        (directory / f"{name}.hex").write_text(f"{comment}\n{body}\n")


def _read(name: str) -> bytes:
    """A committed vector's bytes; a missing file fails the test (FileNotFoundError)."""
    text = (VECTORS / f"{name}.hex").read_text()
    return bytes.fromhex("".join(ln for ln in text.splitlines() if not ln.startswith("#")))


NAMES = sorted(_values())


def test_every_vector_is_committed_and_none_is_stale() -> None:
    assert sorted(p.stem for p in VECTORS.glob("*.hex")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_sealing_with_fixed_nonces_gives_the_committed_bytes(name: str) -> None:
    assert make_vectors()[name] == _read(name)


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_bytes_open_to_the_value(name: str) -> None:
    assert _open(name, _read(name)) == _values()[name]


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_is_refused(name: str) -> None:
    data = _read(name)
    for n in range(len(data)):
        with pytest.raises((SealError, EntryError)):
            _open(name, data[:n])


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_an_entry_is_header_nonce_and_gcm_as_documented(name: str) -> None:
    """Read with AES-GCM directly, following seal.py's header, not through Sealer."""
    data = _read(name)
    key_id = _fixed_id(name, 8)()
    header = bytes((2, KINDS[name])) + key_id + bytes((len(NODE),)) + NODE.encode()
    assert data.startswith(header) and data[14:26] == _fixed_nonces(name)()
    aad = b"hasync sealed v2" + bytes((len("vectors"),)) + b"vectors" + header
    subkey = derive_subkey(KEYS, KINDS[name], key_id, NODE)
    assert AESGCM(subkey).decrypt(data[14:26], data[26:], aad) == (
        ENTRIES[name](_values()[name]))


def test_a_snapshot_chunk_binds_its_snapshot_id_index_and_count() -> None:
    """The first chunk of `snapshot_chunks`, read with AES-GCM directly."""
    data = _read("snapshot_chunks")
    head = _fixed_id("snapshot_chunks", 16)() + (0).to_bytes(4, "big") + (4).to_bytes(4, "big")
    assert data.startswith(head)
    sealed = data[28:28 + int.from_bytes(data[24:28], "big")]
    key_id = _fixed_id("snapshot_chunks", 8)()
    header = bytes((2, PURPOSE_SNAPSHOT)) + key_id + bytes((len(NODE),)) + NODE.encode()
    aad = b"hasync sealed v2" + bytes((len("vectors"),)) + b"vectors" + header + head
    subkey = derive_subkey(KEYS, PURPOSE_SNAPSHOT, key_id, NODE)
    assert AESGCM(subkey).decrypt(sealed[14:26], sealed[26:], aad) == bytes(range(64))


def test_the_snapshot_vector_restores_the_machine() -> None:
    state, seqs, raft_data, streams = _open("snapshot_file", _read("snapshot_file"))
    m = ApplyMachine.restore(state, seqs, streams)
    assert len(m.state.summaries(0.0)) == 1 and len(m.seqs.records) == 2
    assert m.seqs.sender == ("gw1", 1)
    assert raft_data == RAFT_DATA and m.streams == {"gw1": (STREAM, 2)}


def test_a_format_3_snapshot_from_before_numbered_batches_still_loads() -> None:
    state, seqs, raft_data, _ = _snapshot_state()
    old = pickle.dumps((3, state, seqs, raft_data))
    assert unpack_snapshot(old) == (state, seqs, raft_data, {})
    with pytest.raises(ValueError, match="snapshot format 2"):
        unpack_snapshot(pickle.dumps((2, state, seqs, raft_data)))
