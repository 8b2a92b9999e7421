"""Cluster key, key derivation, sealing of journal entries and the entry payload codec.

Rules: pysyncobj keeps its journal and snapshots as plaintext pickle (pysyncobj 0.3.17:
pysyncobj/journal.py FileJournal, pysyncobj/serializer.py), so every entry is sealed before it
enters Raft and opened after commit; nothing secret reaches Raft in clear. The cluster key file
holds 64 hex digits (32 random bytes), is a regular file owned by the daemon's uid (root) and
mode 0600 or stricter; anything else is refused with `KeyFileError` naming the file and the
reason. From it, HKDF-SHA256 (RFC 5869) with a fixed salt and one `info` label per use derives
the seal root and pysyncobj's password; the cluster name is part of every label and of the
AAD, so clusters sharing a key file cannot open each other's entries. Payloads are msgpack
batches of raw ha datagrams with explicit limits (`MAX_ENTRY`, `MAX_ITEMS`, `MAX_DATAGRAM`,
`MAX_ORIGIN`), checked both when packing and unpacking; violations raise `EntryError`. Only the
key file functions do I/O.

Sealed format 2 (issue 17 finding 8): `header || nonce (12 random bytes) || AES-256-GCM
ciphertext and 16-byte tag` (NIST SP 800-38D), header = `format (1 byte, 2) || purpose (1) ||
key id (8) || node length (1) || node (UTF-8)`. The AES key is a subkey: HKDF-SHA256 of the seal
root with info = label, purpose, key id, cluster name and the sealing node's name, so every
node, purpose (each journal entry kind, and snapshot chunks) and key generation has its own
key and its own nonce space. The AAD is a label, the cluster name, the whole header and the
caller's context, so the opener derives the subkey from what the header names and a header
that was altered does not open. Anything that does not open raises `SealError`; an entry of
format 1 (before issue 17) raises `SealFormatError` by name, never mis-opened.

Nonce limit: among n entries under one key with random 96-bit nonces, two collide with
probability at most n^2 / 2^97 (birthday bound); a collision under GCM leaks the XOR of two
plaintexts and lets an attacker forge tags, so NIST SP 800-38D section 8.3 caps random-nonce
use at 2^32 invocations per key. A `Sealer` counts its seals per subkey and moves to a fresh
random key id (a new generation, a new subkey) after `KEY_SEAL_LIMIT` (2^31, collision
probability under 2^-35); every Sealer also starts with fresh key ids, so a restart never
reuses a key whose count it does not know. Sealing does not bind the Raft index: someone who
can write the journal can drop, repeat or reorder whole entries, not alter or read them.
The nonce, key id and snapshot id sources are injectable only so that tests can make golden
vectors (deterministic bytes); production code never passes them.

Blobs larger than one entry (Raft snapshots) are sealed as chunks by `seal_chunks`: each
chunk is `snapshot id (16 random bytes) || index (4, big-endian) || count (4) || length (4) ||
sealed entry`, sealed with purpose `PURPOSE_SNAPSHOT` and the first 24 bytes as its context
(AAD), so a chunk cannot be reordered, dropped, repeated or spliced in from another snapshot;
`open_chunks` refuses any of these with `SealError`.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
_INFO_SEAL_ROOT = b"hasync/v2/seal-root"
_INFO_SUBKEY = b"hasync/v2/seal-subkey"
_INFO_RAFT = b"hasync/v1/raft-password"
MAX_CLUSTER_NAME = 255  # UTF-8 bytes
MAX_NODE_NAME = 255  # UTF-8 bytes

SEAL_VERSION = 2  # 1: one cluster-wide key, header = version || nonce (before issue 17)
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_ID_SIZE = 8
_HEAD_FIXED = 1 + 1 + KEY_ID_SIZE + 1  # format, purpose, key id, node length
SEAL_OVERHEAD = _HEAD_FIXED + 1 + NONCE_SIZE + TAG_SIZE  # with a one-byte node name
_AAD_PREFIX = b"hasync sealed v2"
PURPOSE_SNAPSHOT = 0  # snapshot chunks; journal entries use their kind (1 to 255)
KEY_SEAL_LIMIT = 1 << 31  # seals per subkey, half of NIST SP 800-38D's 2^32 for random nonces
_OPEN_CACHE = 256  # subkeys kept for opening (one per node, purpose and generation seen)

MAX_ENTRY = 256 * 1024  # a packed batch, before sealing
MAX_ITEMS = 512  # datagrams per batch
MAX_DATAGRAM = 64 * 1024  # one ha datagram (UDP payload)
MAX_ORIGIN = 255  # UTF-8 bytes of the origin node's name
BATCH_FORMAT = 1
NUMBERED_FORMAT = 2  # a batch with its stream and number (pipeline.py)
U64_MAX = (1 << 64) - 1  # as guard/records.py's, which this module cannot import (a cycle)


class KeyFileError(ValueError):
    """The cluster key file is missing, unsafe or malformed (the message says which)."""


class KeyMaterialError(ValueError):
    """A cluster key, cluster name or node name given for sealing is not usable."""


class SealError(ValueError):
    """A sealed entry does not open: too short, malformed header, or failed authentication."""


class SealFormatError(SealError):
    """A sealed entry of an older format (format 1, before issue 17): never opened."""


class EntryError(ValueError):
    """An entry payload violates the batch format or its size limits."""


def _key_file_error(path: Path, reason: str) -> KeyFileError:
    """The error for `path` with `reason`."""
    return KeyFileError(f"cluster key file {str(path)!r}: {reason}")


def _check_key_file(path: Path, info: os.stat_result) -> None:
    """Raise KeyFileError unless `info` is a regular file of ours that no one else can read."""
    if not stat.S_ISREG(info.st_mode):
        raise _key_file_error(path, "not a regular file")
    uid = os.geteuid()
    if info.st_uid != uid:
        raise _key_file_error(path, f"owned by uid {info.st_uid}, not by this daemon's uid "
                              f"{uid}; chown it to uid {uid} and chmod 0600")
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise _key_file_error(path, f"mode {mode:04o} lets group or others in; use 0600")


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
        _check_key_file(path, os.fstat(fd))
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
    seal_root: bytes = field(repr=False)  # the HKDF input of every sealing subkey
    raft_password: str = field(repr=False)


def _name_bytes(name: str, what: str, limit: int) -> bytes:
    """A cluster or node name as UTF-8, validated for use in labels, headers and AAD."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise KeyMaterialError(f"{what} name must be a non-empty string without NUL")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise KeyMaterialError(f"{what} name is not valid UTF-8") from None
    if len(raw) > limit:
        raise KeyMaterialError(f"{what} name longer than {limit} bytes")
    return raw


