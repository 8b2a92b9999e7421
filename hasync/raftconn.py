"""One Raft TCP connection in pysyncobj's wire format, with bounded reads: the connection
class of hasync/raftnet.py's transport.

Rules:
- `GuardedConnection` speaks pysyncobj 0.3.17's wire format (pysyncobj/tcp_connection.py,
  TcpConnection.send and __processParseMessage: 4-byte native length, Fernet token over
  zlib(pickle((rand key, message))), token timestamps never go back) and offers the interface
  TCPTransport uses (pysyncobj/transport.py), so nodes with and without it interoperate.
  What goes out is zlib's stored (level 0) form: every entry and snapshot chunk is sealed,
  so compressing it only cost the leader ~1.9 ms per 100 KB message per follower (D252);
  any zlib reader reads it.
- Reads go through `FrameReader` (hasync/raftport.py), bounded by `MAX_MESSAGE`; each complete
  message is handed on as soon as its last byte arrives; a message that fails to open closes
  the connection and is counted by reason (pysyncobj drops it without a word).
- Outgoing connections leave from this node's own Raft address, so peers see the address they
  allow. A socket that cannot be created (EMFILE) is counted, never raised into pysyncobj's
  tick. Runs on pysyncobj's tick thread only.
"""

from __future__ import annotations

import base64
import errno
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import pysyncobj.pickle as syncobj_pickle
from cryptography.fernet import InvalidToken
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, set_keepalive

from .raftport import FRAME_HEADER, MAX_MESSAGE, FrameError, FrameReader, PortCounters

_A = TypeVar("_A")
_R = TypeVar("_R")
READ_BATCH = 64  # reads per poll event on one connection
ZLIB_LEVEL = 0  # stored: sealed bytes do not compress (D252); pysyncobj itself uses 3
EV_READ, EV_WRITE, EV_ERROR = POLL_EVENT_TYPE.READ, POLL_EVENT_TYPE.WRITE, POLL_EVENT_TYPE.ERROR


class _BadMessage(Exception):
    """A frame that does not open; the argument names the counter."""


