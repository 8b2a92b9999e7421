"""`hasync health`: the verdict table, the command against fake daemons, keepalived's config."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hasync import cli
from hasync.control import ControlServer
from hasync.health import verdict
from hasync.vicicheck import ViciAnswer, check

from fakevici import FakeCharon
from nodeconf import write_config

ROOT = Path(__file__).resolve().parent.parent

GOOD: dict[str, Any] = {"node": "gw1", "role": "master", "ha_rx_age_s": 0.4,
                        "ha_timeout_s": 3.0, "raft_joined": True, "raft_leader": "gw2"}
VICI_DOWN = "charon does not answer over vici (/run/charon.vici: No such file or directory)"
NO_CONTROL = "hasync does not answer on its control socket"
STALE = "no HA datagram from charon for 5.2 s (limit 3.0 s)"
NEVER = "no HA datagram from charon since hasync started"
NOT_JOINED = "not yet caught up with the Raft journal"
QUORUM = "no Raft majority for 2.3 s (limit 1.5 s)"


def _resp(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


# --- verdict ------------------------------------------------------------------------------

@pytest.mark.parametrize(("resp", "vici_ok", "reasons"), [
    (GOOD, True, []),
    (_resp(ha_rx_age_s=3.0), True, []),  # the limit itself is still healthy
    (_resp(ha_rx_age_s=0), True, []),
    (_resp(raft_leader=None, role="backup"), True, []),  # no leader named: the probe judges
    (_resp(problems=[QUORUM]), True, [QUORUM]),  # the daemon's probe: no majority heard
    (_resp(problems=[QUORUM, "guard: no kernel read for 3.0 s"]), True,
     [QUORUM, "guard: no kernel read for 3.0 s"]),
    (_resp(problems="not a list"), True, ["hasync's health answer has no valid problems list"]),
    ({"node": "w", "role": "witness", "raft_joined": True, "problems": []}, False, []),
    ({"node": "w", "role": "witness", "raft_joined": False, "problems": [QUORUM]}, False,
     [NOT_JOINED, QUORUM]),
    (GOOD, False, [VICI_DOWN]),
    (None, True, [NO_CONTROL]),
    (None, False, [VICI_DOWN, NO_CONTROL]),
    (_resp(ha_rx_age_s=5.2), True, [STALE]),
    (_resp(ha_rx_age_s=None), True, [NEVER]),
    (_resp(raft_joined=False), True, [NOT_JOINED]),
    (_resp(ha_rx_age_s=5.2, raft_joined=False, raft_leader=None), False,
     [VICI_DOWN, STALE, NOT_JOINED]),
])
def test_verdict_table(resp: dict[str, Any] | None, vici_ok: bool, reasons: list[str]) -> None:
    error = None if vici_ok else "/run/charon.vici: No such file or directory"
    assert verdict(resp, vici_ok, error) == (not reasons, reasons)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"ha_timeout_s": None}, "hasync's health answer has no valid ha_timeout_s"),
    ({"ha_timeout_s": "3"}, "hasync's health answer has no valid ha_timeout_s"),
    ({"ha_rx_age_s": "0.1"}, "hasync's health answer has no valid ha_rx_age_s"),
    ({"ha_rx_age_s": True}, "hasync's health answer has no valid ha_rx_age_s"),
    ({"ha_rx_age_s": math.nan}, "hasync's health answer has no valid ha_rx_age_s"),
    ({"ha_rx_age_s": -1.0}, "hasync's health answer has no valid ha_rx_age_s"),
    ({"raft_joined": 1}, NOT_JOINED),
    ({"raft_joined": "yes"}, NOT_JOINED),
])
def test_a_malformed_answer_is_unhealthy_never_an_exception(changes: dict[str, Any],
                                                             reason: str) -> None:
    assert verdict(_resp(**changes), True, None) == (False, [reason])


def test_missing_fields_and_a_non_dict_are_unhealthy() -> None:
    healthy, reasons = verdict({}, True, None)
    assert not healthy and NOT_JOINED in reasons
    assert verdict(["not", "a", "dict"], True, None) == (False, [NO_CONTROL])  # type: ignore[arg-type]


BUSY_ERROR = "/run/charon.vici: no answer within 2.0 s"
VICI_BUSY = f"charon does not answer over vici ({BUSY_ERROR})"


@pytest.mark.parametrize(("resp", "reasons"), [
    (GOOD, []),  # slow over vici, but its HA stream is fresh: alive and working
    (_resp(raft_joined=False), [NOT_JOINED]),
    (_resp(ha_rx_age_s=5.2), [VICI_BUSY, STALE]),  # slow and silent: hung
    (_resp(ha_rx_age_s=None), [VICI_BUSY, NEVER]),
    (_resp(ha_timeout_s=None), [VICI_BUSY, "hasync's health answer has no valid ha_timeout_s"]),
    (None, [VICI_BUSY, NO_CONTROL]),  # nothing tells whether the stream is alive
])
def test_a_busy_charon_fails_only_with_a_silent_ha_stream(resp: dict[str, Any] | None,
                                                          reasons: list[str]) -> None:
    assert verdict(resp, False, BUSY_ERROR, vici_busy=True) == (not reasons, reasons)


def test_the_control_error_is_told() -> None:
    assert verdict(None, True, None, control_error="permission denied") == \
        (False, [f"{NO_CONTROL}: permission denied"])
    assert verdict(GOOD, False, None) == \
        (False, ["charon does not answer over vici (no reason given)"])


# --- fakes: hasync's control socket and charon's vici socket --------------------------------

class FakeDaemon:
    """A ControlServer with the given handlers on an event loop in a background thread."""

    def __init__(self, path: Path, handlers: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = ControlServer(path, handlers)
        self._call(self.server.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        """Close the server and its loop."""
        self._call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., FakeDaemon]]:
    """Start a fake hasync daemon with the given handlers (stopped after the test)."""
    started: list[FakeDaemon] = []

    def start(**handlers: Any) -> FakeDaemon:
        started.append(FakeDaemon(tmp_path / "run" / "control.sock", handlers))
        return started[-1]
    yield start
    for d in started:
        d.stop()


@pytest.fixture
def charon(tmp_path: Path) -> Iterator[Callable[..., FakeCharon]]:
    """Start a fake charon vici socket (closed after the test)."""
    started: list[FakeCharon] = []

    def start(mode: str = "answer") -> FakeCharon:
        started.append(FakeCharon(tmp_path / "charon.vici", mode))
        return started[-1]
    yield start
    for c in started:
        c.stop()


def _config(tmp: Path) -> Path:
    vici = tmp / "charon.vici"
    return write_config(tmp, extra=f'[charon]\nvici_socket = "{vici}"')


def _health(tmp: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    rc = cli.main(["health", "--config", str(_config(tmp)), *extra])
    return rc, capsys.readouterr().out


# --- the command --------------------------------------------------------------------------

def test_healthy_node_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              daemon: Any, charon: Any) -> None:
    daemon(health=lambda args: GOOD)
    charon()
    assert _health(tmp_path, capsys) == (0, "healthy: node gw1 (master)\n")


def test_no_charon_is_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                daemon: Any) -> None:
    daemon(health=lambda args: GOOD)
    rc, out = _health(tmp_path, capsys)
    assert rc == 1
    assert out == (f"unhealthy: charon does not answer over vici ({tmp_path / 'charon.vici'}: "
                   "No such file or directory)\n")


def test_no_daemon_and_no_charon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _health(tmp_path, capsys)
    assert rc == 1 and out.startswith("unhealthy: charon does not answer over vici (")
    assert f"; {NO_CONTROL}: hasync is not running (no control socket at " in out


def test_stale_stream_and_not_joined_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          daemon: Any, charon: Any) -> None:
    answer = _resp(role="joining", ha_rx_age_s=5.2, raft_joined=False)
    daemon(health=lambda args: answer)
    charon()
    rc, out = _health(tmp_path, capsys, "--json")
    assert rc == 1
    assert json.loads(out) == {"healthy": False, "reasons": [STALE, NOT_JOINED],
                               "daemon": answer, "vici_ok": True, "vici_error": None,
                               "vici_busy": False, "control_error": None}


def test_a_daemon_without_the_command_is_unhealthy(tmp_path: Path, daemon: Any, charon: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    daemon(status=lambda args: {})
    charon()
    rc, out = _health(tmp_path, capsys)
    assert rc == 1 and out.startswith(f"unhealthy: {NO_CONTROL}: ")
    assert "unknown command 'health'" in out


def test_silent_daemon_and_charon_time_out(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           daemon: Any, charon: Any) -> None:
    async def hang(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(30)
        return GOOD
    daemon(health=hang)
    charon("mute")
    start = time.monotonic()
    rc, out = _health(tmp_path, capsys, "--timeout", "0.3")
    assert time.monotonic() - start < 2.0  # both checks ran at the same time
    assert rc == 1
    assert "charon does not answer over vici (" in out and ": timed out)" in out
    assert f"{NO_CONTROL}: hasync did not answer within 0.3 s" in out


def test_a_stalled_vici_answer_does_not_hold_the_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon: Any, charon: Any) -> None:
    daemon(health=lambda args: _resp(ha_rx_age_s=5.2))
    charon("stall")
    start = time.monotonic()
    rc, out = _health(tmp_path, capsys, "--timeout", "0.3")
    assert time.monotonic() - start < 2.0
    assert rc == 1 and out.startswith("unhealthy: charon does not answer over vici (")
    assert out.endswith(f": no answer within 0.3 s); {STALE}\n")


@pytest.mark.parametrize("mode", ["mute", "stall"])
def test_a_busy_charon_with_a_fresh_stream_is_healthy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], daemon: Any, charon: Any,
        mode: str) -> None:
    daemon(health=lambda args: GOOD)
    charon(mode)
    rc, out = _health(tmp_path, capsys, "--timeout", "0.3", "--json")
    got = json.loads(out)
    assert rc == 0 and got["healthy"] and got["reasons"] == []
    assert got["vici_ok"] is False and got["vici_busy"] is True


# --- vicicheck: busy (slow) against down (dead) ---------------------------------------------

def test_vici_check_tells_busy_from_down(tmp_path: Path, charon: Any) -> None:
    path = tmp_path / "charon.vici"
    gone = check(path, 0.3)
    assert not gone.ok and not gone.busy and "No such file or directory" in str(gone.error)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # the socket file of a killed charon: nobody listens
    dead.close()
    refused = check(path, 0.3)
    assert not refused.ok and not refused.busy and "Connection refused" in str(refused.error)
    path.unlink()
    charon("answer")
    assert check(path, 2.0) == ViciAnswer(True)


@pytest.mark.parametrize(("mode", "error"), [("mute", "timed out"),
                                             ("stall", "no answer within 0.3 s")])
def test_vici_check_a_slow_charon_is_busy(tmp_path: Path, charon: Any, mode: str,
                                          error: str) -> None:
    charon(mode)
    got = check(tmp_path / "charon.vici", 0.3)
    assert not got.ok and got.busy and str(got.error).endswith(error)


def test_vici_check_a_garbled_answer_is_down(tmp_path: Path, charon: Any) -> None:
    charon("garbage")
    got = check(tmp_path / "charon.vici", 1.0)
    assert not got.ok and not got.busy and str(got.error).startswith(str(tmp_path))


def test_vici_check_raises_a_bug_instead_of_calling_charon_down(
        tmp_path: Path, charon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import vici

    def broken(sock: socket.socket) -> None:
        raise RuntimeError("a bug in the check")
    monkeypatch.setattr(vici, "Session", broken)
    charon("mute")
    with pytest.raises(RuntimeError, match="a bug in the check"):
        check(tmp_path / "charon.vici", 1.0)


def test_config_error_exits_2_without_importing_anything_heavy(tmp_path: Path) -> None:
    code = ("import sys\nfrom hasync.cli import main\nrc = main(sys.argv[1:])\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('cryptography', 'pysyncobj', 'msgpack', 'vici') "
            "or m.startswith(('hasync_lab', 'hasync.journal', 'hasync.daemon'))]\n"
            "print(sorted(heavy))\nsys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, "health", "--config",
                          str(tmp_path / "absent.toml")], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 2
    assert res.stdout == "[]\n"
    assert str(tmp_path / "absent.toml") in res.stderr and "Traceback" not in res.stderr


def test_bad_timeout_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["health", "--timeout", "0"])
    assert exc.value.code == 2 and "must be above 0 s" in capsys.readouterr().err


# --- keepalived's check script -----------------------------------------------------------

CHECK = ROOT / "deploy" / "hasync-health-check"


@pytest.mark.parametrize(("content", "age", "rc"), [
    ("ok", 0, 0), ("ok", 2, 0), ("ok", 10, 1),  # a verdict hasync stopped refreshing fails
    ("fail", 0, 1), ("", 0, 1), (None, 0, 1),
])
def test_keepalived_check_reads_the_verdict_and_its_age(tmp_path: Path, content: str | None,
                                                        age: int, rc: int) -> None:
    f = tmp_path / "health"
    if content is not None:
        now = int(time.clock_gettime(time.CLOCK_BOOTTIME))  # what /proc/uptime counts
        f.write_text(f"{content} {now - age} charon does not answer\n"
                     if content else "")
    res = subprocess.run(["/bin/sh", str(CHECK), str(f)], capture_output=True, timeout=10)
    assert res.returncode == rc, res.stderr


def test_a_verdict_judged_late_is_counted_and_logged(caplog: pytest.LogCaptureFixture,
                                                     tmp_path: Path) -> None:
    from hasync.healthfile import HEALTH_LATE_S, HealthWriter

    writer = HealthWriter(tmp_path / "health", tmp_path / "vici", dict)
    writer.note_late_verdict(HEALTH_LATE_S - 0.5)
    assert writer.counters["health_late"] == 0 and not caplog.records
    writer.note_late_verdict(7.5)  # the loop was starved: keepalived may judge it stale
    assert writer.counters["health_late"] == 1
    assert "took 7.5 s" in caplog.records[-1].getMessage()
