"""Tests of hasync.journal.seal: cluster key file, key derivation, sealing, batch codec.

Rules: every refusal raises its named error (KeyFileError, KeyMaterialError, SealError,
SealFormatError, EntryError) and nothing else; derived keys are pinned by a known answer so a
changed label cannot slip through; any byte flip of a sealed entry fails to open; batch limits
hold on both pack and unpack, including for hand-crafted msgpack.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasync.journal.seal import (
    MAX_DATAGRAM,
    MAX_ENTRY,
    MAX_ITEMS,
    MAX_NODE_NAME,
    PURPOSE_SNAPSHOT,
    SEAL_OVERHEAD,
    Batch,
    EntryError,
    KeyFileError,
    KeyMaterialError,
    Sealer,
    SealError,
    SealFormatError,
    derive_keys,
    derive_subkey,
    generate_key_file,
    load_cluster_key,
    open_chunks,
    pack_batch,
    seal_chunks,
    unpack_batch,
)

KEY = bytes(range(32))
KEY_HEX = KEY.hex()


def write_key(path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    """Write a key file with the given content and mode."""
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


# --- key file -------------------------------------------------------------------------------


def test_generate_then_load(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text.strip()) == 64 and text.endswith("\n")
    assert load_cluster_key(path) == bytes.fromhex(text.strip())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.key"]  # no temp file left


def test_generate_keys_differ(tmp_path: Path) -> None:
    generate_key_file(tmp_path / "a")
    generate_key_file(tmp_path / "b")
    assert load_cluster_key(tmp_path / "a") != load_cluster_key(tmp_path / "b")


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_generate_mode_ignores_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        generate_key_file(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_generate_refuses_overwrite(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k", KEY_HEX)
    with pytest.raises(KeyFileError, match="already exists") as info:
        generate_key_file(path)
    assert str(path) in str(info.value)
    assert load_cluster_key(path) == KEY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_generate_refuses_overwrite_of_symlink(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_file(tmp_path / "link")
    assert not (tmp_path / "nowhere").exists()


def test_generate_in_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot create"):
        generate_key_file(tmp_path / "absent" / "k")


@pytest.mark.parametrize(
    "content", [KEY_HEX, KEY_HEX.upper(), f"  \n{KEY_HEX}\n\n", f"\t{KEY_HEX} "]
)
def test_load_accepts_surrounding_whitespace(tmp_path: Path, content: str) -> None:
    assert load_cluster_key(write_key(tmp_path / "k", content)) == KEY


@pytest.mark.parametrize(
    "mode", [0o644, 0o640, 0o604, 0o660, 0o602, 0o620, 0o601, 0o610, 0o700 | 0o007]
)
def test_load_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path / "k", KEY_HEX, mode)
    with pytest.raises(KeyFileError, match="mode") as info:
        load_cluster_key(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_accepts_private_modes(tmp_path: Path, mode: int) -> None:
    assert load_cluster_key(write_key(tmp_path / "k", KEY_HEX, mode)) == KEY


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="missing") as info:
        load_cluster_key(tmp_path / "absent")
    assert "absent" in str(info.value)


def test_load_refuses_directory_and_fifo(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_cluster_key(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_cluster_key(fifo)


def test_load_refuses_symlink(tmp_path: Path) -> None:
    target = write_key(tmp_path / "real", KEY_HEX)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(KeyFileError, match="cannot open"):
        load_cluster_key(tmp_path / "link")


@pytest.mark.parametrize(
    "content",
    [
        "",
        "\n",
        KEY_HEX[:-1],
        KEY_HEX + "0",
        KEY_HEX[:-1] + "g",
        KEY_HEX[:32] + " " + KEY_HEX[32:],
        "0x" + KEY_HEX[2:],
        KEY_HEX + "\n" + KEY_HEX,
        b"\xff" * 64,
        KEY_HEX + " " * 5000,
    ],
)
def test_load_refuses_wrong_content(tmp_path: Path, content: str | bytes) -> None:
    path = write_key(tmp_path / "k", content)
    with pytest.raises(KeyFileError, match="wrong content") as info:
        load_cluster_key(path)
    assert str(path) in str(info.value)


# --- key derivation -------------------------------------------------------------------------


def test_derive_keys_known_answer() -> None:
    keys = derive_keys(KEY, "lab")
    assert keys.seal_root.hex() == (
        "c3266f48761648ac477b1c14f84ed8826fe2cf59ed58e373bfe66f5217552ec9"
    )
    assert derive_subkey(keys, 1, bytes(8), "gw1").hex() == (
        "4caa26cda5883f45846b481ead067a763debd6bb2ac03cab5a54b88ed16898b8"
    )
    assert keys.raft_password == (
        "dc5bab3123cb13bebcf59b06ed8ac74498127664c84a25a627c1557ed0ea2ce7"
    )


def test_derive_keys_separates_uses_and_clusters() -> None:
    lab, other = derive_keys(KEY, "lab"), derive_keys(KEY, "lab2")
    assert lab == derive_keys(KEY, "lab")
    assert lab.seal_root != other.seal_root and lab.raft_password != other.raft_password
    assert lab.seal_root != bytes.fromhex(lab.raft_password)
    assert KEY not in (lab.seal_root, bytes.fromhex(lab.raft_password))


def test_keys_repr_hides_secrets() -> None:
    keys = derive_keys(KEY, "lab")
    assert keys.seal_root.hex() not in repr(keys)
    assert keys.raft_password not in repr(keys)
    assert repr(keys.seal_root) not in repr(keys)


@pytest.mark.parametrize("key", [b"", KEY[:31], KEY + b"\0", KEY_HEX, bytearray(KEY)])
def test_derive_keys_refuses_bad_key(key: object) -> None:
    with pytest.raises(KeyMaterialError):
        derive_keys(key, "lab")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a\0b", "x" * 256, "\udc80", b"lab", None])
def test_derive_keys_refuses_bad_cluster_name(name: object) -> None:
    with pytest.raises(KeyMaterialError):
        derive_keys(KEY, name)  # type: ignore[arg-type]


# --- sealing --------------------------------------------------------------------------------

SEALER = Sealer(derive_keys(KEY, "lab"), "gw1")


@pytest.mark.parametrize("payload", [b"", b"x", b"hello journal" * 100, bytes(MAX_ENTRY)])
def test_seal_round_trip(payload: bytes) -> None:
    blob = SEALER.seal(payload, 1)
    assert blob[0] == 2 and len(blob) == len(payload) + SEAL_OVERHEAD - 1 + len("gw1")
    assert SEALER.open(blob, 1) == payload
    assert Sealer(derive_keys(KEY, "lab"), "gw2").open(blob, 1) == payload


def test_seal_uses_fresh_nonces() -> None:
    blobs = {SEALER.seal(b"same", 1) for _ in range(64)}
    assert len(blobs) == 64
    assert len({blob[14:26] for blob in blobs}) == 64  # header: 11 bytes + "gw1"


def test_every_byte_flip_is_refused() -> None:
    blob = SEALER.seal(b"a small entry payload", 1)
    for index in range(len(blob)):
        for mask in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= mask
            with pytest.raises(SealError):
                SEALER.open(bytes(tampered), 1)


def test_truncated_or_extended_is_refused() -> None:
    blob = SEALER.seal(b"payload", 1)
    for size in range(len(blob)):
        with pytest.raises(SealError):
            SEALER.open(blob[:size], 1)
    with pytest.raises(SealError):
        SEALER.open(blob + b"\0", 1)


def test_wrong_cluster_or_key_is_refused() -> None:
    blob = SEALER.seal(b"payload", 1)
    with pytest.raises(SealError, match="authentication"):
        Sealer(derive_keys(KEY, "lab2"), "gw1").open(blob, 1)
    with pytest.raises(SealError, match="authentication"):
        Sealer(derive_keys(bytes(32), "lab"), "gw1").open(blob, 1)


def test_unknown_version_is_refused() -> None:
    blob = bytearray(SEALER.seal(b"payload", 1))
    blob[0] = 3
    with pytest.raises(SealError, match="unknown seal format 3"):
        SEALER.open(bytes(blob), 1)


def test_seal_limits_and_types() -> None:
    with pytest.raises(SealError):
        SEALER.seal(bytes(MAX_ENTRY + 1), 1)
    with pytest.raises(SealError):
        SEALER.seal("text", 1)  # type: ignore[arg-type]
    with pytest.raises(SealError):
        SEALER.open("text", 1)  # type: ignore[arg-type]
    with pytest.raises(SealError, match="too long"):
        SEALER.open(b"\x02" + bytes(MAX_ENTRY + SEAL_OVERHEAD + MAX_NODE_NAME), 1)
    for purpose in (-1, 256, True, None, [1]):
        with pytest.raises(SealError, match="purpose"):
            SEALER.seal(b"x", purpose)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_open_of_random_bytes_only_raises_seal_error(blob: bytes) -> None:
    with pytest.raises(SealError):
        SEALER.open(blob, 1)


# --- batch codec ----------------------------------------------------------------------------


def test_batch_round_trip() -> None:
    items = [b"\x03\x01abc", b"\x03\x06" + bytes(300)]
    batch = unpack_batch(pack_batch(items, "gw1", 12.5))
    assert batch == Batch(tuple(items), "gw1", 12.5)
    assert unpack_batch(pack_batch(items, "gw1", 12)).ts == 12.0


def test_batch_limits_accepted_at_the_edge() -> None:
    assert len(unpack_batch(pack_batch([b"x"] * MAX_ITEMS, "gw1", 0.0)).items) == MAX_ITEMS
    big = bytes(MAX_DATAGRAM)
    assert unpack_batch(pack_batch([big, big, big], "g" * 255, 0.0)).items == (big, big, big)


@pytest.mark.parametrize(
    ("items", "origin", "ts"),
    [
        ([], "gw1", 0.0),
        ([b"x"] * (MAX_ITEMS + 1), "gw1", 0.0),
        ([bytes(MAX_DATAGRAM + 1)], "gw1", 0.0),
        ([bytes(MAX_DATAGRAM)] * 4, "gw1", 0.0),  # over MAX_ENTRY in total
        ([b""], "gw1", 0.0),
        (["text"], "gw1", 0.0),
        ([bytearray(b"x")], "gw1", 0.0),
        (b"xy", "gw1", 0.0),
        ([b"x"], "", 0.0),
        ([b"x"], b"gw1", 0.0),
        ([b"x"], "g" * 256, 0.0),
        ([b"x"], "\udc80", 0.0),
        ([b"x"], "gw1", float("nan")),
        ([b"x"], "gw1", float("inf")),
        ([b"x"], "gw1", "1.0"),
        ([b"x"], "gw1", True),
    ],
)
def test_pack_refuses(items: object, origin: object, ts: object) -> None:
    with pytest.raises(EntryError):
        pack_batch(items, origin, ts)  # type: ignore[arg-type]


def raw_batch(*fields: object) -> bytes:
    """Hand-crafted msgpack, bypassing pack_batch's checks."""
    return msgpack.packb(list(fields), use_bin_type=True)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",  # never used in msgpack
        raw_batch(1, "gw1", 0.0, [b"x"]) + b"\x00",  # trailing data
        raw_batch(1, "gw1", 0.0, [b"x"])[:-1],  # truncated
        msgpack.packb({"format": 1}),
        msgpack.packb(1),
        raw_batch(1, "gw1", 0.0),
        raw_batch(1, "gw1", 0.0, [b"x"], None),
        raw_batch(2, "gw1", 0.0, [b"x"]),
        raw_batch(True, "gw1", 0.0, [b"x"]),
        raw_batch(1.0, "gw1", 0.0, [b"x"]),
        raw_batch(1, b"gw1", 0.0, [b"x"]),
        raw_batch(1, "gw1", 0, [b"x"]),
        raw_batch(1, "gw1", float("nan"), [b"x"]),
        raw_batch(1, "gw1", 0.0, []),
        raw_batch(1, "gw1", 0.0, ["x"]),
        raw_batch(1, "gw1", 0.0, [[b"x"]]),
        raw_batch(1, "gw1", 0.0, [{"a": b"x"}]),
        raw_batch(1, "gw1", 0.0, [msgpack.ExtType(1, b"x")]),
        raw_batch(1, "gw1", 0.0, [b"x"] * (MAX_ITEMS + 1)),
        raw_batch(1, "gw1", 0.0, [bytes(MAX_DATAGRAM + 1)]),
        raw_batch(1, "g" * 256, 0.0, [b"x"]),
        raw_batch(1, "gw1", 0.0, [bytes(MAX_DATAGRAM)] * 4),  # over MAX_ENTRY
        b"\x91" * 2000 + b"\xc0",  # deeply nested arrays
    ],
)
def test_unpack_refuses(raw: bytes) -> None:
    with pytest.raises(EntryError):
        unpack_batch(raw)


