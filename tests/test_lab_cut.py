"""The lab's partition (partition.py) and the two-sender faults' helpers (partfault.py): pure
parts, and the cut on this host's bridges (root only; no ESP needed)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hasync.fence import rules as fence_rules
from hasync.fence.port import Permit
from hasync_lab import cluster, confgen, partfault, partition, topology
from hasync_lab.cluster import VrrpEvent
from hasync_lab.procs import Lab


def test_the_cut_drops_both_ways_between_the_node_and_every_other_cluster_node() -> None:
    topo = topology.plan(3, 2, nat_clients=1)
    script = partition.cut_script(topo, "gw2")
    mine = '{ "hl1-0", "hl1-1" }'
    others = '{ "hl0-0", "hl0-1", "hl2-0", "hl2-1" }'
    assert f"iifname {mine} oifname {others} counter drop" in script
    assert f"iifname {others} oifname {mine} counter drop" in script
    servers_and_clients = [partition.ports(topo, n.name) for n in topo.nodes
                           if n.role in ("client", "server", "nat")]
    assert not any(p in script for ps in servers_and_clients for p in ps)


def test_the_witness_is_a_cluster_node_on_the_protected_network() -> None:
    topo = topology.plan(2, 2, witness=True)
    assert partition.cluster_nodes(topo) == ["gw1", "gw2", "wit"]
    (wit,) = topo.by_role("witness")
    assert [i.bridge for i in wit.ifaces] == ["hl-priv"]
    assert '"hl2-0"' in partition.cut_script(topo, "gw1")
    assert partition.cluster_nodes(topology.plan(2, 2)) == ["gw1", "gw2"]


def test_a_node_alone_cannot_be_cut_off() -> None:
    topo = topology.plan(2, 1)
    with pytest.raises(ValueError, match="no other cluster node"):
        partition.cut_script(topology.Topology(topo.prefix, topo.nodes[:1], topo.bridges), "gw1")


def test_cut_drops_reads_each_rules_counter() -> None:
    doc = ('{"nftables": [{"metainfo": {}}, {"chain": {"name": "cut"}}, '
           '{"rule": {"expr": [{"match": {}}, {"counter": {"packets": 7, "bytes": 1}}, '
           '{"drop": null}]}}, {"rule": {"expr": [{"counter": {"packets": 3}}]}}]}')
    assert partition.cut_drops(doc) == [7, 3]
    assert partition.cut_drops("") == [] and partition.cut_drops("{}") == []


def test_forced_traffic_is_icmp_only_through_the_given_address() -> None:
    text = partition.force_batch("10.3.0.5", "10.1.0.11")
    assert "rule add to 10.3.0.5/32 ipproto icmp lookup 100 pref 100" in text
    assert "route replace 10.3.0.5/32 via 10.1.0.11 dev e0 table 100" in text
    assert partition.ping_argv("10.3.0.5", 250)[4] == "0.0040"


def test_a_ping_summary_is_the_last_one_in_the_log() -> None:
    first = ("--- 10.3.0.2 ping statistics ---\n4476 packets transmitted, 868 received, "
             "80.6% packet loss, time 47361ms\n")
    second = ("--- 10.3.0.2 ping statistics ---\n2971 packets transmitted, 418 received, "
              "+5 errors, 85.9% packet loss, time 31802ms\n")
    assert partition.ping_summary(first + "PING 10.3.0.2\n" + second) == (2971, 418)
    assert partition.ping_summary("PING 10.3.0.2 (10.3.0.2) 32(60) bytes of data.\n") is None


def test_the_release_bound_is_quorum_timeout_plus_fall_times_interval_plus_one() -> None:
    assert partfault.release_bound_s((1, 10, 3, 2)) == confgen.LAB_QUORUM_MS / 1000 + 1 + 3 + 1
    assert partfault.release_bound_s() == confgen.LAB_QUORUM_MS / 1000 + 1 + \
        confgen.LAB_HEALTH_TIMING[2] * \
        confgen.LAB_HEALTH_TIMING[0] + 1


def test_partition_backup_strikes_the_last_backup() -> None:
    gws = ["gw1", "gw2", "gw3"]
    assert partfault.target_of("partition-backup", "gw1", gws) == "gw3"
    assert partfault.target_of("partition", "gw1", gws) == "gw1"
    assert partfault.target_of("hasync", "gw2", gws) == "gw2"


@pytest.mark.parametrize(("section", "want"), [
    (None, None),
    ({}, None),
    ({"per_sa": {"192.0.2.101/c0ffee01": 12, "192.0.2.102/c0ffee02": 5}, "unknown": 9}, 12),
    ({"sas": [{"spi": "0xc0ffee01", "fenced": 4}, {"spi": "0xc0ffee02", "fenced": 8}]}, 4),
    ({"per_sa": {str(0xC0FFEE01): {"packets": 6}}}, 6),
    ({"per_sa": {"c0ffee02": 6}}, None),
])
def test_fenced_counts_are_read_defensively(section: object, want: int | None) -> None:
    assert partfault.find_counts(section, {0xC0FFEE01}) == want


def test_the_fence_section_is_found_under_the_guard_or_at_the_top() -> None:
    assert partfault.fence_section({"takeover": {"fence": {"a": 1}}}) == {"a": 1}
    assert partfault.fence_section({"fence": {"b": 1}}) == {"b": 1}
    assert partfault.fence_section({"takeover": {}}) is None
    assert partfault.fence_section(None) is None


def test_the_witness_config_has_only_node_and_cluster() -> None:
    text = confgen.witness_toml("wit", "10.1.0.9:7100", ["10.1.0.11:7100"], "/s", "/k",
                                "/c.sock", "/h")
    sections = [line for line in text.splitlines() if line.startswith("[")]
    assert sections == ["[node]", "[cluster]"]
    assert 'role = "witness"' in text and 'peers = ["10.1.0.11:7100"]' in text


def _run(argv: list[str], stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


@pytest.fixture
def small_lab(tmp_path: Path) -> Iterator[Lab]:
    """Two gateways, a server and a client on this host's bridges (prefix hq)."""
    topo = topology.plan(2, 1, nat_clients=0, prefix="hq")
    lab = Lab(topo, tmp_path)
    (tmp_path / "log").mkdir()
    try:
        topology.build(topo, _run)
        yield lab
    finally:
        subprocess.run(["nft", "delete", "table", "bridge", partition.CUT_TABLE],
                       capture_output=True, check=False)
        for argv in topology.teardown_commands(topo):
            subprocess.run(argv, capture_output=True, check=False)


