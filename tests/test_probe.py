# Tests for hasync_lab.probe: the pure analysis functions, the one log format, the datagram
# format, and a real server with the one client runtime (probeflows) on 127.0.0.1.
# Rules: assert behaviour, not tight timings; subprocesses are always reaped.

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Container
from pathlib import Path

import pytest

from hasync_lab.probe import (
    Datagram,
    ProbeLogs,
    Schedule,
    StreamStats,
    decode_datagram,
    encode_datagram,
    first_rx_after,
    parse_endpoint,
    stream_stats,
    tail_log,
)

ROOT = Path(__file__).resolve().parent.parent
PERIOD = 0.02


def stream(
    t0: float, n: int, lost: Container[int] = (), delay: float = 0.001
) -> tuple[list[tuple[int, float]], list[tuple[int, float, float]]]:
    """n packets sent every PERIOD from t0; those in lost never arrive."""
    sent = [(i, t0 + i * PERIOD) for i in range(n)]
    received = [(i, t, t + delay) for i, t in sent if i not in lost]
    return sent, received


def test_no_loss() -> None:
    sent, received = stream(10.0, 100)
    stats = stream_stats(sent, received, 10.0, 12.0)
    assert (stats.sent, stats.received, stats.lost) == (100, 100, 0)
    assert stats.longest_gap_ms == pytest.approx(20.0, abs=0.01)
    assert stats.resumed_at is not None
    assert stats.last_before is not None


def test_gap_in_the_middle() -> None:
    sent, received = stream(10.0, 100, lost=set(range(40, 60)))
    stats = stream_stats(sent, received, 10.0, 12.0)
    assert (stats.sent, stats.received, stats.lost) == (100, 80, 20)
    assert stats.longest_gap_ms == pytest.approx(420.0, abs=0.01)
    assert stats.last_before == pytest.approx(10.0 + 39 * PERIOD + 0.001)
    assert stats.resumed_at == pytest.approx(10.0 + 60 * PERIOD + 0.001)


def test_traffic_never_resumes() -> None:
    sent, received = stream(10.0, 100, lost=set(range(30, 100)))
    stats = stream_stats(sent, received, 10.0, 12.0)
    assert stats.lost == 70
    assert stats.resumed_at is None
    assert stats.last_before == pytest.approx(10.0 + 29 * PERIOD + 0.001)
    assert stats.longest_gap_ms == pytest.approx((12.0 - stats.last_before) * 1000)


def test_a_short_silence_at_the_window_end_is_no_gap_within_the_grace() -> None:
    """A stream that never stopped, its window ending in a 0.15 s stall of the VM: resumed
    with a 0.3 s grace (the longest gap is then an inner 20 ms one); without it, the trailing
    silence is the longest gap, as it stays for a stream that stopped longer than the grace."""
    sent, received = stream(10.0, 100)
    end = received[-1][2] + 0.15
    assert stream_stats(sent, received, 10.0, end).resumed_at is None
    graced = stream_stats(sent, received, 10.0, end, tail_grace_s=0.3)
    assert graced.resumed_at is not None and graced.longest_gap_ms == pytest.approx(20.0, abs=0.01)
    stopped = stream_stats(sent, received, 10.0, end + 0.5, tail_grace_s=0.3)
    assert stopped.resumed_at is None and stopped.longest_gap_ms == pytest.approx(650.0, abs=1)


def test_nothing_received() -> None:
    sent, _ = stream(10.0, 50)
    assert stream_stats(sent, [], 10.0, 11.0) == StreamStats(50, 0, 50, 1000.0, None, None)
    assert stream_stats([], [], 5.0, 5.0) == StreamStats(0, 0, 0, 0.0, None, None)


def test_gap_at_the_start_and_window_edges() -> None:
    sent, received = stream(10.0, 100, lost=set(range(25)))
    stats = stream_stats(sent, received, 10.0, 12.0)
    assert stats.last_before is None
    assert stats.resumed_at == pytest.approx(10.0 + 25 * PERIOD + 0.001)
    assert stats.longest_gap_ms == pytest.approx(501.0, abs=0.01)
    # Only packets sent inside [start, end) count; receives outside the window are ignored.
    window = stream_stats(sent, received, 11.0, 11.5)
    assert (window.sent, window.received, window.lost) == (25, 25, 0)
    with pytest.raises(ValueError):
        stream_stats(sent, received, 2.0, 1.0)


