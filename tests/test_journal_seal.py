"""Tests of hasync.journal.seal: cluster key file, key derivation, sealing, batch codec.

Rules: every refusal raises its named error (KeyFileError, KeyMaterialError, SealError,
EntryError) and nothing else; derived keys are pinned by a known answer so a changed label
cannot slip through; any byte flip of a sealed entry fails to open; batch limits hold on both
pack and unpack, including for hand-crafted msgpack.
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
    SEAL_OVERHEAD,
    Batch,
    EntryError,
    KeyFileError,
    KeyMaterialError,
    Sealer,
    SealError,
    derive_keys,
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
    assert keys.entry_key.hex() == (
        "f96fc699ad42fbc6a8e9cb9fe9a224d26350394dd21c30cdef59d2690fa6b7e6"
    )
    assert keys.raft_password == (
        "dc5bab3123cb13bebcf59b06ed8ac74498127664c84a25a627c1557ed0ea2ce7"
    )


def test_derive_keys_separates_uses_and_clusters() -> None:
    lab, other = derive_keys(KEY, "lab"), derive_keys(KEY, "lab2")
    assert lab == derive_keys(KEY, "lab")
    assert lab.entry_key != other.entry_key and lab.raft_password != other.raft_password
    assert lab.entry_key != bytes.fromhex(lab.raft_password)
    assert KEY not in (lab.entry_key, bytes.fromhex(lab.raft_password))


def test_keys_repr_hides_secrets() -> None:
    keys = derive_keys(KEY, "lab")
    assert keys.entry_key.hex() not in repr(keys)
    assert keys.raft_password not in repr(keys)
    assert repr(keys.entry_key) not in repr(keys)


@pytest.mark.parametrize("key", [b"", KEY[:31], KEY + b"\0", KEY_HEX, bytearray(KEY)])
def test_derive_keys_refuses_bad_key(key: object) -> None:
    with pytest.raises(KeyMaterialError):
        derive_keys(key, "lab")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a\0b", "x" * 256, "\udc80", b"lab", None])
def test_derive_keys_refuses_bad_cluster_name(name: object) -> None:
    with pytest.raises(KeyMaterialError):
        derive_keys(KEY, name)  # type: ignore[arg-type]


# --- sealing --------------------------------------------------------------------------------

SEALER = Sealer(derive_keys(KEY, "lab"))


@pytest.mark.parametrize("payload", [b"", b"x", b"hello journal" * 100, bytes(MAX_ENTRY)])
def test_seal_round_trip(payload: bytes) -> None:
    blob = SEALER.seal(payload)
    assert blob[0] == 1 and len(blob) == len(payload) + SEAL_OVERHEAD
    assert SEALER.open(blob) == payload
    assert Sealer(derive_keys(KEY, "lab")).open(blob) == payload


def test_seal_uses_fresh_nonces() -> None:
    blobs = {SEALER.seal(b"same") for _ in range(64)}
    assert len(blobs) == 64
    assert len({blob[1:13] for blob in blobs}) == 64


def test_every_byte_flip_is_refused() -> None:
    blob = SEALER.seal(b"a small entry payload")
    for index in range(len(blob)):
        for mask in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= mask
            with pytest.raises(SealError):
                SEALER.open(bytes(tampered))


def test_truncated_or_extended_is_refused() -> None:
    blob = SEALER.seal(b"payload")
    for size in range(len(blob)):
        with pytest.raises(SealError):
            SEALER.open(blob[:size])
    with pytest.raises(SealError):
        SEALER.open(blob + b"\0")


def test_wrong_cluster_or_key_is_refused() -> None:
    blob = SEALER.seal(b"payload")
    with pytest.raises(SealError, match="authentication"):
        Sealer(derive_keys(KEY, "lab2")).open(blob)
    with pytest.raises(SealError, match="authentication"):
        Sealer(derive_keys(bytes(32), "lab")).open(blob)


def test_unknown_version_is_refused() -> None:
    blob = bytearray(SEALER.seal(b"payload"))
    blob[0] = 2
    with pytest.raises(SealError, match="version"):
        SEALER.open(bytes(blob))


def test_seal_limits_and_types() -> None:
    with pytest.raises(SealError):
        SEALER.seal(bytes(MAX_ENTRY + 1))
    with pytest.raises(SealError):
        SEALER.seal("text")  # type: ignore[arg-type]
    with pytest.raises(SealError):
        SEALER.open("text")  # type: ignore[arg-type]
    with pytest.raises(SealError, match="too long"):
        SEALER.open(b"\x01" + bytes(MAX_ENTRY + SEAL_OVERHEAD))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_open_of_random_bytes_only_raises_seal_error(blob: bytes) -> None:
    with pytest.raises(SealError):
        SEALER.open(blob)


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
    assert unpack_batch(SEALER.open(SEALER.seal(raw))) == Batch(tuple(items), origin, ts)


def test_an_injected_nonce_is_used_and_checked() -> None:
    keys = derive_keys(KEY, "test")
    sealed = Sealer(keys, nonce=lambda: bytes(12)).seal(b"payload")
    assert sealed[1:13] == bytes(12) and Sealer(keys).open(sealed) == b"payload"
    assert Sealer(keys, nonce=lambda: bytes(12)).seal(b"payload") == sealed  # deterministic
    with pytest.raises(SealError, match="nonce"):
        Sealer(keys, nonce=lambda: bytes(11)).seal(b"payload")


def test_default_nonces_differ() -> None:
    sealer = Sealer(derive_keys(KEY, "test"))
    assert len({sealer.seal(b"same")[1:13] for _ in range(64)}) == 64


def test_large_blobs_seal_in_chunks_and_detect_tampering() -> None:
    sealer = Sealer(derive_keys(KEY, "test"))
    blob = bytes(range(256)) * 3000  # several chunks
    sealed = seal_chunks(sealer, blob)
    assert open_chunks(sealer, sealed) == blob and blob[:1000] not in sealed
    assert open_chunks(sealer, seal_chunks(sealer, b"")) == b""
    first = 4 + int.from_bytes(sealed[:4], "big")
    for bad in (sealed[:-1], sealed[: len(sealed) // 2], sealed + sealed[:first],
                sealed[first:], sealed[:first], b""):
        with pytest.raises(SealError):
            open_chunks(sealer, bad)


@pytest.mark.parametrize("chunk", [0, MAX_ENTRY])
def test_a_chunk_size_beyond_one_entry_is_refused(chunk: int) -> None:
    with pytest.raises(SealError, match="chunk size"):
        seal_chunks(Sealer(derive_keys(KEY, "test")), b"x", chunk)
