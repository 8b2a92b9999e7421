"""The CLI <-> daemon control channel: one JSON request line, one JSON response line.

Rules: only root (or the daemon's own euid) talks to the daemon: the unix socket is mode 0600
in a directory of mode 0700 that the daemon owns, and the server checks every peer's
SO_PEERCRED; a request is one newline-ended line of at most 64 KiB, a UTF-8 JSON object with a
"cmd" string, read under a per-connection timeout; the answer is one line, `{"ok": true,
"result": {...}}` or `{"ok": false, "error": reason, "message": text}`, then the connection
closes; no client input stops the server: each bad request is answered when possible and
counted by reason; remote bad input is `BadRequest`, local misuse `ControlUsageError`, and
what the CLI cannot get through is `ControlError` (never a traceback for the user).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import socket
import stat
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024  # bytes, newline included
MAX_RESPONSE = 16 * 1024 * 1024
READ_TIMEOUT = 5.0  # seconds for a client to send its whole request line
WRITE_TIMEOUT = 5.0
CMD_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
# Directories shared with the rest of the system: never made 0700, never hold the socket.
SYSTEM_DIRS = frozenset({
    "/", "/run", "/var/run", "/tmp", "/var/tmp", "/dev", "/dev/shm", "/var", "/var/lib",
    "/etc", "/usr", "/home", "/root", "/proc", "/sys",
})

JSONDict = dict[str, Any]
Handler = Callable[[JSONDict], Awaitable[JSONDict] | JSONDict]


class ControlError(Exception):
    """The control channel cannot be used: daemon absent, access denied, timeout, bad answer."""


class DaemonNotRunning(ControlError):
    """No daemon listens on the control socket (file missing or connection refused)."""


class AlreadyRunning(ControlError):
    """Another daemon already listens on the control socket."""


class CommandFailed(ControlError):
    """The daemon answered the request with an error; `code` is its reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"hasync: {message} ({code})")
        self.code = code
        self.message = message


class ControlUsageError(ValueError):
    """A local caller misused this module (bad handler table, command name or arguments)."""