def test_unpack_refuses_non_bytes() -> None:
    with pytest.raises(EntryError):
        unpack_batch("text")  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_unpack_of_random_bytes_only_raises_entry_error(raw: bytes) -> None:
    try:
        batch = unpack_batch(raw)
    except EntryError:
        return
    assert isinstance(batch, Batch)


@given(
    st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=20),
    st.text(min_size=1, max_size=30).filter(lambda s: len(s.encode("utf-8", "replace")) <= 255),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_batch_round_trip_property(items: list[bytes], origin: str, ts: float) -> None:
    try:
        raw = pack_batch(items, origin, ts)
    except EntryError:
        return  # e.g. an origin with lone surrogates
    assert unpack_batch(raw) == Batch(tuple(items), origin, ts)
    assert unpack_batch(SEALER.open(SEALER.seal(raw, 1), 1)) == Batch(tuple(items), origin, ts)


def test_an_injected_nonce_is_used_and_checked() -> None:
    keys = derive_keys(KEY, "test")
    fixed = {"nonce": lambda: bytes(12), "key_id": lambda: bytes(8)}
    sealed = Sealer(keys, "n1", **fixed).seal(b"payload", 1)
    assert sealed[13:25] == bytes(12) and Sealer(keys, "n2").open(sealed, 1) == b"payload"
    assert Sealer(keys, "n1", **fixed).seal(b"payload", 1) == sealed  # deterministic
    with pytest.raises(SealError, match="nonce"):
        Sealer(keys, "n1", nonce=lambda: bytes(11)).seal(b"payload", 1)
    with pytest.raises(SealError, match="key id"):
        Sealer(keys, "n1", key_id=lambda: bytes(7)).seal(b"payload", 1)