def family(host: str) -> socket.AddressFamily:
    """The address family of an IP literal."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def token_timestamp(token: bytes) -> int:
    """The timestamp of a Fernet token: bytes 1-8 of its payload, which its first 12 base64
    characters hold (the Fernet spec: version, timestamp, IV, ciphertext, HMAC)."""
    return int.from_bytes(base64.urlsafe_b64decode(token[:12])[1:9], "big")


class GuardedConnection:
    """One Raft TCP connection, with the interface pysyncobj's TCPTransport uses."""

    def __init__(self, poller: Any, counters: PortCounters, *, sock: socket.socket | None = None,
                 timeout: float = 3.5, send_size: int = 2 ** 16, recv_size: int = 2 ** 16,
                 keepalive: tuple[int, int, int] | None = None, source_ip: str | None = None,
                 limit: int = MAX_MESSAGE) -> None:
        self.sendRandKey: bytes | None = None  # names as in pysyncobj: TCPTransport sets them
        self.recvRandKey: bytes | None = None
        self.recvLastTimestamp = 0
        self.encryptor: Any = None
        self._poller, self._counters = poller, counters
        self._timeout, self._send_size, self._recv_size = timeout, send_size, recv_size
        self._keepalive, self._source_ip = keepalive, source_ip
        self._reader = FrameReader(limit)
        self._out = bytearray()
        self._sock = sock
        self._fd: int | None = sock.fileno() if sock is not None else None
        self._state = CONNECTION_STATE.CONNECTED if sock is not None else (
            CONNECTION_STATE.DISCONNECTED)
        self._last_read = time.monotonic()
        self._on_message: Callable[[Any], None] | None = None
        self._on_connected: Callable[[], None] | None = None
        self._on_disconnected: Callable[[], None] | None = None

    # ---- the interface of pysyncobj's TcpConnection ----
    def setOnConnectedCallback(self, callback: Callable[[], None] | None) -> None:
        """As TcpConnection.setOnConnectedCallback."""
        self._on_connected = callback

    def setOnMessageReceivedCallback(
            self, callback: Callable[[Any], None] | None) -> None:
        """As TcpConnection.setOnMessageReceivedCallback."""
        self._on_message = callback

    def setOnDisconnectedCallback(
            self, callback: Callable[[], None] | None) -> None:
        """As TcpConnection.setOnDisconnectedCallback."""
        self._on_disconnected = callback

    @property
    def state(self) -> int:
        """CONNECTION_STATE.DISCONNECTED, CONNECTING or CONNECTED."""
        return self._state

    def fileno(self) -> int | None:
        """The socket's descriptor while open."""
        return self._fd

    def getSendBufferSize(self) -> int:
        """Bytes queued for sending."""
        return len(self._out)

    def start(self) -> None:
        """Watch an accepted socket (the listener admitted it)."""
        if self._sock is not None and self._fd is not None:
            self._set_keepalive(self._sock)
            self._poller.subscribe(self._fd, self._on_event, EV_READ | EV_WRITE | EV_ERROR)

    def connect(self, host: str | None, port: int) -> bool:
        """Start a non-blocking connect from this node's own address; False if it failed."""
        if host is None:
            return False
        self._drop_socket()
        self._state = CONNECTION_STATE.DISCONNECTED
        try:
            sock = socket.socket(family(host), socket.SOCK_STREAM)
        except OSError as exc:  # EMFILE: pysyncobj's tick would die of it
            self._counters.count(f"connect_error:{errno.errorcode.get(exc.errno or 0)}", exc)
            return False
        try:
            self._tune(sock)
            if self._source_ip is not None and family(self._source_ip) == family(host):
                sock.bind((self._source_ip, 0))
            sock.connect((host, port))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH):
                self._counters.count(f"connect_error:{errno.errorcode.get(exc.errno or 0)}", exc)
            return False
        self._sock, self._fd = sock, sock.fileno()
        self._reader.clear()
        self._out = bytearray()
        self._last_read = time.monotonic()
        self._state = CONNECTION_STATE.CONNECTING
        self._poller.subscribe(self._fd, self._on_event, EV_READ | EV_WRITE | EV_ERROR)
        return True

    def send(self, message: Any) -> None:
        """Frame, seal and queue one message, then write what the socket takes."""
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = zlib.compress(syncobj_pickle.dumps(message), ZLIB_LEVEL)
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(time.monotonic()))
        self._out += FRAME_HEADER.pack(len(data))
        self._out += data
        self._flush()
        if self._out and self._fd is not None and self._state == CONNECTION_STATE.CONNECTED:
            # pysyncobj's send leaves the rest to the next send (~a heartbeat later: a
            # snapshot crossed at 5 MB/s); the poller's write event sends it now (D252)
            self._poller.subscribe(self._fd, self._on_event, EV_READ | EV_WRITE | EV_ERROR)

    def disconnect(self) -> None:
        """Close; the disconnected callback runs if the connection was open."""
        notify = self._on_disconnected is not None and (
            self._state != CONNECTION_STATE.DISCONNECTED)
        self.sendRandKey = self.recvRandKey = None
        self.recvLastTimestamp = 0
        self._drop_socket()
        self._state = CONNECTION_STATE.DISCONNECTED
        if notify and self._on_disconnected is not None:
            self._on_disconnected()

    # ---- internals ----
    def _tune(self, sock: socket.socket) -> None:
        """Buffer sizes, no Nagle, keepalive, non-blocking (as pysyncobj sets them)."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_size)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._set_keepalive(sock)
        sock.setblocking(False)

    def _set_keepalive(self, sock: socket.socket) -> None:
        if self._keepalive is not None:
            set_keepalive(sock, *self._keepalive)

    def _drop_socket(self) -> None:
        if self._fd is not None:
            self._poller.unsubscribe(self._fd)
            self._fd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._out = bytearray()
        self._reader.clear()

    def _timed_out(self) -> bool:
        """pysyncobj's rule: nothing read for `connectionTimeout` closes the connection."""
        if time.monotonic() - self._last_read > self._timeout:
            self.disconnect()
        return self._state == CONNECTION_STATE.DISCONNECTED

    def _on_event(self, fd: int, event: int) -> None:
        """Poller callback."""
        if fd != self._fd or self._sock is None:
            return  # a stale event for a descriptor this connection gave up
        if event & EV_ERROR or self._timed_out():
            self.disconnect()
            return
        if self._state == CONNECTION_STATE.CONNECTING:
            if self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.disconnect()
                return
            if self._on_connected is not None:
                self._on_connected()
            if self._state != CONNECTION_STATE.DISCONNECTED:
                self._state = CONNECTION_STATE.CONNECTED
                self._last_read = time.monotonic()
            return
        if event & EV_WRITE:
            self._flush()
            if self._fd is None:
                return
            self._poller.subscribe(self._fd, self._on_event,
                                   EV_READ | EV_ERROR | (EV_WRITE if self._out else 0))
        if event & EV_READ:
            self._read()

    def _io(self, op: Callable[[_A], _R], arg: _A) -> _R | None:
        """`op(arg)` on the socket, or None: it would block, or it failed and disconnected."""
        try:
            return op(arg)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self.disconnect()
            return None

    def _flush(self) -> None:
        """Write what the socket takes; the written head is deleted in place."""
        if self._timed_out() or self._sock is None:
            return
        while self._out:
            sent = self._io(self._sock.send, self._out)
            if sent is None or sent <= 0:
                return
            del self._out[:sent]

    def _read(self) -> None:
        """Read up to READ_BATCH chunks, handing each complete message on at once."""
        for _ in range(READ_BATCH):
            if self._sock is None:
                return
            chunk = self._io(self._sock.recv, self._recv_size)
            if chunk is None:
                return
            if not chunk:
                self.disconnect()
                return
            self._last_read = time.monotonic()
            try:
                self._reader.feed(chunk)
                self._dispatch()
            except FrameError as exc:
                self._counters.count(exc.reason, exc)
                self.disconnect()
                return

    def _dispatch(self) -> None:
        """Open and hand on every complete message; a bad one closes the connection."""
        while self._state != CONNECTION_STATE.DISCONNECTED:
            frame = self._reader.next()
            if frame is None:
                return
            try:
                message = self._open(frame)
            except _BadMessage as exc:
                self._counters.count(str(exc), "a message did not open")
                self.disconnect()
                return
            if self._on_message is not None:
                self._on_message(message)

    def _open(self, frame: bytes) -> Any:
        """One message out of a frame; _BadMessage(counter name) if it does not open."""
        if self.encryptor:
            try:  # one check of the token (extract_timestamp would decode and check it again)
                plain = self.encryptor.decrypt(frame)
                stamp = token_timestamp(frame)  # authenticated by decrypt
            except (InvalidToken, TypeError, ValueError):
                raise _BadMessage("bad_token") from None
            if stamp < self.recvLastTimestamp:
                raise _BadMessage("stale_timestamp")
            self.recvLastTimestamp = stamp
            frame = plain
        try:
            message = syncobj_pickle.loads(zlib.decompress(frame))
        except Exception:  # authenticated (or no password): a broken peer, counted
            raise _BadMessage("bad_payload") from None
        if self.recvRandKey:
            if not (isinstance(message, tuple) and len(message) == 2
                    and message[0] == self.recvRandKey):
                raise _BadMessage("bad_rand_key")
            message = message[1]
        return message
