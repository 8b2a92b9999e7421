"""Tests of hasync.control: round trips, hostile clients, the socket's permissions and lifecycle."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hasync.control import (
    MAX_REQUEST,
    AlreadyRunning,
    BadRequest,
    CommandFailed,
    ControlError,
    ControlServer,
    ControlUsageError,
    DaemonNotRunning,
    Handler,
    request,
)

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


async def _slow(args: dict[str, Any]) -> dict[str, Any]:
    """An async handler."""
    await asyncio.sleep(0.01)
    return {"slept": True, "args": args}


def _boom(args: dict[str, Any]) -> dict[str, Any]:
    """A handler with a bug."""
    raise RuntimeError("kaput")


def _picky(args: dict[str, Any]) -> dict[str, Any]:
    """A handler that rejects its arguments as remote bad input."""
    raise BadRequest("bad_args", f"unexpected arguments: {sorted(args)}")


HANDLERS: dict[str, Handler] = {
    "status": lambda args: {"state": "BACKUP", "args": args},
    "slow": _slow,
    "boom": _boom,
    "picky": _picky,
    "notdict": lambda args: ["a list"],  # type: ignore[dict-item]
    "notjson": lambda args: {"x": {1, 2}},
}


class Running:
    """A ControlServer on an event loop in a background thread."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = ControlServer(path, HANDLERS, **kwargs)
        try:
            self.call(self.server.start())
        except BaseException:
            self._stop_loop()
            raise

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def counters(self) -> dict[str, int]:
        """The server's counters, read on its own loop."""
        async def read() -> dict[str, int]:
            return self.server.counters
        return self.call(read())

    def wait_count(self, reason: str, at_least: int = 1) -> dict[str, int]:
        """Counters once `reason` has reached `at_least` (connections end asynchronously)."""
        deadline = time.monotonic() + 5
        while (counters := self.counters()).get(reason, 0) < at_least:
            assert time.monotonic() < deadline, counters
            time.sleep(0.01)
        return counters

    def stop(self) -> None:
        """Close the server and its loop."""
        self.call(self.server.close())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    """A socket path in a directory the server has to create."""
    return tmp_path / "run" / "control.sock"


@pytest.fixture
def running(sock_path: Path) -> Iterator[Running]:
    """A started server with a short read timeout."""
    srv = Running(sock_path, read_timeout=0.5)
    yield srv
    srv.stop()


