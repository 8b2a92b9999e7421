# Tests for hasync_lab.probeflows: its log read by probe.ProbeLogs, the flow arguments, and real
# runs of a probeflows client against the probe.py server on loopback (127.x source addresses).
# Rules: assert behaviour, not tight timings; subprocesses are always reaped; one server serves
# every real run (each run uses its own flow names).

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_probe import free_port, wait_for

from hasync_lab.probe import ProbeLog, ProbeLogs, encode_datagram, parse_logs, tail_log
from hasync_lab.probeflows import (
    FlowSpec,
    _Client,
    _run,
    main,
    parse_flow_spec,
    parse_flow_specs,
)

ROOT = Path(__file__).resolve().parent.parent
LINES = [
    "f1 tx server 0 100.000001",
    "f2 tx server 0 100.000002",
    "f1 rx server 0 100.000001 100.010500",
    "f2 err server 99 100.020000",
    "f1 err - 111 100.030000",
    "f2 rx c9 7 99.5 100.05",
    "f1 tx server notanumber 1.0",
    "",
    "garbage",
    "f3 bogus event",
]


def start(module: str, *args: str) -> subprocess.Popen[bytes]:
    """Start python -m module in a subprocess."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench' / 'lab'}"}
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill a subprocess that is still running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def loopback_client(log: Path, *flows: FlowSpec) -> Iterator[tuple[_Client, socket.socket]]:
    """A client of `flows` (64-byte datagrams, events to `log`) toward a UDP socket on
    127.0.0.1 that plays the server "server"; the client is closed, then the socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        client = _Client((socket.AF_INET, peer.getsockname()), "server", list(flows), 64,
                         str(log))
        try:
            yield client, peer
        finally:
            client.close()


def test_each_flow_gets_the_events_of_its_lines() -> None:
    flows = parse_logs(f"{line}\n" for line in LINES)
    assert set(flows) == {"f1", "f2"}
    for name, log in flows.items():
        alone = ProbeLog()
        for line in LINES:
            if line.startswith(f"{name} ") and not alone.add_event(line.split()[1:]):
                alone.bad_lines += 1
        assert log == alone
    f1, f2 = flows["f1"], flows["f2"]
    assert f1.peer("server").sent == [(0, 100.000001)]
    assert f1.peer("server").received == [(0, 100.000001, 100.0105)]
    assert f1.peer("-").errors == [(111, 100.03)]
    assert f1.bad_lines == 1
    assert f2.peer("server").errors == [(99, 100.02)]
    assert f2.peer("c9").received == [(7, 99.5, 100.05)]
    logs = ProbeLogs().add_lines(LINES)
    assert logs.bad_lines == 2  # "garbage" and "f3 bogus event": no flow event
    assert logs.of("nobody") == ProbeLog()


def test_flow_logs_read_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    path.write_text("f1 tx server 0 1.0\nf2 tx server 0 1.1\nf1 rx server 0 1.0 1.")
    logs = ProbeLogs()
    lines, offset = tail_log(path, 0)
    assert logs.add_lines(lines) is logs
    assert logs.of("f1").peer("server").received == []  # the partial line waits
    with path.open("a") as f:
        f.write("25\nf2 rx server 0 1.1 1.3\n")
    lines, offset = tail_log(path, offset)
    logs.add_lines(lines)
    assert logs.logs == parse_logs(path.read_text().splitlines())
    assert logs.of("f1").peer("server").received == [(0, 1.0, 1.25)]
    assert logs.bad_lines == 0
    assert tail_log(path, offset) == ([], offset)


def test_flow_specs() -> None:
    assert parse_flow_spec("t1@10.0.0.5") == FlowSpec("t1", "10.0.0.5")
    assert parse_flow_spec("a@b@fd00::0001") == FlowSpec("a@b", "fd00::1")
    for bad in ("t1", "@10.0.0.5", "t 1@10.0.0.5", "t1@10.0.0", "t1@host"):
        with pytest.raises(ValueError):
            parse_flow_spec(bad)
    text = ["# tunnels", "", " t1@10.0.0.1 ", "t2@10.0.0.2"]
    assert parse_flow_specs(text) == [FlowSpec("t1", "10.0.0.1"), FlowSpec("t2", "10.0.0.2")]
    with pytest.raises(ValueError, match="line 2"):
        parse_flow_specs(["t1@10.0.0.1", "t2@nowhere"])