def test_first_rx_after() -> None:
    _, received = stream(10.0, 10)
    assert first_rx_after(received, 10.05) == pytest.approx(10.061)
    assert first_rx_after(received, 99.0) is None
    assert first_rx_after([], 0.0) is None


def test_log_round_trip() -> None:
    lines = [
        "c1 tx server 0 100.000001",
        "c1 rx server 0 100.010000 100.010500",
        "c1 tx server 1 100.020000",
        "c1 err server 101 100.040000",
        "c1 rx c2 7 99.5 100.05",
        "",
        "garbage line",
        "c1 tx server notanumber 1.0",
        "c1 rx server 5 1.0",
        "tx server 2 100.03",  # no head: not the log's format
    ]
    logs = ProbeLogs().add_lines(f"{line}\n" for line in lines)
    assert set(logs.logs) == {"c1"} and logs.bad_lines == 2
    log = logs.of("c1")
    assert set(log.peers) == {"server", "c2"}
    server = log.peer("server")
    assert server.sent == [(0, 100.000001), (1, 100.02)]
    assert server.received == [(0, 100.01, 100.0105)]
    assert server.errors == [(101, 100.04)]
    assert log.peer("c2").received == [(7, 99.5, 100.05)]
    assert log.peer("nobody").sent == [] and logs.of("nobody").peers == {}
    assert log.bad_lines == 2
    more = logs.add_lines(["c1 tx c2 0 101.0"])
    assert more is logs
    assert log.peer("c2").sent == [(0, 101.0)]


def test_datagram_format() -> None:
    data = encode_datagram("c1", 7, 123.25, 64)
    assert len(data) == 64
    assert data[:7] == b"HSP1\x02c1"
    assert decode_datagram(data) == Datagram("c1", 7, 123.25)
    assert len(encode_datagram("client-with-a-long-name", 1, 0.0, 10)) == 4 + 1 + 23 + 12
    assert decode_datagram(data[:18]) is None
    assert decode_datagram(b"XXXX" + data[4:]) is None
    assert decode_datagram(b"HSP1\x02c 0123456789ab") is None
    with pytest.raises(ValueError):
        encode_datagram("two words", 1, 0.0)