def raw(path: Path, data: bytes, *, shut: bool = True, timeout: float = 5.0) -> bytes:
    """Send raw bytes (then half-close unless `shut` is false) and return all that comes back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


def error_of(reply: bytes) -> str:
    """The `error` reason of a one-line error response."""
    import json
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1, reply
    response = json.loads(reply)
    assert response["ok"] is False and isinstance(response["message"], str), response
    return str(response["error"])


# --- round trips ---------------------------------------------------------------------------

def test_round_trip(running: Running) -> None:
    path = running.path
    assert request(path, "status") == {"state": "BACKUP", "args": {}}
    assert request(str(path), "status", verbose=True, sa=[1, "x"]) == {
        "state": "BACKUP", "args": {"verbose": True, "sa": [1, "x"]}}
    assert request(path, "slow", n=1) == {"slept": True, "args": {"n": 1}}
    assert running.counters() == {"connections": 3, "ok": 3}


def test_raw_protocol_is_one_json_line(running: Running) -> None:
    reply = raw(running.path, b'{"cmd": "status", "x": 1}\n', shut=False)
    assert reply == b'{"ok":true,"result":{"state":"BACKUP","args":{"x":1}}}\n'


def test_unknown_command(running: Running) -> None:
    with pytest.raises(CommandFailed) as info:
        request(running.path, "frobnicate")
    assert info.value.code == "unknown_cmd"
    assert "unknown command 'frobnicate'" in str(info.value)
    assert "status" in info.value.message
    assert running.counters()["unknown_cmd"] == 1
    assert request(running.path, "status")["state"] == "BACKUP"


def test_handler_failures_are_answered_and_counted(running: Running) -> None:
    expected = {"boom": "handler_error", "picky": "bad_args", "notdict": "bad_result",
                "notjson": "bad_result"}
    for cmd, code in expected.items():
        with pytest.raises(CommandFailed) as info:
            request(running.path, cmd, a=1)
        assert info.value.code == code, info.value
    assert "RuntimeError: kaput" in _message_of(running.path, "boom")
    counters = running.counters()
    assert counters["handler_error"] == 2
    assert (counters["bad_args"], counters["bad_result"]) == (1, 2)
    assert request(running.path, "status")["state"] == "BACKUP"


def _message_of(path: Path, cmd: str) -> str:
    """The message of the error the daemon answers `cmd` with."""
    with pytest.raises(CommandFailed) as info:
        request(path, cmd)
    return info.value.message


@pytest.mark.parametrize(("data", "reason"), [
    (b"not json\n", "bad_json"),
    (b"\n", "bad_json"),
    (b'{"cmd": "status"\n', "bad_json"),
    (b'{"cmd": NaN}\n', "bad_json"),
    (b"[" * 50_000 + b"\n", "bad_json"),
    (b'{"cmd": "status", "n": ' + b"9" * 5000 + b"}\n", "bad_json"),
    (b'["status"]\n', "not_object"),
    (b'"status"\n', "not_object"),
    (b"{}\n", "bad_cmd"),
    (b'{"cmd": 3}\n', "bad_cmd"),
    (b'{"command": "status"}\n', "bad_cmd"),
    (b'{"cmd": "status"}', "eof"),
    (b"", "eof"),
    (b"\xff\xfe{}\n", "bad_encoding"),
])
def test_malformed_requests(running: Running, data: bytes, reason: str) -> None:
    assert error_of(raw(running.path, data)) == reason
    assert running.counters()[reason] == 1
    assert request(running.path, "status")["state"] == "BACKUP"


def test_client_closing_at_once_is_counted(running: Running) -> None:
    for _ in range(5):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(running.path))
    assert running.wait_count("eof", 5)["connections"] == 5
    assert request(running.path, "status")["state"] == "BACKUP"


# --- hostile input -------------------------------------------------------------------------

def _outcomes(counters: dict[str, int]) -> int:
    """How many connections ended, by any outcome."""
    return sum(n for reason, n in counters.items() if reason != "connections")


def test_random_bytes_never_stop_the_server(running: Running) -> None:
    rng = random.Random(1234)
    for i in range(300):
        data = os.urandom(rng.choice([0, 1, 7, 100, 4096, 70_000]))
        if i % 3 == 0:
            data = data.replace(b"\n", b"")  # one line: over 64 KiB is oversize
        if i % 2:
            data += b"\n"
        reply = raw(running.path, data)
        assert reply == b"" or error_of(reply) != "", reply
    counters = running.wait_count("connections", 300)
    deadline = time.monotonic() + 5
    while _outcomes(counters := running.counters()) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _outcomes(counters) == counters["connections"] == 300, counters
    assert counters.get("ok", 0) == 0 and counters.get("internal", 0) == 0
    assert counters["oversize"] > 0 and counters["bad_encoding"] + counters["bad_json"] > 0
    assert request(running.path, "status")["state"] == "BACKUP"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048) | st.text(max_size=300).map(str.encode),
       newline=st.booleans())
def test_fuzzed_requests_get_one_error_line(running: Running, data: bytes,
                                            newline: bool) -> None:
    reply = raw(running.path, data + b"\n" if newline else data)
    if reply:
        reason = error_of(reply) if b'"ok":false' in reply else "ok"
        assert reason in {"ok", "bad_json", "bad_encoding", "not_object", "bad_cmd",
                          "unknown_cmd", "eof", "oversize", "bad_args", "handler_error",
                          "bad_result"}
    assert request(running.path, "status")["state"] == "BACKUP"


def test_oversize_request(running: Running) -> None:
    head = b'{"cmd":"status","pad":"'
    fits = head + b"x" * (MAX_REQUEST - len(head) - 3) + b'"}\n'
    assert len(fits) == MAX_REQUEST
    assert raw(running.path, fits).startswith(b'{"ok":true')
    assert error_of(raw(running.path, fits[:-3] + b'x"}\n')) == "oversize"
    assert error_of(raw(running.path, b"x" * (1 << 20))) == "oversize"
    assert running.counters()["oversize"] == 2
    with pytest.raises(ControlUsageError, match="over 65536"):
        request(running.path, "status", pad="x" * MAX_REQUEST)
    assert request(running.path, "status")["state"] == "BACKUP"


def test_slow_client_times_out(running: Running) -> None:
    started = time.monotonic()
    assert error_of(raw(running.path, b'{"cmd": "sta', shut=False)) == "timeout"
    assert 0.4 < time.monotonic() - started < 3
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # one byte at a time
        sock.connect(str(running.path))
        started = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for byte in b'{"cmd": "status", "pad": "' + b"x" * 100:
                sock.send(bytes([byte]))
                time.sleep(0.05)
        assert time.monotonic() - started < 3
    assert running.counters()["timeout"] == 2
    assert request(running.path, "status")["state"] == "BACKUP"


def test_a_hung_handler_does_not_block_other_clients(sock_path: Path) -> None:
    gate = threading.Event()

    async def hang(args: dict[str, Any]) -> dict[str, Any]:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return {}

    HANDLERS["hang"] = hang
    srv = Running(sock_path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(sock_path))
            sock.sendall(b'{"cmd": "hang"}\n')
            assert request(sock_path, "status")["state"] == "BACKUP"
            gate.set()
            assert sock.recv(100) == b'{"ok":true,"result":{}}\n'
    finally:
        del HANDLERS["hang"]
        srv.stop()


# --- client errors -------------------------------------------------------------------------

def test_not_running(sock_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match=r"hasync is not running \(no control socket at"):
        request(sock_path, "status")
    sock_path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock_path))  # a socket file nobody listens on
    with pytest.raises(DaemonNotRunning, match=r"hasync is not running \(nothing listens on"):
        request(sock_path, "status")


def test_bad_responses(sock_path: Path) -> None:
    sock_path.parent.mkdir()
    for answer in (b"", b"garbage\n", b'{"ok": true}\n', b'{"ok": false, "error": 1}\n',
                   b"[1]\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fake:
            fake.bind(str(sock_path))
            fake.listen(1)

            def serve(fake: socket.socket = fake, answer: bytes = answer) -> None:
                conn, _ = fake.accept()
                with conn:
                    conn.recv(1000)
                    conn.sendall(answer)

            thread = threading.Thread(target=serve)
            thread.start()
            with pytest.raises(ControlError) as info:
                request(sock_path, "status", timeout=2)
            thread.join()
            assert not isinstance(info.value, CommandFailed)
            assert "hasync" in str(info.value)
        sock_path.unlink()


def test_request_timeout(sock_path: Path) -> None:
    sock_path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(sock_path))
        mute.listen(1)
        started = time.monotonic()
        with pytest.raises(ControlError, match=r"did not answer within 0.3 s"):
            request(sock_path, "status", timeout=0.3)
        assert time.monotonic() - started < 2


def test_local_misuse() -> None:
    with pytest.raises(ControlUsageError):
        ControlServer("/run/x/c.sock", {"Bad Name": lambda a: {}})
    with pytest.raises(ControlUsageError):
        ControlServer("/run/x/c.sock", {"status": "not callable"})  # type: ignore[dict-item]
    with pytest.raises(ControlUsageError):
        request("/nonexistent/c.sock", "not a command")
    with pytest.raises(ControlUsageError, match="not encodable"):
        request("/nonexistent/c.sock", "status", when=object())


def test_start_twice_is_misuse(running: Running) -> None:
    with pytest.raises(ControlUsageError):
        running.call(running.server.start())


# --- the socket file and its directory -----------------------------------------------------

def test_permissions(running: Running) -> None:
    assert stat.S_IMODE(os.stat(running.path.parent).st_mode) == 0o700
    mode = os.lstat(running.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_existing_directory_is_tightened(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o755)
    os.chmod(sock_path.parent, 0o755)
    srv = Running(sock_path)
    try:
        assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o700
    finally:
        srv.stop()


@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_shared_directory_refused(sock_path: Path, mode: int) -> None:
    sock_path.parent.mkdir()
    os.chmod(sock_path.parent, mode)
    with pytest.raises(ControlError, match="is shared"):
        Running(sock_path)
    assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == mode


def test_system_directory_refused() -> None:
    before = os.stat("/tmp").st_mode
    with pytest.raises(ControlError, match="is a system directory"):
        Running(Path("/tmp/hasync-test.sock"))
    assert os.stat("/tmp").st_mode == before
    assert not Path("/tmp/hasync-test.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_foreign_directory_refused(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    os.chown(sock_path.parent, NOBODY, NOBODY)
    with pytest.raises(ControlError, match=f"belongs to uid {NOBODY}"):
        Running(sock_path)


def test_stale_socket_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock_path))
    os.utime(sock_path, (0, 0))  # inode numbers get reused: mark the old file by its mtime
    srv = Running(sock_path)
    try:
        assert os.stat(sock_path).st_mtime > 0
        assert request(sock_path, "status")["state"] == "BACKUP"
    finally:
        srv.stop()
    assert not sock_path.exists()


def test_non_socket_file_not_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    sock_path.write_text("precious")
    with pytest.raises(ControlError, match="not a socket"):
        Running(sock_path)
    assert sock_path.read_text() == "precious"


def test_live_socket_refused(running: Running) -> None:
    with pytest.raises(AlreadyRunning, match="another hasync daemon is listening"):
        Running(running.path)
    assert request(running.path, "status")["state"] == "BACKUP"
    assert running.wait_count("eof")["ok"] == 1  # the liveness probe was one empty connection


def test_close_leaves_a_successor_socket_alone(sock_path: Path) -> None:
    srv = Running(sock_path)
    sock_path.unlink()  # someone removed ours and another daemon took the path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(sock_path))
        srv.stop()
        assert sock_path.exists()


# --- peer credentials ----------------------------------------------------------------------

NOBODY_CLIENT = """
import socket, sys
from hasync.control import ControlError, request
try:
    print("result", request(sys.argv[1], "status"))