class BadRequest(ValueError):
    """A client's request is unacceptable; handlers raise it (reason "bad_args") too."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- server -------------------------------------------------------------------------------

class ControlServer:
    """asyncio unix-socket server dispatching `{"cmd": name, **args}` to `handlers[name](args)`."""

    def __init__(self, path: str | os.PathLike[str], handlers: dict[str, Handler], *,
                 read_timeout: float = READ_TIMEOUT, max_request: int = MAX_REQUEST) -> None:
        for name, handler in handlers.items():
            if not isinstance(name, str) or not CMD_RE.fullmatch(name):
                raise ControlUsageError(f"bad command name {name!r}: must match {CMD_RE.pattern}")
            if not callable(handler):
                raise ControlUsageError(f"handler for {name!r} is not callable")
        if read_timeout <= 0 or max_request < 2:
            raise ControlUsageError("read_timeout must be > 0 and max_request >= 2")
        self.path = Path(path)
        self._handlers = dict(handlers)
        self._read_timeout = read_timeout
        self._max_request = max_request
        self._counters: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def counters(self) -> dict[str, int]:
        """Connections, answered requests ("ok") and every rejection, by reason."""
        return dict(self._counters)

    async def start(self) -> None:
        """Secure the directory, replace a stale socket (never a live one), and listen."""
        if self._server is not None:
            raise ControlUsageError("ControlServer.start() called twice")
        prepare_dir(self.path.parent)
        remove_stale_socket(self.path)
        sock, self._identity = _bind(self.path)
        # limit: the longest line readuntil() accepts is limit + 1 bytes with its newline
        self._server = await asyncio.start_unix_server(
            self._on_connect, sock=sock, limit=self._max_request - 1)
        log.info("control socket listening on %s", self.path)

    async def close(self) -> None:
        """Stop listening, drop open connections and remove our socket file."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()
        _unlink_if_ours(self.path, self._identity)

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """Serve one connection: one request, one response, close; never raises."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._counters["connections"] += 1
        try:
            response = await self._answer(reader, writer)
            await self._send(writer, response)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not take the server down
            self._counters["internal"] += 1
            log.exception("control connection failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):  # the peer reset or hung
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            if task is not None:
                self._tasks.discard(task)

    async def _answer(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> JSONDict:
        """The response object for this connection's request, good or bad."""
        try:
            self._check_peer(writer)
            line = await self._read_line(reader)
            cmd, args = parse_request(line)
            result = await self._dispatch(cmd, args)
        except BadRequest as exc:
            self._counters[exc.reason] += 1
            log.debug("control request rejected: %s: %s", exc.reason, exc.message)
            return {"ok": False, "error": exc.reason, "message": exc.message}
        self._counters["ok"] += 1
        return {"ok": True, "result": result}

    def _check_peer(self, writer: asyncio.StreamWriter) -> None:
        """Accept root or our own euid only (SO_PEERCRED)."""
        sock = writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        _pid, uid, _gid = _PEERCRED.unpack(raw)
        if uid not in (0, os.geteuid()):
            raise BadRequest("forbidden", f"uid {uid} may not use the control socket")

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes:
        """One newline-ended request line within the size and time limits."""
        try:
            async with asyncio.timeout(self._read_timeout):
                return await reader.readuntil(b"\n")
        except TimeoutError:
            raise BadRequest("timeout", f"no full request line within {self._read_timeout} s")\
                from None
        except asyncio.IncompleteReadError as exc:
            raise BadRequest("eof", f"connection closed after {len(exc.partial)} bytes, "
                             "before the request's newline") from None
        except asyncio.LimitOverrunError:
            raise BadRequest("oversize", f"request line longer than {self._max_request} bytes")\
                from None

    async def _dispatch(self, cmd: str, args: JSONDict) -> JSONDict:
        """Run the command's handler; its failures become error responses."""
        handler = self._handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise BadRequest("unknown_cmd", f"unknown command {cmd!r} (known: {known})")
        try:
            result = handler(args)
            if inspect.isawaitable(result):
                result = await result
        except BadRequest:
            raise
        except Exception as exc:
            log.exception("control command %r failed", cmd)
            raise BadRequest("handler_error", f"{cmd} failed: {type(exc).__name__}: {exc}") \
                from None
        if not isinstance(result, dict):
            log.error("control handler %r returned %s, not a dict", cmd, type(result).__name__)
            raise BadRequest("bad_result", f"{cmd} returned no result object")
        return result

    async def _send(self, writer: asyncio.StreamWriter, response: JSONDict) -> None:
        """Write the response line; a peer that went away is not an error."""
        try:
            data = encode_line(response)
        except ValueError:
            log.exception("control response not encodable")
            self._counters["bad_result"] += 1
            data = encode_line({"ok": False, "error": "bad_result",
                                "message": "the result could not be encoded"})
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(data)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()


def parse_request(line: bytes) -> tuple[str, JSONDict]:
    """(cmd, args) from one request line; anything else raises BadRequest."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("bad_encoding", "request is not UTF-8") from None
    try:
        request = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int too long, deep nesting
        raise BadRequest("bad_json", f"request is not JSON: {str(exc)[:100]}") from None
    if not isinstance(request, dict):
        raise BadRequest("not_object", "request must be a JSON object")
    cmd = request.pop("cmd", None)
    if not isinstance(cmd, str):
        raise BadRequest("bad_cmd", 'request needs a "cmd" string')
    return cmd, request


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def encode_line(obj: JSONDict) -> bytes:
    """One compact JSON line; ValueError if `obj` is not plain JSON or too large."""
    try:
        text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not encodable as JSON: {exc}") from None
    data = text.encode() + b"\n"
    if len(data) > MAX_RESPONSE:
        raise ValueError(f"line of {len(data)} bytes is over {MAX_RESPONSE}")
    return data


# --- the socket file and its directory ------------------------------------------------------

def prepare_dir(directory: Path) -> None:
    """Create `directory` mode 0700, or make an existing one ours and 0700."""
    if os.path.normpath(directory) in SYSTEM_DIRS:
        raise ControlError(f"control socket directory {directory} is a system directory; "
                           "give the socket a directory of its own (e.g. /run/hasync)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"control socket directory {directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise ControlError(f"control socket directory {directory} belongs to uid {st.st_uid}, "
                           f"not {os.geteuid()}")
    if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
        raise ControlError(f"control socket directory {directory} is shared (world-writable "
                           "or sticky); give the socket a directory of its own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def remove_stale_socket(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("removed stale control socket %s", path)
        return
    except FileNotFoundError:
        return
    except TimeoutError:
        pass  # accepted by a listener with a full backlog: live
    finally:
        probe.close()
    raise AlreadyRunning(f"another hasync daemon is listening on {path}")


def _bind(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at `path`, mode 0600 before listen() (nobody connects earlier)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
        st = os.stat(path)
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    return sock, (st.st_dev, st.st_ino)


def _unlink_if_ours(path: Path, identity: tuple[int, int] | None) -> None:
    """Remove the socket file unless another daemon has replaced it since."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)