def test_default_nonces_differ() -> None:
    sealer = Sealer(derive_keys(KEY, "test"), "n1")
    assert len({sealer.seal(b"same", 1)[13:25] for _ in range(64)}) == 64


def test_large_blobs_seal_in_chunks_and_detect_tampering() -> None:
    sealer = Sealer(derive_keys(KEY, "test"), "n1")
    blob = bytes(range(256)) * 3000  # several chunks
    sealed = seal_chunks(sealer, blob)
    assert open_chunks(sealer, sealed) == blob and blob[:1000] not in sealed
    assert open_chunks(sealer, seal_chunks(sealer, b"")) == b""
    first = 28 + int.from_bytes(sealed[24:28], "big")
    for bad in (sealed[:-1], sealed[: len(sealed) // 2], sealed + sealed[:first],
                sealed[first:], sealed[:first], b""):
        with pytest.raises(SealError):
            open_chunks(sealer, bad)


@pytest.mark.parametrize("chunk", [0, MAX_ENTRY + 1])
def test_a_chunk_size_beyond_one_entry_is_refused(chunk: int) -> None:
    with pytest.raises(SealError, match="chunk size"):
        seal_chunks(Sealer(derive_keys(KEY, "test"), "n1"), b"x", chunk)


# --- issue 17 finding 8 ---------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_finding8_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k", KEY_HEX)
    os.chown(path, 65534, 65534)  # nobody, mode still 0600
    with pytest.raises(KeyFileError, match="owned by uid 65534") as info:
        load_cluster_key(path)
    assert str(path) in str(info.value)
    os.chown(path, os.geteuid(), os.getegid())
    assert load_cluster_key(path) == KEY


def _hkdf_by_hand(key: bytes, info: bytes) -> bytes:
    """RFC 5869 HKDF-SHA256 of 32 bytes, written out (not through seal.py)."""
    import hashlib
    import hmac
    prk = hmac.new(b"hasync cluster key v1", key, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _header(blob: bytes) -> tuple[int, bytes, bytes, int]:
    """(purpose, key id, node, header length) of a format-2 sealed entry."""
    node_len = blob[10]
    return blob[1], blob[2:10], blob[11:11 + node_len], 11 + node_len


def test_finding8_each_node_and_purpose_seals_under_its_own_subkey() -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    keys = derive_keys(KEY, "lab")
    root = _hkdf_by_hand(KEY, b"hasync/v2/seal-root\0lab")
    assert root == keys.seal_root
    gw1, gw2 = Sealer(keys, "gw1"), Sealer(keys, "gw2")
    blobs = {(node, purpose): sealer.seal(b"payload", purpose)
             for node, sealer in (("gw1", gw1), ("gw2", gw2)) for purpose in (1, 2)}
    subkeys = set()
    for (node, purpose), blob in blobs.items():
        p, key_id, named, head = _header(blob)
        assert (p, named) == (purpose, node.encode())
        subkey = _hkdf_by_hand(root, b"hasync/v2/seal-subkey\0" + bytes((purpose,)) + key_id
                               + b"lab\0" + node.encode())
        aad = b"hasync sealed v2" + bytes((3,)) + b"lab" + blob[:head]
        assert AESGCM(subkey).decrypt(blob[head:head + 12], blob[head + 12:], aad) == (
            b"payload")
        with pytest.raises(InvalidTag):  # the one cluster-wide key of format 1 does not open it
            AESGCM(_hkdf_by_hand(KEY, b"hasync/v1/journal-entry-key\0lab")).decrypt(
                blob[head:head + 12], blob[head + 12:], aad)
        subkeys.add(subkey)
        assert gw2.open(blob, purpose) == gw1.open(blob, purpose) == b"payload"
    assert len(subkeys) == 4
    forged = bytearray(blobs[("gw1", 1)])
    forged[13] = ord("2")  # the header now names gw2
    with pytest.raises(SealError, match="authentication"):
        gw1.open(bytes(forged), 1)
    # a new Sealer (a restart) starts a new generation: it never continues an uncounted key
    assert _header(Sealer(keys, "gw1").seal(b"x", 1))[1] != _header(blobs[("gw1", 1)])[1]


def test_finding8_an_entry_does_not_open_as_another_purpose() -> None:
    blob = SEALER.seal(b"payload", 1)
    with pytest.raises(SealError, match="purpose"):
        SEALER.open(blob, 2)
    moved = bytes((blob[0], 2)) + blob[2:]
    with pytest.raises(SealError, match="authentication"):
        SEALER.open(moved, 2)
    with pytest.raises(SealError):
        SEALER.open(blob, PURPOSE_SNAPSHOT)


def test_finding8_seals_are_counted_and_the_key_rotates_before_the_limit() -> None:
    from hasync.journal.seal import KEY_SEAL_LIMIT
    assert KEY_SEAL_LIMIT <= 2**32  # NIST SP 800-38D section 8.3, random 96-bit nonces
    sealer = Sealer(derive_keys(KEY, "lab"), "gw1", limit=3)
    blobs = [sealer.seal(bytes([i]), 1) for i in range(7)]
    ids = [_header(blob)[1] for blob in blobs]
    assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4] == ids[5] != ids[6]
    assert len(set(ids)) == 3
    assert sealer.counts() == {"seals_purpose_1": 1, "key_rotations": 2}
    sealer.seal(b"other purpose", 4)
    assert sealer.counts()["seals_purpose_4"] == 1
    reader = Sealer(derive_keys(KEY, "lab"), "gw2")
    assert [reader.open(blob, 1) for blob in blobs] == [bytes([i]) for i in range(7)]


def test_finding8_a_format_1_entry_is_refused_by_name() -> None:
    old = b"\x01" + bytes(12) + bytes(40)  # format 1: version || nonce || ciphertext and tag
    with pytest.raises(SealFormatError, match=r"format 1 .*issue 17"):
        SEALER.open(old, 1)
    with pytest.raises(SealFormatError):
        open_chunks(SEALER, bytes(24) + (53).to_bytes(4, "big") + old)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(24-byte chunk header, sealed entry) of each chunk of a sealed snapshot."""
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos + 24:pos + 28], "big")
        out.append((data[pos:pos + 24], data[pos + 28:pos + 28 + n]))
        pos += 28 + n
    return out


def _join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(head + len(s).to_bytes(4, "big") + s for head, s in chunks)


def test_finding8_snapshot_chunks_are_bound_to_their_snapshot() -> None:
    sealer = Sealer(derive_keys(KEY, "lab"), "gw1")
    a = _chunks(seal_chunks(sealer, b"A" * 300, chunk=100))
    b = _chunks(seal_chunks(sealer, b"B" * 300, chunk=100))
    assert len(a) == len(b) == 3 and a[0][0][:16] != b[0][0][:16]
    assert open_chunks(sealer, _join(a)) == b"A" * 300
    spliced = [a[0], b[1], a[2]]
    with pytest.raises(SealError, match="another snapshot"):
        open_chunks(sealer, _join(spliced))
    relabelled = [a[0], (a[1][0], b[1][1]), a[2]]  # B's chunk under A's header
    with pytest.raises(SealError, match="authentication"):
        open_chunks(sealer, _join(relabelled))
    swapped = [(a[0][0], a[1][1]), (a[1][0], a[0][1]), a[2]]  # reordered, headers kept
    with pytest.raises(SealError, match="authentication"):
        open_chunks(sealer, _join(swapped))
    dropped = [(h[:20] + (2).to_bytes(4, "big"), s) for h, s in a[:2]]  # count rewritten
    with pytest.raises(SealError, match="authentication"):
        open_chunks(sealer, _join(dropped))
    with pytest.raises(SealError, match="truncated"):
        open_chunks(sealer, _join(a[:2]))
    with pytest.raises(SealError):  # a chunk is not an entry of any kind
        sealer.open(a[0][1], 1)