except ControlError as exc:
    print(type(exc).__name__, exc)
"""


def _as_nobody(path: Path) -> str:
    """Run a control client as uid/gid 65534 and return what it printed."""
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
           python, "-c", NOBODY_CLIENT, str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, cwd="/")
    if "No module named" in proc.stderr or "Permission denied" in proc.stderr:
        pytest.skip(f"uid {NOBODY} cannot run the client here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every uid can traverse (tmp_path's parents are root-only)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a client as another uid")
    base = Path(tempfile.mkdtemp(prefix="hasync-ctl-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


def test_non_root_cannot_reach_the_socket(open_dir: Path) -> None:
    path = open_dir / "run" / "control.sock"
    srv = Running(path)
    try:
        out = _as_nobody(path)
        assert out.startswith("ControlError permission denied on"), out
        assert srv.counters() == {}
    finally:
        srv.stop()


def test_non_root_rejected_by_credentials(open_dir: Path) -> None:
    path = open_dir / "run" / "control.sock"
    srv = Running(path)
    try:
        os.chmod(path.parent, 0o755)  # as if an admin loosened the modes by hand
        os.chmod(path, 0o666)
        out = _as_nobody(path)
        assert out.startswith("CommandFailed hasync: uid 65534 may not use the control"), out
        assert srv.wait_count("forbidden") == {"connections": 1, "forbidden": 1}
        assert request(path, "status")["state"] == "BACKUP"
    finally:
        srv.stop()