def test_parse_endpoint() -> None:
    assert parse_endpoint("10.1.2.3:5000") == (socket.AF_INET, ("10.1.2.3", 5000))
    assert parse_endpoint("[fd00::1]:53") == (socket.AF_INET6, ("fd00::1", 53))
    for bad in ("10.1.2.3", "host:80", "10.1.2.3:99999", "10.1.2.3:"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_tail_log(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    assert tail_log(path, 0) == ([], 0)
    path.write_text("tx s 0 1.0\ntx s 1 1.")
    lines, offset = tail_log(path, 0)
    assert (lines, offset) == (["tx s 0 1.0"], 11)
    with path.open("a") as f:
        f.write("5\nrx s 0 1.0 1.1\n")
    assert tail_log(path, offset) == (["tx s 1 1.5", "rx s 0 1.0 1.1"], 37)
    assert tail_log(path, 37) == ([], 37)
    path.write_text("tx s 0 2.0\n")  # replaced by a shorter file: start over
    assert tail_log(path, 37) == (["tx s 0 2.0"], 11)


def free_port() -> int:
    """A UDP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def probe(*args: str, module: str = "hasync_lab.probe") -> subprocess.Popen[bytes]:
    """Start the probe server (or, with module hasync_lab.probeflows, the client)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench' / 'lab'}"}
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)


def client(*args: str) -> subprocess.Popen[bytes]:
    """Start a probe client: one flow c1 from any source, as the classic lab runs it."""
    return probe("client", "--flow", "c1@0.0.0.0", *args, module="hasync_lab.probeflows")


def wait_for(path: Path, timeout: float) -> None:
    """Wait until a file exists."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_server_and_client_exchange_traffic(tmp_path: Path) -> None:
    server_log, client_log = tmp_path / "server.log", tmp_path / "c1.log"
    endpoint = f"127.0.0.1:{free_port()}"
    server = probe("server", "--bind", endpoint, "--rate", "50", "--log", str(server_log))
    c1 = None
    try:
        wait_for(server_log, 10)
        options = ["--server", endpoint, "--rate", "50", "--duration", "1.5"]
        c1 = client(*options, "--log", str(client_log))
        _, client_err = c1.communicate(timeout=30)
        assert c1.returncode == 0, client_err
        time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        _, server_err = server.communicate(timeout=30)
        assert server.returncode == 0, server_err
    finally:
        for proc in (server, c1):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    check_logs(server_log, client_log)


def check_logs(server_log: Path, client_log: Path) -> None:
    """Both directions flowed, without loss while both ends ran, and without long gaps."""
    client_logs = ProbeLogs().add_lines(client_log.read_text().splitlines())
    server_logs = ProbeLogs().add_lines(server_log.read_text().splitlines())
    assert set(client_logs.logs) == {"c1"} and set(server_logs.logs) == {"server"}
    assert client_logs.bad_lines == 0 and server_logs.bad_lines == 0
    client, server = client_logs.of("c1"), server_logs.of("server")
    assert client.bad_lines == 0 and server.bad_lines == 0
    up_sent, up_received = client.peer("server").sent, server.peer("c1").received
    down_sent, down_received = server.peer("c1").sent, client.peer("server").received
    assert len(up_sent) >= 30
    assert len(down_sent) >= 20
    start, end = up_sent[0][1], up_sent[-1][1]
    up = stream_stats(up_sent, up_received, start, end + 1e-6)
    assert up.sent == len(up_sent)
    assert up.lost == 0
    assert up.longest_gap_ms < 1000
    # The server learns the client from its first packet; the client stops at `end`.
    down = stream_stats(down_sent, down_received, start + 0.2, end - 0.2)
    assert down.sent >= 10
    assert down.lost == 0
    assert down.longest_gap_ms < 1000
    assert [seq for seq, _ in up_sent] == list(range(len(up_sent)))
    assert [seq for seq, _ in down_sent] == list(range(len(down_sent)))


def test_send_errors_are_logged_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "c1.log"
    # Broadcast without SO_BROADCAST fails with EACCES, like a send while the tunnel is down.
    c1 = client("--server", "255.255.255.255:9", "--log", str(log))
    try:
        wait_for(log, 10)
        time.sleep(0.5)
        c1.send_signal(signal.SIGTERM)
        _, err = c1.communicate(timeout=30)
    finally:
        if c1.poll() is None:
            c1.kill()
            c1.wait()
    assert c1.returncode == 0, err
    parsed = ProbeLogs().add_lines(log.read_text().splitlines()).of("c1")
    assert parsed.peer("server").sent == []
    assert len(parsed.peer("server").errors) >= 5
    assert {errno for errno, _ in parsed.peer("server").errors} == {13}


def test_schedule_is_absolute_and_cuts_a_stall() -> None:
    schedule = Schedule(50, 100.0)
    assert schedule.take_due(100.0) == 1
    assert schedule.take_due(100.01) == 0
    assert schedule.next_at() == pytest.approx(100.02)
    assert schedule.take_due(100.061) == 3  # late: slots 1, 2 and 3 go out now
    assert schedule.next_at() == pytest.approx(100.08)
    assert schedule.take_due(110.0) == 5  # a 10 s stall: the backlog is not burst out
    assert schedule.next_at() == pytest.approx(110.02)
    assert Schedule(0, 100.0).take_due(1e9) == 0


def test_socket_memory_reports_the_receive_buffer_and_drops() -> None:
    import socket as _socket

    from hasync_lab.probe import socket_memory
    with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as s:
        s.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 65536)
        text = socket_memory(s)
    fields = text.split()
    assert fields[0::2] == ["rmem", "rcvbuf", "drops"] and int(fields[3]) >= 65536
