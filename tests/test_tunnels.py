"""hasync_lab.tunnels: the tunnel plan, flows files, and per-SPI tallies (pure parts)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from hasync_lab import confgen, tunnels
from hasync_lab.observe import IkeSa
from hasync_lab.pcap import EspPacket
from hasync_lab.tunnels import Tunnel


def _sa(name: str, vips: tuple[str, ...] = ("10.3.0.9",),
        kids: tuple[tuple[str, str], ...] = (("c1000001", "c2000002"),)) -> IkeSa:
    return IkeSa(name, "ESTABLISHED", "aa", "bb", kids, False, vips)


def test_classic_plan_is_one_home_tunnel_per_client() -> None:
    assert tunnels.plan(0, ["c1", "c2"]) == [Tunnel("c1", "c1", "home", "net"),
                                              Tunnel("c2", "c2", "home", "net")]


def test_benchmark_plan_deals_unique_names_round_robin() -> None:
    ts = tunnels.plan(7, ["c1", "c2", "c3"])
    assert [t.name for t in ts] == [f"t000{k}" for k in range(1, 8)]
    assert [t.client for t in ts] == ["c1", "c2", "c3", "c1", "c2", "c3", "c1"]
    assert all(t.conn == t.child == t.name for t in ts)
    assert {c: len(v) for c, v in tunnels.by_client(ts).items()} == {"c1": 3, "c2": 2, "c3": 2}
    assert tunnels.plan(12345, ["c1"])[-1].name == "t12345"
    with pytest.raises(ValueError, match="0 or more"):
        tunnels.plan(-1, ["c1"])


def test_flows_text_lists_tunnels_with_a_virtual_ip() -> None:
    ts = tunnels.plan(3, ["c1"])
    vips = tunnels.vips_of({"t0001": _sa("t0001", ("10.3.0.5",)), "t0002": _sa("t0002", ()),
                            "t0003": _sa("t0003", ("10.3.1.7", "10.3.1.8"))})
    assert vips == {"t0001": "10.3.0.5", "t0003": "10.3.1.7"}
    assert tunnels.flows_text(ts, vips) == "t0001@10.3.0.5\nt0003@10.3.1.7\n"


def test_inbound_spis_are_the_clients_spi_in() -> None:
    sa = _sa("t1", kids=(("c1000001", "c2000002"), ("0000beef", "0000f00d")))
    assert tunnels.inbound_spis(sa) == {0xc1000001, 0xbeef}
    assert tunnels.inbound_spis(None) == set()
    assert tunnels.outbound_spis(sa) == {0xc2000002, 0xf00d}  # the gateway's inbound SAs
    assert tunnels.outbound_spis(None) == set()


def test_reuse_by_spi_counts_repeats_per_spi_inside_the_window() -> None:
    def p(ts: float, spi: int, seq: int, dst: str = "192.0.2.101") -> EspPacket:
        return EspPacket(ts, "192.0.2.1", dst, spi, seq, False)
    pkts = [p(3, 1, 1), p(1, 1, 1), p(2, 1, 2), p(10, 1, 2), p(4, 2, 1), p(5, 2, 1),
            p(6, 2, 9, dst="192.0.2.102")]
    grouped = tunnels.by_spi(pkts, "192.0.2.101")
    assert [x.ts for x in grouped[1]] == [1, 2, 3, 10]  # in capture order
    assert tunnels.reuse_by_spi(grouped, 0, 100) == {1: 2, 2: 1}
    assert tunnels.reuse_by_spi(grouped, 4.5, 100) == {1: 1, 2: 1}
    assert tunnels.reuse_by_spi(grouped, 0, 3) == {1: 0, 2: 0}


def test_client_swanctl_has_one_psk_connection_per_tunnel() -> None:
    text = confgen.swanctl_client_tunnels(["t0001", "t0004"], True, "192.0.2.1",
                                          "10.1.0.0/24", confgen.LabTimers())
    assert text.count("remote_addrs = 192.0.2.1") == 2
    assert "id = t0001.tunnels.lab" in text and "id = t0004.tunnels.lab" in text
    assert "children { t0004 {" in text and text.count("-esn") == 2
    assert f'secret = "{confgen.TUNNEL_PSK}"' in text
    gw = confgen.swanctl_gateway("192.0.2.1", "10.1.0.0/24")
    assert f"id = *.{confgen.TUNNEL_DOMAIN}" in gw and "rw {" in gw


def test_many_peers_relaxes_dos_protection_only_when_asked() -> None:
    t = confgen.LabTimers()
    assert "dos_protection = no" in confgen.strongswan_conf("/l", "/s", t, True,
                                                            many_peers=True)
    assert "dos_protection" not in confgen.strongswan_conf("/l", "/s", t, True)


def test_follow_vips_keeps_a_busy_tunnels_flow_and_moves_a_changed_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ts, path = tunnels.plan(3, ["c1"]), tmp_path / "c1.flows"
    path.write_text("t0001@10.3.0.1\nt0002@10.3.0.2\nt0003@10.3.0.3\n")
    listed = {"t0001": _sa("t0001", ("10.3.0.1",)), "t0003": _sa("t0003", ("10.3.0.9",))}
    monkeypatch.setattr(tunnels, "established", lambda lab, client: listed)  # t0002 busy
    hups: list[tuple[int, int]] = []
    monkeypatch.setattr(tunnels.os, "killpg", lambda pid, sig: hups.append((pid, sig)))
    assert tunnels.follow_vips(None, "c1", ts, path, 42) == 1  # type: ignore[arg-type]
    assert path.read_text() == "t0001@10.3.0.1\nt0002@10.3.0.2\nt0003@10.3.0.9\n"
    assert hups == [(42, signal.SIGHUP)]
    assert tunnels.follow_vips(None, "c1", ts, path, 42) == 0  # type: ignore[arg-type]
    assert len(hups) == 1  # nothing moved: no reload


def _names(n: int) -> list[str]:
    return [f"t{k:04d}" for k in range(1, n + 1)]


def test_bringup_keeps_at_most_a_window_under_way() -> None:
    b = tunnels.Bringup(_names(40))
    first = b.update(set(), set(), 0.0)
    assert first == _names(tunnels.INIT_WINDOW)
    assert b.update(set(), set(first), 1.0) == []  # all connecting: the window is full
    w = tunnels.INIT_WINDOW
    assert b.update({"t0001", "t0002"}, set(first), 2.0) == _names(w + 2)[w:]
    assert len(b.up) == 2 and not b.done


def test_bringup_starts_again_what_charon_gave_up() -> None:
    b = tunnels.Bringup(_names(20))
    first = b.update(set(), set(), 0.0)
    listed = set(first) - {"t0003"}  # t0003's IKE_SA gave up after its retransmits
    assert b.update(set(), listed, 1.0) == []
    assert b.update(set(), listed | {"t0003"}, 5.0) == []  # listed again (a noblock gap)
    assert b.update(set(), listed, 6.0) == []
    assert b.update(set(), listed, 6.0 + tunnels.GIVEN_UP_S - 0.1) == []
    assert b.update(set(), listed, 6.0 + tunnels.GIVEN_UP_S) == ["t0003"]
    assert b.restarts == 1 and "t0003" in b.started


def test_bringup_is_done_when_every_tunnel_is_up_and_ignores_strangers() -> None:
    names = _names(3)
    b = tunnels.Bringup(names)
    b.update(set(), set(), 0.0)
    assert b.update({*names, "other"}, {*names, "other"}, 1.0) == []
    assert b.done and b.up == set(names)


def test_bringup_asks_only_about_tunnels_in_flight_and_keeps_what_came_up() -> None:
    b = tunnels.Bringup(_names(8))
    first = b.update(set(), set(), 0.0)
    assert b.in_flight() == sorted(first)
    b.update({"t0001"}, {"t0001"}, 1.0)
    assert "t0001" not in b.in_flight()
    b.update(set(), set(b.in_flight()), 2.0)  # t0001 was not asked about: still up
    assert "t0001" in b.up


def test_initiate_rides_out_a_client_whose_vici_times_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ts = tunnels.plan(8, ["c1"])
    started: list[str] = []
    calls = {"list": 0, "initiate": 0}

    def list_sas(_path: str, ike: str) -> list[IkeSa]:
        calls["list"] += 1
        if calls["list"] == 3:
            raise TimeoutError("timed out")  # a charon busy with its IKE_SAs
        return [_sa(ike)] if ike in started else []

    def session_call(_path: str, fn: str, arg: dict[str, object]) -> None:
        calls["initiate"] += 1
        if calls["initiate"] == 2:
            raise TimeoutError("timed out")  # charon never heard of it: started again later
        started.append(str(arg["ike"]))

    monkeypatch.setattr(tunnels.observe, "list_sas", list_sas)
    monkeypatch.setattr(tunnels, "_session_call", session_call)
    monkeypatch.setattr(tunnels.cluster, "vici_path", lambda lab, c: Path(f"/run/{c}.vici"))
    monkeypatch.setattr(tunnels, "POLL_S", 0.0)
    monkeypatch.setattr(tunnels, "GIVEN_UP_S", 0.01)
    monkeypatch.setattr(tunnels.cpustat, "sample", lambda lab: {})  # no lab processes here
    tunnels.initiate(None, ts, timeout=10)  # type: ignore[arg-type]
    assert sorted(started) == [t.conn for t in ts]
    assert calls["initiate"] == len(ts) + 1


def test_all_vips_asks_a_busy_vici_again(monkeypatch: pytest.MonkeyPatch) -> None:
    ts = tunnels.plan(2, ["c1"])
    answers: list[dict[str, IkeSa] | None] = [None, {"t0001": _sa("t0001", ("10.3.0.1",))},
                                              {"t0002": _sa("t0002", ("10.3.0.2",))}]

    def established(_lab: object, _client: str) -> dict[str, IkeSa]:
        got = answers.pop(0)
        if got is None:
            raise TimeoutError("timed out")
        return got

    monkeypatch.setattr(tunnels, "established", established)
    monkeypatch.setattr(tunnels, "POLL_S", 0.0)
    assert tunnels.all_vips(None, "c1", ts) == {  # type: ignore[arg-type]
        "t0001": "10.3.0.1", "t0002": "10.3.0.2"}