# --- client (synchronous, for the CLI) -------------------------------------------------------

def request(path: str | os.PathLike[str], cmd: str, timeout: float = 5.0,
            **args: Any) -> JSONDict:
    """Send `{"cmd": cmd, **args}` to the daemon and return its result object."""
    if not isinstance(cmd, str) or not CMD_RE.fullmatch(cmd):
        raise ControlUsageError(f"bad command name {cmd!r}: must match {CMD_RE.pattern}")
    try:
        line = encode_line({"cmd": cmd, **args})
    except ValueError as exc:
        raise ControlUsageError(f"arguments of {cmd!r}: {exc}") from None
    if len(line) > MAX_REQUEST:
        raise ControlUsageError(f"request of {len(line)} bytes is over {MAX_REQUEST}")
    where = os.fspath(path)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _connect(sock, where, timeout)
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(line)  # a daemon that refused us early still sent its reason
            data = _read_response(sock, deadline)
        except TimeoutError:
            raise ControlError(f"hasync did not answer within {timeout} s on {where}") from None
        except OSError as exc:
            raise ControlError(f"control socket {where}: {exc.strerror or exc}") from None
    return _parse_response(data, where)


def _connect(sock: socket.socket, where: str, timeout: float) -> None:
    """Connect, turning each failure into a sentence for the user."""
    try:
        sock.connect(where)
    except FileNotFoundError:
        raise DaemonNotRunning(f"hasync is not running (no control socket at {where})") from None
    except ConnectionRefusedError:
        raise DaemonNotRunning(f"hasync is not running (nothing listens on {where})") from None
    except PermissionError:
        raise ControlError(f"permission denied on {where}: the control socket is for root")\
            from None
    except TimeoutError:
        raise ControlError(f"hasync did not accept a connection within {timeout} s") from None
    except OSError as exc:
        raise ControlError(f"cannot connect to {where}: {exc.strerror or exc}") from None


def _read_response(sock: socket.socket, deadline: float) -> bytes:
    """Bytes up to the first newline (or EOF), within the deadline and MAX_RESPONSE."""
    chunks: list[bytes] = []
    size = 0
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""  # the daemon closed with our request unread: keep what it sent
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            return b"".join(chunks).partition(b"\n")[0]
        if size > MAX_RESPONSE:
            raise ControlError(f"response from hasync longer than {MAX_RESPONSE} bytes")


def _parse_response(data: bytes, where: str) -> JSONDict:
    """The result of a response line; CommandFailed for an error answer."""
    if not data:
        raise ControlError(f"hasync closed the connection on {where} without answering")
    try:
        response = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ControlError(f"bad response from hasync on {where}: not JSON") from None
    if isinstance(response, dict) and response.get("ok") is True:
        result = response.get("result")
        if isinstance(result, dict):
            return result
    elif isinstance(response, dict) and response.get("ok") is False:
        code, message = response.get("error"), response.get("message")
        if isinstance(code, str) and isinstance(message, str):
            raise CommandFailed(code, message)
    raise ControlError(f"bad response from hasync on {where}: {data[:100]!r}")