def test_client_sends_and_receives_in_process(tmp_path: Path) -> None:
    log = tmp_path / "flows.log"
    with loopback_client(log, FlowSpec("f1", "127.0.0.1")) as (client, peer):
        client.send_round()
        data, addr = peer.recvfrom(2048)
        assert len(data) == 64
        peer.sendto(encode_datagram("server", 5, 1.5), addr)
        peer.sendto(encode_datagram("other", 6, 2.5), addr)  # not the expected server name
        peer.sendto(b"not a probe datagram", addr)
        client.drain()
    flow = parse_logs(log.read_text().splitlines())["f1"]
    assert [seq for seq, _t in flow.peer("server").sent] == [0]
    assert [(seq, t_sent) for seq, t_sent, _t in flow.peer("server").received] == [(5, 1.5)]
    assert [(seq, t_sent) for seq, t_sent, _t in flow.peer("other").received] == [(6, 2.5)]
    assert client.stats == {"flows": 1, "bound": 1, "tx": 1, "rx": 2, "err": 0, "bad": 1}


def test_failed_bind_is_retried_after_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open, calls = _Client._open, []

    def open_once_missing(self: _Client, source: str) -> socket.socket:
        calls.append(source)
        if len(calls) == 1:
            raise OSError(errno.EADDRNOTAVAIL, "the virtual IP is not there yet")
        return real_open(self, source)

    monkeypatch.setattr(_Client, "_open", open_once_missing)
    log = tmp_path / "flows.log"
    with loopback_client(log, FlowSpec("late", "127.0.0.1")) as (client, _sink):
        _run(client, 20, 1.5, [])
    late = parse_logs(log.read_text().splitlines())["late"].peer("server")
    assert len(calls) == 2
    assert [errno_ for errno_, _t in late.errors] == [errno.EADDRNOTAVAIL]
    assert late.sent, "the retried bind succeeded and the flow sent"
    assert [seq for seq, _t in late.sent] == list(range(len(late.sent)))
    assert late.sent[0][1] >= late.errors[0][1] + 0.9  # no retry within a second


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--flow", "t1"], "--flow"),
        (["--flow", "t 1@127.0.0.1"], "--flow"),
        (["--flow", "t1@127.0.0.999"], "--flow"),
        (["--flow", "t1@::1"], "--flow"),  # not the server's address family
        (["--flow", "t1@127.0.0.1", "--flow", "t1@127.0.0.2"], "--flow"),
        (["--flow", "t1@127.0.0.1", "--rate", "-1"], "--rate"),
        (["--flow", "t1@127.0.0.1", "--size", "1.5"], "--size"),
        (["--flow", "t1@127.0.0.1", "--server-name", "a b"], "--server-name"),
        (["--flows-file", "/nonexistent/flows"], "--flows-file"),
        ([], "--flow"),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["client", "--server", "127.0.0.1:9", "--log", str(tmp_path / "l"), *args])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "l").exists()