def _cluster_name_bytes(cluster_name: str) -> bytes:
    """The cluster name as UTF-8, validated for use in labels and AAD."""
    return _name_bytes(cluster_name, "cluster", MAX_CLUSTER_NAME)


def _hkdf(key: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of 32 bytes for one `info`."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=info).derive(key)


def derive_keys(cluster_key: bytes, cluster_name: str) -> Keys:
    """Derive the seal root and the pysyncobj password of one cluster from the cluster key."""
    if not isinstance(cluster_key, bytes) or len(cluster_key) != KEY_SIZE:
        raise KeyMaterialError(f"cluster key must be {KEY_SIZE} bytes")
    name = _cluster_name_bytes(cluster_name)
    return Keys(
        cluster_name=cluster_name,
        seal_root=_hkdf(cluster_key, _INFO_SEAL_ROOT + b"\0" + name),
        raft_password=_hkdf(cluster_key, _INFO_RAFT + b"\0" + name).hex(),
    )


def derive_subkey(keys: Keys, purpose: int, key_id: bytes, node: str) -> bytes:
    """The AES-256 key of one node, purpose and generation (`key_id`): HKDF of the seal root,
    info = label NUL purpose key_id cluster NUL node (the cluster name holds no NUL)."""
    info = (_INFO_SUBKEY + b"\0" + bytes((purpose,)) + key_id
            + _cluster_name_bytes(keys.cluster_name) + b"\0"
            + _name_bytes(node, "node", MAX_NODE_NAME))
    return _hkdf(keys.seal_root, info)


def random_nonce() -> bytes:
    """A fresh random 96-bit GCM nonce (NIST SP 800-38D section 8.2.2)."""
    return os.urandom(NONCE_SIZE)


def random_key_id() -> bytes:
    """A fresh random key id: a new generation of subkeys."""
    return os.urandom(KEY_ID_SIZE)


def _purpose(purpose: object) -> int:
    """A purpose byte (0 to 255), or SealError (a hostile log may hold any kind)."""
    if isinstance(purpose, bool) or not isinstance(purpose, int):
        raise SealError(f"purpose must be an integer, not {type(purpose).__name__}")
    if not 0 <= purpose <= 255:
        raise SealError(f"purpose {purpose} outside 0..255")
    return int(purpose)


@dataclass(slots=True)
class _SealKey:
    """One purpose's current subkey on the sealing side, and how often it sealed."""

    key_id: bytes
    aead: AESGCM
    seals: int = 0


class Sealer:
    """Seals (as `node`) and opens (any node's) journal entries of one cluster; thread-safe."""

    def __init__(self, keys: Keys, node: str, nonce: Callable[[], bytes] = random_nonce,
                 key_id: Callable[[], bytes] = random_key_id,
                 limit: int = KEY_SEAL_LIMIT) -> None:
        self._keys = keys
        self._node = node
        node_raw = _name_bytes(node, "node", MAX_NODE_NAME)
        self._node_field = bytes((len(node_raw),)) + node_raw
        self._nonce, self._key_id = nonce, key_id  # tests only: golden vectors
        self._limit = limit
        self._aad = (_AAD_PREFIX + bytes((len(_cluster_name_bytes(keys.cluster_name)),))
                     + _cluster_name_bytes(keys.cluster_name))
        self._lock = threading.Lock()
        self._sealing: dict[int, _SealKey] = {}
        self._opening: dict[tuple[int, bytes, bytes], AESGCM] = {}
        self._rotations = 0

    def counts(self) -> dict[str, int]:
        """Seals under each purpose's current subkey, and generations moved on (rotations)."""
        with self._lock:
            out = {f"seals_purpose_{p}": k.seals for p, k in sorted(self._sealing.items())}
            out["key_rotations"] = self._rotations
            return out

    def _sealing_key(self, purpose: int) -> _SealKey:
        """This purpose's subkey, counted; a fresh generation once the limit is reached."""
        with self._lock:
            current = self._sealing.get(purpose)
            if current is None or current.seals >= self._limit:
                key_id = self._key_id()
                if not isinstance(key_id, bytes) or len(key_id) != KEY_ID_SIZE:
                    raise SealError(f"key id source gave {key_id!r}, not {KEY_ID_SIZE} bytes")
                if current is not None:
                    self._rotations += 1
                current = _SealKey(key_id, AESGCM(derive_subkey(self._keys, purpose, key_id,
                                                                self._node)))
                self._sealing[purpose] = current
            current.seals += 1
            return current

    def seal(self, payload: bytes, purpose: int, context: bytes = b"") -> bytes:
        """Encrypt and authenticate `payload` for `purpose` under a fresh random nonce;
        `context` is bound as AAD but not stored (the opener must pass the same)."""
        if not isinstance(payload, bytes | bytearray):
            raise SealError(f"payload must be bytes, not {type(payload).__name__}")
        if len(payload) > MAX_ENTRY:
            raise SealError(f"payload of {len(payload)} bytes exceeds {MAX_ENTRY}")
        purpose = _purpose(purpose)
        nonce = self._nonce()
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise SealError(f"nonce source gave {nonce!r}, not {NONCE_SIZE} bytes")
        key = self._sealing_key(purpose)
        header = bytes((SEAL_VERSION, purpose)) + key.key_id + self._node_field
        return header + nonce + key.aead.encrypt(nonce, bytes(payload),
                                                 self._aad + header + bytes(context))

    def _opening_key(self, purpose: int, key_id: bytes, node_raw: bytes) -> AESGCM:
        """The subkey a header names (derived once, kept in a bounded cache)."""
        ident = (purpose, key_id, node_raw)
        with self._lock:
            aead = self._opening.get(ident)
        if aead is None:
            try:
                node = node_raw.decode("utf-8")
                aead = AESGCM(derive_subkey(self._keys, purpose, key_id, node))
            except (UnicodeDecodeError, KeyMaterialError):
                raise SealError("sealed entry names an invalid node") from None
            with self._lock:
                if len(self._opening) >= _OPEN_CACHE:
                    del self._opening[next(iter(self._opening))]
                self._opening[ident] = aead
        return aead

    def open(self, blob: bytes, purpose: object, context: bytes = b"") -> bytes:
        """Authenticate and decrypt an entry sealed for `purpose` (and `context`) by any node
        of the cluster; raise SealError (SealFormatError for another format) if anything is
        wrong."""
        if not isinstance(blob, bytes | bytearray):
            raise SealError(f"sealed entry must be bytes, not {type(blob).__name__}")
        if blob[:1] == b"\x01":
            raise SealFormatError("sealed entry of format 1 (before issue 17: one cluster-wide "
                                  "key) is no longer opened: start with a fresh journal")
        if blob[:1] and blob[0] != SEAL_VERSION:
            raise SealError(f"unknown seal format {blob[0]}, expected {SEAL_VERSION}")
        if len(blob) < SEAL_OVERHEAD:
            raise SealError(f"sealed entry of {len(blob)} bytes is shorter than {SEAL_OVERHEAD}")
        if len(blob) > MAX_ENTRY + SEAL_OVERHEAD + MAX_NODE_NAME:
            raise SealError(f"sealed entry of {len(blob)} bytes is too long")
        expected = _purpose(purpose)
        if blob[1] != expected:
            raise SealError(f"sealed for purpose {blob[1]}, not {expected}")
        node_len = blob[_HEAD_FIXED - 1]
        head_len = _HEAD_FIXED + node_len
        if node_len == 0 or len(blob) < head_len + NONCE_SIZE + TAG_SIZE:
            raise SealError("sealed entry header cut short")
        header = bytes(blob[:head_len])
        aead = self._opening_key(expected, header[2:2 + KEY_ID_SIZE], header[_HEAD_FIXED:])
        nonce = bytes(blob[head_len:head_len + NONCE_SIZE])
        try:
            return aead.decrypt(nonce, bytes(blob[head_len + NONCE_SIZE:]),
                                self._aad + header + bytes(context))
        except InvalidTag:
            raise SealError("authentication failed (tampered, moved, or another key or "
                            "cluster)") from None


@dataclass(frozen=True, slots=True)
class Batch:
    """One journal entry's payload: raw ha datagrams, the node that sent them, its time."""

    items: tuple[bytes, ...]
    origin: str
    ts: float
    stream: int = 0  # format 2: the origin's stream and the batch's number in it (pipeline.py)
    seq: int = 0  # 0: format 1, not numbered (applied as it comes)


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


def _check_number(stream: object, seq: object) -> None:
    """Raise EntryError unless (stream, seq) is a u64 and a positive u64."""
    if type(stream) is not int or not 0 <= stream <= U64_MAX:
        raise EntryError("a batch's stream must be a u64")
    if type(seq) is not int or not 0 < seq <= U64_MAX:
        raise EntryError("a batch's number must be a positive u64")


def pack_batch(items: list[bytes], origin: str, ts: float, stream: int = 0,
               seq: int = 0) -> bytes:
    """Pack datagrams into an entry payload: msgpack [format, origin, ts, [datagrams]], and
    for a numbered batch (seq > 0) format 2: [2, origin, ts, [datagrams], stream, seq]."""
    if isinstance(ts, int) and not isinstance(ts, bool):
        ts = float(ts)
    _check_batch(items, origin, ts)
    fields: list[Any] = [BATCH_FORMAT, origin, ts, list(items)]
    if seq:
        _check_number(stream, seq)
        fields = [NUMBERED_FORMAT, origin, ts, list(items), stream, seq]
    try:
        raw = msgpack.packb(fields, use_bin_type=True)
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
    if not isinstance(data, list) or not data or type(data[0]) is not int or data[0] not in (
            BATCH_FORMAT, NUMBERED_FORMAT):
        found = data[0] if isinstance(data, list) and data else type(data).__name__
        raise EntryError(f"unknown batch format {found!r}")
    if len(data) != (4 if data[0] == BATCH_FORMAT else 6):
        raise EntryError("payload must be [format, origin, ts, datagrams(, stream, seq)]")
    _, origin, ts, items, *number = data
    _check_batch(items, origin, ts)
    if number:
        _check_number(*number)
        return Batch(tuple(items), origin, ts, number[0], number[1])
    return Batch(tuple(items), origin, ts)


CHUNK = 192 * 1024  # plaintext bytes per snapshot chunk (under MAX_ENTRY)
SNAPSHOT_ID_SIZE = 16
_CHUNK_HEAD = SNAPSHOT_ID_SIZE + 4 + 4  # snapshot id, index, count: the chunk's AAD context
_MAX_CHUNKS = 1 << 20  # 192 GiB of snapshot: a larger count is a corrupt header


def random_snapshot_id() -> bytes:
    """A fresh random snapshot id (binds the chunks of one snapshot together)."""
    return os.urandom(SNAPSHOT_ID_SIZE)


def seal_chunks(sealer: Sealer, blob: bytes, chunk: int = CHUNK,
                snapshot_id: Callable[[], bytes] = random_snapshot_id) -> bytes:
    """Seal `blob` as chunks bound to one snapshot (an empty blob is one empty chunk)."""
    if not 0 < chunk <= MAX_ENTRY:
        raise SealError(f"chunk size {chunk} outside 1..{MAX_ENTRY}")
    ident = snapshot_id()
    if not isinstance(ident, bytes) or len(ident) != SNAPSHOT_ID_SIZE:
        raise SealError(f"snapshot id source gave {ident!r}, not {SNAPSHOT_ID_SIZE} bytes")
    parts = [blob[i:i + chunk] for i in range(0, len(blob), chunk)] or [b""]
    if len(parts) > _MAX_CHUNKS:
        raise SealError(f"snapshot of {len(parts)} chunks exceeds {_MAX_CHUNKS}")
    out = bytearray()
    for i, part in enumerate(parts):
        head = ident + i.to_bytes(4, "big") + len(parts).to_bytes(4, "big")
        sealed = sealer.seal(part, PURPOSE_SNAPSHOT, context=head)
        out += head + len(sealed).to_bytes(4, "big") + sealed
    return bytes(out)


def open_chunks(sealer: Sealer, data: bytes) -> bytes:
    """Open what `seal_chunks` made; raise SealError if a chunk is missing, extra, moved,
    from another snapshot or altered."""
    pos, parts, first = 0, [], b""
    while pos < len(data):
        if pos + _CHUNK_HEAD + 4 > len(data):
            raise SealError("snapshot chunk header cut short")
        head = bytes(data[pos:pos + _CHUNK_HEAD])
        n = int.from_bytes(data[pos + _CHUNK_HEAD:pos + _CHUNK_HEAD + 4], "big")
        pos += _CHUNK_HEAD + 4
        if pos + n > len(data):
            raise SealError("snapshot chunk cut short")
        idx = int.from_bytes(head[SNAPSHOT_ID_SIZE:SNAPSHOT_ID_SIZE + 4], "big")
        if not parts:
            first = head
        if head[:SNAPSHOT_ID_SIZE] != first[:SNAPSHOT_ID_SIZE]:
            raise SealError("snapshot chunk from another snapshot")
        if idx != len(parts) or head[SNAPSHOT_ID_SIZE + 4:] != first[SNAPSHOT_ID_SIZE + 4:]:
            raise SealError("snapshot chunks out of order")
        parts.append(sealer.open(data[pos:pos + n], PURPOSE_SNAPSHOT, context=head))
        pos += n
    if not parts or len(parts) != int.from_bytes(first[SNAPSHOT_ID_SIZE + 4:], "big"):
        raise SealError("snapshot truncated")
    return b"".join(parts)
