"""Cluster key, key derivation, sealing of journal entries and the entry payload codec.

Rules: pysyncobj keeps its journal and snapshots as plaintext pickle (pysyncobj 0.3.17:
pysyncobj/journal.py FileJournal, pysyncobj/serializer.py), so every entry is sealed before it
enters Raft and opened after commit; nothing secret reaches Raft in clear. The cluster key file
holds 64 hex digits (32 random bytes), mode 0600 or stricter; anything else is refused with
`KeyFileError` naming the file and the reason. From it, HKDF-SHA256 (RFC 5869) with a fixed
salt and one `info` label per use derives the AES-256-GCM entry key and pysyncobj's password;
the cluster name is part of every label and of the AAD, so clusters sharing a key file cannot
open each other's entries. A sealed entry is `version (1 byte) || nonce (12 random bytes) ||
AES-GCM ciphertext and 16-byte tag` (NIST SP 800-38D), the AAD binding the format version and
the cluster name; anything that does not open raises `SealError`. Payloads are msgpack batches
of raw ha datagrams with explicit limits (`MAX_ENTRY`, `MAX_ITEMS`, `MAX_DATAGRAM`,
`MAX_ORIGIN`), checked both when packing and unpacking; violations raise `EntryError`. Only the
key file functions do I/O.

Nonce collisions: nonces are random 96-bit values, so among n entries sealed under one key
(by any node) two collide with probability at most n^2 / 2^97 (birthday bound): 2^-33 at
n = 2^32, 2^-41 at n = 2^28. A collision under GCM leaks the XOR of two plaintexts and lets
an attacker forge tags, so NIST SP 800-38D section 8.3 caps random-nonce use at 2^32
invocations per key. Batching keeps the count low (one entry carries up to 512 datagrams;
at a sustained 100 entries/s, 2^32 entries take 1.4 years), but rotate the cluster key
(new key file on every node, fresh journal) well before 2^32 sealed entries, and at once
if the key file may have leaked. Sealing does not bind the Raft index: someone who can
write the journal can drop, repeat or reorder whole entries, not alter or read them.
The nonce source is injectable only so that tests can make golden vectors (deterministic
bytes); production code never passes one, and a repeated nonce would break GCM.

Blobs larger than one entry (Raft snapshots) are sealed as chunks by `seal_chunks`: each
chunk is `length (4 bytes, big-endian) || sealed entry`, the entry's plaintext starting with
its index and the chunk count (4 bytes each, big-endian); `open_chunks` refuses a missing,
extra, reordered or altered chunk with `SealError`.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
KEY_FILE_MODE = 0o600
_KEY_FILE_MAX = 4096  # a key file is 64 hex digits and whitespace; anything longer is wrong
_HEX_KEY = re.compile(rb"[0-9a-fA-F]{64}")

# RFC 5869 section 3.1: the salt need not be secret; a fixed one separates hasync's
# derivations from any other use of the same key material.
HKDF_SALT = b"hasync cluster key v1"
_INFO_ENTRY = b"hasync/v1/journal-entry-key"
_INFO_RAFT = b"hasync/v1/raft-password"
MAX_CLUSTER_NAME = 255  # UTF-8 bytes

SEAL_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
_AAD_PREFIX = b"hasync journal entry"

MAX_ENTRY = 256 * 1024  # a packed batch, before sealing
MAX_ITEMS = 512  # datagrams per batch
MAX_DATAGRAM = 64 * 1024  # one ha datagram (UDP payload)
MAX_ORIGIN = 255  # UTF-8 bytes of the origin node's name
BATCH_FORMAT = 1


class KeyFileError(ValueError):
    """The cluster key file is missing, unsafe or malformed (the message says which)."""


class KeyMaterialError(ValueError):
    """A cluster key or cluster name passed to derive_keys() is not usable."""


class SealError(ValueError):
    """A sealed entry does not open: too short, unknown version, or failed authentication."""


class EntryError(ValueError):
    """An entry payload violates the batch format or its size limits."""


def _key_file_error(path: Path, reason: str) -> KeyFileError:
    """The error for `path` with `reason`."""
    return KeyFileError(f"cluster key file {str(path)!r}: {reason}")


def load_cluster_key(path: str | os.PathLike[str]) -> bytes:
    """Read the 32-byte cluster key from a private file of 64 hex digits."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _key_file_error(path, "missing") from None
    except OSError as exc:
        raise _key_file_error(path, f"cannot open: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _key_file_error(path, "not a regular file")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise _key_file_error(path, f"mode {mode:04o} lets group or others in; use 0600")
        with os.fdopen(os.dup(fd), "rb") as handle:
            content = handle.read(_KEY_FILE_MAX + 1)
    except OSError as exc:
        raise _key_file_error(path, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    text = content.strip()
    if len(content) > _KEY_FILE_MAX or not _HEX_KEY.fullmatch(text):
        raise _key_file_error(path, "wrong content: expected exactly 64 hex digits")
    return bytes.fromhex(text.decode("ascii"))


def generate_key_file(path: str | os.PathLike[str]) -> None:
    """Write a new random cluster key file with mode 0600; never overwrite an existing one."""
    path = Path(path)
    content = secrets.token_hex(KEY_SIZE).encode("ascii") + b"\n"
    # Write a private temporary file, then link() it into place: atomic, and unlike rename()
    # it fails if `path` exists, so two generators cannot both win.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, KEY_FILE_MODE)
    except OSError as exc:
        raise _key_file_error(path, f"cannot create: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, KEY_FILE_MODE)  # whatever the umask
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:
        raise _key_file_error(path, "already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise _key_file_error(path, f"cannot write: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Keys:
    """Keys derived from the cluster key for one cluster; secrets are kept out of repr()."""

    cluster_name: str
    entry_key: bytes = field(repr=False)
    raft_password: str = field(repr=False)


def _cluster_name_bytes(cluster_name: str) -> bytes:
    """The cluster name as UTF-8, validated for use in labels and AAD."""
    if not isinstance(cluster_name, str) or not cluster_name or "\0" in cluster_name:
        raise KeyMaterialError("cluster name must be a non-empty string without NUL")
    try:
        raw = cluster_name.encode("utf-8")
    except UnicodeEncodeError:
        raise KeyMaterialError("cluster name is not valid UTF-8") from None
    if len(raw) > MAX_CLUSTER_NAME:
        raise KeyMaterialError(f"cluster name longer than {MAX_CLUSTER_NAME} bytes")
    return raw


def _hkdf(cluster_key: bytes, label: bytes, name: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of 32 bytes for one label and cluster."""
    info = label + b"\0" + name
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=info).derive(cluster_key)


def derive_keys(cluster_key: bytes, cluster_name: str) -> Keys:
    """Derive the entry key and the pysyncobj password of one cluster from the cluster key."""
    if not isinstance(cluster_key, bytes) or len(cluster_key) != KEY_SIZE:
        raise KeyMaterialError(f"cluster key must be {KEY_SIZE} bytes")
    name = _cluster_name_bytes(cluster_name)
    return Keys(
        cluster_name=cluster_name,
        entry_key=_hkdf(cluster_key, _INFO_ENTRY, name),
        raft_password=_hkdf(cluster_key, _INFO_RAFT, name).hex(),
    )


def random_nonce() -> bytes:
    """A fresh random 96-bit GCM nonce (NIST SP 800-38D section 8.2.2)."""
    return os.urandom(NONCE_SIZE)


class Sealer:
    """Seals and opens journal entries of one cluster with AES-256-GCM."""

    def __init__(self, keys: Keys, nonce: Callable[[], bytes] = random_nonce) -> None:
        self._aead = AESGCM(keys.entry_key)
        self._nonce = nonce  # tests only: golden vectors need fixed nonces
        name = _cluster_name_bytes(keys.cluster_name)
        self._aad = _AAD_PREFIX + bytes((SEAL_VERSION,)) + name

    def seal(self, payload: bytes) -> bytes:
        """Encrypt and authenticate `payload` under a fresh random nonce."""
        if not isinstance(payload, bytes | bytearray):
            raise SealError(f"payload must be bytes, not {type(payload).__name__}")
        if len(payload) > MAX_ENTRY:
            raise SealError(f"payload of {len(payload)} bytes exceeds {MAX_ENTRY}")
        nonce = self._nonce()
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise SealError(f"nonce source gave {nonce!r}, not {NONCE_SIZE} bytes")
        return bytes((SEAL_VERSION,)) + nonce + self._aead.encrypt(nonce, bytes(payload), self._aad)

    def open(self, blob: bytes) -> bytes:
        """Authenticate and decrypt a sealed entry; raise SealError if anything is wrong."""
        if not isinstance(blob, bytes | bytearray):
            raise SealError(f"sealed entry must be bytes, not {type(blob).__name__}")
        if len(blob) < SEAL_OVERHEAD:
            raise SealError(f"sealed entry of {len(blob)} bytes is shorter than {SEAL_OVERHEAD}")
        if len(blob) > MAX_ENTRY + SEAL_OVERHEAD:
            raise SealError(f"sealed entry of {len(blob)} bytes is too long")
        if blob[0] != SEAL_VERSION:
            raise SealError(f"unknown seal version {blob[0]}")
        nonce = bytes(blob[1 : 1 + NONCE_SIZE])
        try:
            return self._aead.decrypt(nonce, bytes(blob[1 + NONCE_SIZE :]), self._aad)
        except InvalidTag:
            raise SealError("authentication failed (tampered, or another key or cluster)") from None


@dataclass(frozen=True, slots=True)
class Batch:
    """One journal entry's payload: raw ha datagrams, the node that sent them, its time."""

    items: tuple[bytes, ...]
    origin: str
    ts: float


def _check_batch(items: object, origin: object, ts: object) -> None:
    """Raise EntryError unless the batch fields have the right types and sizes."""
    if not isinstance(items, list | tuple) or not 1 <= len(items) <= MAX_ITEMS:
        raise EntryError(f"a batch carries 1 to {MAX_ITEMS} datagrams")
    for index, item in enumerate(items):
        if not isinstance(item, bytes) or not 0 < len(item) <= MAX_DATAGRAM:
            raise EntryError(f"datagram #{index} must be 1 to {MAX_DATAGRAM} bytes")
    if not isinstance(origin, str) or not origin:
        raise EntryError("origin must be a non-empty string")
    if len(origin.encode("utf-8", "surrogatepass")) > MAX_ORIGIN:
        raise EntryError(f"origin longer than {MAX_ORIGIN} bytes")
    if not isinstance(ts, float) or not math.isfinite(ts):
        raise EntryError("ts must be a finite float")


def pack_batch(items: list[bytes], origin: str, ts: float) -> bytes:
    """Pack datagrams into an entry payload: msgpack [format, origin, ts, [datagrams]]."""
    if isinstance(ts, int) and not isinstance(ts, bool):
        ts = float(ts)
    _check_batch(items, origin, ts)
    try:
        raw = msgpack.packb([BATCH_FORMAT, origin, ts, list(items)], use_bin_type=True)
    except (ValueError, TypeError) as exc:
        raise EntryError(f"cannot pack batch: {exc}") from None
    if len(raw) > MAX_ENTRY:
        raise EntryError(f"packed batch of {len(raw)} bytes exceeds {MAX_ENTRY}")
    return raw


def unpack_batch(raw: bytes) -> Batch:
    """Unpack and validate an entry payload; raise EntryError on any violation."""
    if not isinstance(raw, bytes | bytearray):
        raise EntryError(f"payload must be bytes, not {type(raw).__name__}")
    if len(raw) > MAX_ENTRY:
        raise EntryError(f"payload of {len(raw)} bytes exceeds {MAX_ENTRY}")
    try:
        data = msgpack.unpackb(
            raw,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_DATAGRAM,
            max_str_len=MAX_ORIGIN,
            max_array_len=MAX_ITEMS,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EntryError(f"payload is not a valid batch: {exc}") from None
    if not isinstance(data, list) or len(data) != 4:
        raise EntryError("payload must be [format, origin, ts, datagrams]")
    version, origin, ts, items = data
    if type(version) is not int or version != BATCH_FORMAT:
        raise EntryError(f"unknown batch format {version!r}")
    _check_batch(items, origin, ts)
    return Batch(tuple(items), origin, ts)


CHUNK = 192 * 1024  # plaintext bytes per snapshot chunk (8-byte header included: under MAX_ENTRY)
_CHUNK_HEAD = 8


def seal_chunks(sealer: Sealer, blob: bytes, chunk: int = CHUNK) -> bytes:
    """Seal `blob` as length-prefixed sealed chunks (an empty blob is one empty chunk)."""
    if not 0 < chunk <= MAX_ENTRY - _CHUNK_HEAD:
        raise SealError(f"chunk size {chunk} outside 1..{MAX_ENTRY - _CHUNK_HEAD}")
    parts = [blob[i:i + chunk] for i in range(0, len(blob), chunk)] or [b""]
    out = bytearray()
    for i, part in enumerate(parts):
        sealed = sealer.seal(i.to_bytes(4, "big") + len(parts).to_bytes(4, "big") + part)
        out += len(sealed).to_bytes(4, "big") + sealed
    return bytes(out)


def open_chunks(sealer: Sealer, data: bytes) -> bytes:
    """Open what `seal_chunks` made; raise SealError if anything is missing or altered."""
    pos, parts, total = 0, [], None
    while pos < len(data):
        if pos + 4 > len(data):
            raise SealError("snapshot chunk length cut short")
        n = int.from_bytes(data[pos:pos + 4], "big")
        if pos + 4 + n > len(data):
            raise SealError("snapshot chunk cut short")
        plain = sealer.open(data[pos + 4:pos + 4 + n])
        pos += 4 + n
        if len(plain) < _CHUNK_HEAD:
            raise SealError("snapshot chunk without its header")
        idx, count = int.from_bytes(plain[:4], "big"), int.from_bytes(plain[4:8], "big")
        if idx != len(parts) or (total is not None and count != total):
            raise SealError("snapshot chunks out of order")
        total = count
        parts.append(plain[_CHUNK_HEAD:])
    if total is None or len(parts) != total:
        raise SealError("snapshot truncated")
    return b"".join(parts)
