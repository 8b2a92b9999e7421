"""Tests of hasync.daemon, the adapter, run in this process on loopback: a task or an event that
fails stops the daemon with its error and removes the health file (keepalived sees it at once);
SIGTERM stops it cleanly. No charon, no keepalived: their sockets and FIFOs are left unused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hasync.config import Config, MetricsConfig, parse_address, parse_config
from hasync.daemon import Daemon
from hasync.journal.seal import generate_key_file
from hasync.vicicheck import ViciAnswer


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cfg(tmp_path: Path) -> Iterator[Config]:
    key = tmp_path / "cluster.key"
    generate_key_file(key)
    text = f"""[node]
name = "gw1"
state_dir = "{tmp_path / 'state'}"
control_socket = "{tmp_path / 'run' / 'control.sock'}"
health_file = "{tmp_path / 'run' / 'health'}"
[cluster]
key_file = "{key}"
bind = "127.0.0.1:{_free_port()}"
peers = ["127.0.0.1:{_free_port()}"]
[charon]
ha_local = "127.0.0.1:{_free_port(socket.SOCK_DGRAM)}"
ha_remote = "127.0.0.1:{_free_port(socket.SOCK_DGRAM)}"
vici_socket = "{tmp_path / 'charon.vici'}"
control_fifo = "{tmp_path / 'charon.ha'}"
[keepalived]
notify_fifo = "{tmp_path / 'run' / 'vrrp.fifo'}"
"""
    yield parse_config(text, "test.toml")


def _run(daemon: Daemon, after: float, action: Any = None) -> None:
    async def main() -> None:
        if action is not None:
            asyncio.get_running_loop().call_later(after, action)
        await asyncio.wait_for(daemon.run(), 30)
    asyncio.run(main())


def test_a_failing_background_task_stops_the_daemon_and_removes_the_health_file(
        cfg: Config) -> None:
    daemon = Daemon(cfg)
    calls: list[Path] = []

    def check(path: Path, timeout: float) -> ViciAnswer:
        calls.append(path)
        if len(calls) > 1:
            assert cfg.node.health_file.read_text().startswith("fail ")  # written once
            raise RuntimeError("vici check bug")
        return ViciAnswer(False, "no charon here")

    daemon.healthfile.check = check
    with pytest.raises(ExceptionGroup) as caught:
        _run(daemon, 0)
    assert [type(e) for e in caught.value.exceptions] == [RuntimeError]
    assert str(caught.value.exceptions[0]) == "vici check bug"
    assert not cfg.node.health_file.exists() and not cfg.node.control_socket.exists()


def test_a_failing_event_stops_the_daemon(cfg: Config) -> None:
    daemon = Daemon(cfg)

    def tick(*args: Any) -> list[Any]:
        raise ValueError("core bug")

    daemon.core.tick = tick  # type: ignore[method-assign]
    with pytest.raises(ExceptionGroup) as caught:
        _run(daemon, 0)
    assert [str(e) for e in caught.value.exceptions] == ["core bug"]


def test_sigterm_stops_the_daemon_cleanly(cfg: Config, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    """A stop is not a failure: no "failed" line, no traceback (supervisor.py)."""
    daemon = Daemon(cfg)
    daemon.healthfile.check = lambda path, timeout: ViciAnswer(False, "no charon here")
    seen: list[bool] = []

    def term() -> None:
        seen.append(cfg.node.health_file.exists() and cfg.node.control_socket.exists())
        os.kill(os.getpid(), signal.SIGTERM)

    with caplog.at_level(logging.INFO, logger="hasync"):
        _run(daemon, 1.5, term)  # returns: no error
    assert seen == [True]
    assert not [r for r in caplog.records if "failed" in r.getMessage() or r.exc_info]
    assert not cfg.node.health_file.exists() and not cfg.node.control_socket.exists()


def test_finding8_run_daemon_protects_memory_first_and_counts_failures(
        cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """memguard.protect() runs before the daemon (and its key file) starts; what failed is
    in the counters `hasync status` shows."""
    import hasync.daemon as daemon_module
    from hasync.memguard import Protection
    order: list[object] = []

    def fake_protect() -> Protection:
        order.append("protect")
        p = Protection()
        p.counters["memguard_mlock_failed"] = 1
        return p

    async def fake_run(self: Daemon) -> None:
        order.append(("run", self.core.counters["memguard_mlock_failed"]))

    monkeypatch.setattr(daemon_module, "protect", fake_protect)
    monkeypatch.setattr(daemon_module, "tune", lambda: order.append("tune"))
    monkeypatch.setattr(Daemon, "run", fake_run)
    daemon_module.run_daemon(cfg)
    assert order == ["protect", "tune", ("run", 1)]  # the collector tuned (gcwatch.py, D284)


def test_the_metrics_endpoint_serves_the_daemons_status_when_configured(cfg: Config) -> None:
    port = _free_port()
    cfg = dataclasses.replace(cfg, metrics=MetricsConfig(parse_address(f"127.0.0.1:{port}")))
    daemon = Daemon(cfg)
    daemon.healthfile.check = lambda path, timeout: ViciAnswer(False, "no charon here")
    scraped: list[bytes] = []

    async def scrape() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: gw1\r\n\r\n")
        scraped.append(await reader.read())
        writer.close()
        os.kill(os.getpid(), signal.SIGTERM)

    tasks: list[asyncio.Future[None]] = []  # held: the loop keeps only a weak reference,
    # and a collection while the read waits would end the scrape (GeneratorExit)
    _run(daemon, 1.5, lambda: tasks.append(asyncio.ensure_future(scrape())))
    assert scraped[0].startswith(b"HTTP/1.1 200 OK")
    assert b'hasync_info{cluster="hasync",node="gw1"} 1.0' in scraped[0]
    assert b'hasync_vrrp_state{state="joining"} 1.0' in scraped[0]
    assert b'hasync_gc_collections_total{generation="0"}' in scraped[0]  # GcWatch installed
    with socket.socket() as s:  # closed with the daemon
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_a_metrics_address_in_use_names_the_key(cfg: Config) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = parse_address(f"127.0.0.1:{taken.getsockname()[1]}")
        daemon = Daemon(dataclasses.replace(cfg, metrics=MetricsConfig(addr)))
        with pytest.raises(OSError, match=f"test.toml: metrics.listen: cannot listen on {addr}"):
            _run(daemon, 0)