def _reaches(lab: Lab, node: str, addr: str, tries: int = 1) -> bool:
    for _ in range(tries):
        res = subprocess.run(["ip", "netns", "exec", lab.topo.ns(node), "ping", "-c", "1",
                              "-W", "1", addr], capture_output=True, check=False)
        if res.returncode == 0:
            return True
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="bridges and namespaces need root")
def test_a_cut_node_reaches_clients_and_server_but_no_gateway_until_healed(
        small_lab: Lab) -> None:
    lab = small_lab
    gw2_pub, gw2_priv = "192.0.2.12", "10.1.0.12"
    assert _reaches(lab, "gw1", gw2_pub) and _reaches(lab, "gw1", gw2_priv)
    t0, t1 = partition.cut(lab, "gw1")
    assert t0 <= t1
    subprocess.run(["ip", "-n", lab.topo.ns("gw1"), "neigh", "flush", "all"], check=False)
    assert not _reaches(lab, "gw1", gw2_pub) and not _reaches(lab, "gw1", gw2_priv)
    assert not _reaches(lab, "gw2", "192.0.2.11")
    assert _reaches(lab, "gw1", "192.0.2.101") and _reaches(lab, "gw1", topology.SERVER_IP)
    assert _reaches(lab, "srv", "10.1.0.11") and _reaches(lab, "srv", gw2_priv)
    assert len(partition.read_cut_drops(lab)) == 2
    _, _, drops = partition.heal(lab)
    assert len(drops) == 2 and all(d > 0 for d in drops), drops  # both directions dropped
    # neighbour entries that failed during the cut take a retry to resolve again
    subprocess.run(["ip", "-n", lab.topo.ns("gw1"), "neigh", "flush", "all"], check=False)
    assert _reaches(lab, "gw1", gw2_pub, tries=3) and partition.read_cut_drops(lab) == []


def _ev(node: str, state: str, t: float) -> VrrpEvent:
    return VrrpEvent(node, state, t)


def test_the_master_to_strike_is_the_one_steady_master() -> None:
    flap = [_ev("gw1", "MASTER", 0.0), _ev("gw2", "BACKUP", 0.5), _ev("gw1", "FAULT", 10.0),
            _ev("gw2", "MASTER", 11.0)]
    assert cluster.steady_master(flap, 13.9, 3.0) is None  # gw2's MASTER is 2.9 s old
    assert cluster.steady_master(flap, 14.0, 3.0) == "gw2"
    both = [*flap, _ev("gw1", "BACKUP", 12.0), _ev("gw1", "MASTER", 12.5)]
    assert cluster.steady_master(both, 30.0, 3.0) is None  # two masters: not steady
    assert cluster.steady_master([], 5.0, 3.0) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_kernel_fence_is_read_in_the_nodes_namespace(tmp_path: Path) -> None:
    topo = topology.plan(2, 1, nat_clients=0, prefix="hk")
    lab, ns = Lab(topo, tmp_path), topo.ns("gw1")
    run = SimpleNamespace(lab=lab)
    key = ("192.0.2.101", 0xC0FFEE01, fence_rules.IPPROTO_ESP)
    script = fence_rules.setup_script() + fence_rules.plan_grant(
        fence_rules.FenceBook(), [Permit(key, 0, 100, False)]).script
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        assert partfault.kernel_fence(run, "gw1") is None  # type: ignore[arg-type]
        _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], script)
        # no packet dropped yet: the SA is known to the fence, nothing is counted
        assert partfault.kernel_fence(run, "gw1") == {  # type: ignore[arg-type]
            "fenced": {}, "unknown": 0}
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_waiting_for_a_steady_master_gives_up_after_the_timeout() -> None:
    watch = cluster.VrrpWatch()
    watch.events.append(_ev("gw1", "MASTER", time.monotonic()))
    assert watch.wait_steady(3.0, 0.0) is None  # the event is fresh: not steady yet
    watch.events[0] = _ev("gw1", "MASTER", time.monotonic() - 5.0)
    assert watch.wait_steady(3.0, 0.0) == "gw1"