def test_bad_flows_file_and_server_exit_2(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.write_text("t1@127.0.0.1\nt2@127.0.0.300\n")
    base = ["hasync_lab.probeflows", "client", "--log", str(tmp_path / "l")]
    proc = start(*base, "--server", "127.0.0.1:9", "--flows-file", str(flows))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert b"--flows-file" in err and b"line 2" in err
    proc = start(*base, "--server", "127.0.0.1", "--flow", "t1@127.0.0.1")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert b"--server" in err


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A probe.py server at 50/s on 127.0.0.1: its endpoint and its log."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    endpoint = f"127.0.0.1:{free_port()}"
    options = ["--bind", endpoint, "--rate", "50", "--log", str(log)]
    proc = start("hasync_lab.probe", "server", *options)
    try:
        wait_for(log, 10)
        yield endpoint, log
        proc.terminate()  # SIGTERM
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        reap(proc)


def run_client(endpoint: str, log: Path, *flow_args: str) -> bytes:
    """Run a probeflows client at 50/s per flow for 2 s; return its stderr."""
    options = ["--server", endpoint, "--rate", "50", "--duration", "2", "--log", str(log)]
    proc = start("hasync_lab.probeflows", "client", *options, *flow_args)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    return err


def server_view(server_log: Path, flows: dict[str, ProbeLog], names: list[str]) -> ProbeLog:
    """The server's log once it shows every packet the flows sent (its flush), or after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        seen = ProbeLogs().add_lines(server_log.read_text().splitlines()).of("server")
        counts = [(len(seen.peer(n).received), len(flows[n].peer("server").sent)) for n in names]
        if all(got >= sent for got, sent in counts) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def check_flow(flows: dict[str, ProbeLog], server: ProbeLog, name: str) -> None:
    """The flow sent and received in order, and the server got its packets under its name."""
    sent, received = flows[name].peer("server").sent, flows[name].peer("server").received
    assert len(sent) >= 20
    assert [seq for seq, _t in sent] == list(range(len(sent)))
    assert len(received) >= 10
    assert {seq for seq, *_ in server.peer(name).received} == {seq for seq, _t in sent}


def test_three_flows_through_the_server(server: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, server_log = server
    names = ["three-a", "three-b", "three-c"]
    flows_file = tmp_path / "flows"
    flows_file.write_text("".join(f"{name}@127.0.0.{i}\n" for i, name in enumerate(names, 1)))
    log = tmp_path / "flows.log"
    err = run_client(endpoint, log, "--flows-file", str(flows_file))
    assert b"flows 3 bound 3" in err
    flows = parse_logs(log.read_text().splitlines())
    seen = server_view(server_log, flows, names)
    assert set(flows) == set(names)
    assert set(names) <= set(seen.peers)
    for name in names:
        assert flows[name].bad_lines == 0
        assert flows[name].peer("server").errors == []
        check_flow(flows, seen, name)


def test_unbindable_flow_logs_errors_others_work(server: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, server_log = server
    log = tmp_path / "flows.log"
    # 192.0.2.1 (TEST-NET-1) is on no interface: bind fails with EADDRNOTAVAIL (99).
    good = ["--flow", "bind-ok1@127.0.0.1", "--flow", "bind-ok2@127.0.0.5"]
    run_client(endpoint, log, *good, "--flow", "bind-bad@192.0.2.1")
    flows = parse_logs(log.read_text().splitlines())
    seen = server_view(server_log, flows, ["bind-ok1", "bind-ok2"])
    bad = flows["bind-bad"].peer("server")
    assert bad.sent == [] and bad.received == []
    assert {errno for errno, _t in bad.errors} == {99}
    assert 2 <= len(bad.errors) <= 3  # a bind attempt at start, then at most one per second
    assert "bind-bad" not in seen.peers
    for name in ("bind-ok1", "bind-ok2"):
        check_flow(flows, seen, name)


def test_sigterm_ends_it_with_a_final_flush(server: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, _server_log = server
    log = tmp_path / "flows.log"
    options = ["--server", endpoint, "--flow", "term@127.0.0.1", "--log", str(log)]
    proc = start("hasync_lab.probeflows", "client", *options)
    try:
        wait_for(log, 10)
        time.sleep(0.5)
        proc.terminate()  # SIGTERM
        _, err = proc.communicate(timeout=30)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    sent = parse_logs(log.read_text().splitlines())["term"].peer("server").sent
    assert sent
    assert f"tx {len(sent)} ".encode() in err  # every packet counted is in the log


def test_reload_rebinds_moved_flows_keeps_their_seq_adds_and_drops(tmp_path: Path) -> None:
    log = tmp_path / "flows.log"
    with loopback_client(log, FlowSpec("stay", "127.0.0.1"), FlowSpec("move", "127.0.0.2"),
                         FlowSpec("gone", "127.0.0.3")) as (client, peer):
        client.send_round()
        first = {peer.recvfrom(2048)[1][0] for _ in range(3)}
        client.reload([FlowSpec("stay", "127.0.0.1"), FlowSpec("move", "127.0.0.4"),
                       FlowSpec("new", "127.0.0.5")], 64, "server")
        assert client.stats["bound"] == 1 and client.pending
        client.bind_pending(time.monotonic())
        client.send_round()
        second = {peer.recvfrom(2048)[1][0] for _ in range(3)}
    assert first == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
    assert second == {"127.0.0.1", "127.0.0.4", "127.0.0.5"}
    flows = parse_logs(log.read_text().splitlines())
    assert [s for s, _ in flows["move"].peer("server").sent] == [0, 1]  # seq kept across rebind
    assert [s for s, _ in flows["new"].peer("server").sent] == [0]
    assert [s for s, _ in flows["gone"].peer("server").sent] == [0]
    assert client.stats["flows"] == 3 and client.stats["bound"] == 3


def test_sighup_rereads_the_flows_file(server: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, _server_log = server
    flows_file, log = tmp_path / "flows", tmp_path / "flows.log"
    flows_file.write_text("hup-a@127.0.0.1\n")
    proc = start("hasync_lab.probeflows", "client", "--server", endpoint, "--flows-file",
                 str(flows_file), "--log", str(log), "--rate", "20")
    try:
        wait_for(log, 10)
        flows_file.write_text("hup-a@127.0.0.6\nhup-b@127.0.0.7\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "hup-b" not in parse_logs(
                log.read_text().splitlines()):
            time.sleep(0.1)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    flows = parse_logs(log.read_text().splitlines())
    assert flows["hup-b"].peer("server").sent and b"flows 2 bound 2" in err
    sent = [s for s, _ in flows["hup-a"].peer("server").sent]
    assert sent == list(range(len(sent)))  # one stream across the rebind
