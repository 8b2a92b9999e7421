"""A 3-process hasync cluster on loopback fed a recorded HA stream: replication, mirroring,
crashes and restarts, and what must never be seen on disk or on the wire.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hastream
from fakevici import FakeCharon
from localcluster import LocalCluster, Node

N_TUNNELS = 60


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three daemons with a leader elected; n1 is VRRP master, the others backups."""
    c = LocalCluster(tmp_path)
    try:
        c.start_all()
        c.wait(lambda: c.leader() is not None, 30, "a Raft leader")
        for n in c.nodes:
            c.vrrp(n, "MASTER" if n.name == "n1" else "BACKUP")
        yield c
    finally:
        c.close()


def _journaled(c: LocalCluster, node: Node) -> set[tuple[int, int]]:
    return {(int(s["initiator_spi"], 16), int(s["responder_spi"], 16))
            for s in c.sas(node)["ike_sas"]}


def _all_hold(c: LocalCluster, want: set[tuple[int, int]], nodes: list[Node]) -> bool:
    try:
        return all(_journaled(c, n) == want for n in nodes)
    except Exception:
        return False


def test_stream_is_journaled_everywhere_and_mirrored_into_backups(cluster: LocalCluster) -> None:
    c, s = cluster, hastream.tunnels(N_TUNNELS)
    c.feed(c.nodes[0], s.datagrams)
    c.wait(lambda: _all_hold(c, s.ike_spis, c.nodes), 30, "every node journaling the stream")
    time.sleep(1.0)
    for backup in c.nodes[1:]:
        got = set(c.drain(backup))
        assert set(s.datagrams) <= got, f"{backup.name} charon missed datagrams"
        st = c.status(backup)
        assert st is not None and st["role"] == "backup" and st["synced"]
    master = c.drain(c.nodes[0])
    assert not set(s.datagrams) & set(master), "the master's own charon was fed its stream"
    st = c.status(c.nodes[0])
    assert st is not None and st["journal"]["child_sas"] == N_TUNNELS and st["lag"] == 0
    # the master applied its own batches with the decodes its endpoint made (D272); the
    # backups decoded them: all they hold came over Raft
    assert st["raft_apply"]["decodes_reused"] == len(s.datagrams)
    assert all("decodes_reused" not in (c.status(b) or {"raft_apply": {"x": 1}})["raft_apply"]
               for b in c.nodes[1:])
    def members_known() -> bool:
        st = c.status(c.nodes[1])
        return st is not None and {k: m["vrrp"] for k, m in st["members"].items()} == {
            "n1": "master", "n2": "backup", "n3": "backup"}
    c.wait(members_known, 15, "every node's VRRP role in a backup's status")
    shown = json.dumps([c.sas(n) for n in c.nodes] + [c.status(n) for n in c.nodes])
    for secret in s.secrets:  # `hasync sas` and `hasync status` never show a secret
        assert secret.hex() not in shown and secret.hex().upper() not in shown


def test_leader_crash_follower_restart_and_full_restart_lose_nothing(
        cluster: LocalCluster) -> None:
    c, s = cluster, hastream.tunnels(N_TUNNELS)
    leader = c.leader()
    assert leader is not None
    source = next(n for n in c.nodes if n is not leader)  # charon's stream enters a follower
    half = len(s.datagrams) // 2
    c.feed(source, s.datagrams[:half], pace=0.001)
    c.kill(leader)  # kill -9 the Raft leader mid-stream
    c.feed(source, s.datagrams[half:], pace=0.001)
    alive = [n for n in c.nodes if n is not leader]
    c.wait(lambda: _all_hold(c, s.ike_spis, alive), 40, "survivors holding the whole stream")
    c.start(leader)  # the crashed node comes back and catches up
    c.wait(lambda: _all_hold(c, s.ike_spis, c.nodes), 40, "the restarted leader catching up")
    follower = next(n for n in c.nodes if n is not c.leader())
    c.kill(follower, signal.SIGTERM)
    c.start(follower)
    c.wait(lambda: _all_hold(c, s.ike_spis, c.nodes), 40, "a restarted follower")
    for n in c.nodes:  # the whole cluster down at once, then up from disk alone
        c.kill(n)
    c.start_all()
    c.wait(lambda: _all_hold(c, s.ike_spis, c.nodes), 60, "the whole cluster after restart")


def test_no_secret_reaches_disk_or_the_raft_wire(cluster: LocalCluster, tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("tcpdump"):
        pytest.skip("capturing loopback needs root and tcpdump")
    c, s = cluster, hastream.tunnels(20)
    pcap = tmp_path / "raft.pcap"
    ports = " or ".join(f"port {n.raft}" for n in c.nodes)
    cap = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w", str(pcap),
                            "-Z", "root", f"tcp and ({ports})"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        c.feed(c.nodes[0], s.datagrams)
        c.wait(lambda: _all_hold(c, s.ike_spis, c.nodes), 30, "the stream everywhere")
        time.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGTERM)
        cap.wait(timeout=10)
    wire = pcap.read_bytes()
    assert len(wire) > 10_000, "the capture saw no Raft traffic"
    files = _state_files(c)
    assert any("journal" in p.name for p in files)
    for secret in s.secrets:
        assert secret not in wire, "a nonce or DH secret crossed the Raft port in clear"
        for p, data in files.items():
            assert secret not in data, f"a secret is in clear in {p}"


def _state_files(c: LocalCluster) -> dict[Path, bytes]:
    """Every node's state files and their bytes, read in one pass while the daemons run: a
    temporary file renamed into place between the listing and its read makes a fresh pass."""
    for _ in range(10):
        try:
            return {p: p.read_bytes() for n in c.nodes
                    for p in (n.dir / "state").rglob("*") if p.is_file()}
        except FileNotFoundError:
            time.sleep(0.05)
    raise AssertionError("the state directories kept changing under 10 readings")


def test_garbage_and_strangers_do_not_stop_a_node(cluster: LocalCluster) -> None:
    c, n1 = cluster, cluster.nodes[0]
    for node in c.nodes:
        for size in (1, 100, 5000):
            with socket.create_connection(("127.0.0.1", node.raft), timeout=2) as sock:
                sock.sendall(os.urandom(size))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(node.sock))
            sock.sendall(os.urandom(3000) + b"\n")
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.3", 0))
    s = hastream.tunnels(5)
    for d in s.datagrams:
        stranger.sendto(d, ("127.0.0.2", n1.ha_remote))
    stranger.close()
    c.feed(n1, s.datagrams[:4])  # one whole tunnel from the real charon
    time.sleep(0.5)
    st = c.status(n1)
    # connected to charon's address: the kernel never queues a stranger's datagram
    assert st is not None and st["ha"]["received"] == 4 and "dropped" not in st["ha"]
    first = s.datagrams[0]
    want = {next((i, r) for i, r in s.ike_spis if first.find(i.to_bytes(8, "big")) >= 0)}
    c.wait(lambda: _all_hold(c, want, c.nodes), 30, "the one real tunnel everywhere")
    assert all(n.proc is not None and n.proc.poll() is None for n in c.nodes)


def test_finding3_a_restarted_backup_charon_gets_the_journal_again_once_its_conns_load(
        cluster: LocalCluster) -> None:
    """charon restarts on a backup (a new incarnation over vici, its connections not loaded
    yet): nothing is replayed into it until they are, its health fails meanwhile, then the
    whole journal is replayed into it (deploy/ sets resync = no: charon never asks)."""
    from hasync import control
    c, s = cluster, hastream.tunnels(N_TUNNELS)
    backup = c.nodes[1]
    assert backup.vici is not None
    c.feed(c.nodes[0], s.datagrams)
    c.wait(lambda: _all_hold(c, s.ike_spis, c.nodes), 30, "every node journaling the stream")
    def settled() -> bool:
        c.drain(backup)
        st = c.status(backup) or {}
        return st.get("synced") is True and st["feed"]["queued"] == 0
    c.wait(settled, 30, "the backup synced and fed")
    time.sleep(1.0)
    c.drain(backup)
    backup.vici.stop()  # charon restarts: a new vici socket, no connection loaded yet
    backup.vici.path.unlink()
    backup.vici = FakeCharon(backup.vici.path, conns=())

    def problems() -> list[str]:
        return list(control.request(backup.sock, "health", timeout=3.0)["problems"])
    c.wait(lambda: any(p.startswith("charon_not_ready") for p in problems()), 15,
           "the backup's health naming charon not ready")
    time.sleep(2.0)
    assert not set(s.datagrams) & set(c.drain(backup)), "replayed before conns were loaded"
    assert (c.status(backup) or {}).get("synced") is False
    backup.vici.conns = ("rw",)  # swanctl --load-all
    got: set[bytes] = set()

    def replayed() -> bool:  # the stand-in charon reads what it is fed, as charon would
        got.update(c.drain(backup))
        return set(s.datagrams) <= got and (c.status(backup) or {}).get("synced") is True
    c.wait(replayed, 30, "the replay of the whole journal")
    st = c.status(backup)
    assert st is not None and st["takeover"]["charon"]["restarts"] == 1
    assert st["counters"]["replays"] == 2 and not problems()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to run a socket as nobody)")
def test_finding1_an_impostor_at_a_backups_charon_address_journals_nothing_and_hears_nothing(
        cluster: LocalCluster) -> None:
    """charon is down on backup n2; uid nobody binds its HA address and sends a whole tunnel:
    nothing is journaled anywhere, and nothing n2 sends (heartbeats, the mirrored stream)
    reaches that socket."""
    import sys

    from test_endpoint import NOBODY
    c, n1, n2 = cluster, cluster.nodes[0], cluster.nodes[1]
    assert n2.charon is not None
    n2.charon.close()
    n2.charon = None
    imp = subprocess.Popen([sys.executable, "-c", NOBODY, str(n2.ha_local), str(n2.ha_remote)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert imp.stdin is not None and imp.stdout is not None
        assert imp.stdout.readline().strip() == "bound"
        forged, real = hastream.tunnels(2).datagrams[:4], hastream.tunnels(3).datagrams[-4:]
        for d in forged:
            imp.stdin.write(d.hex() + "\n")
            imp.stdin.flush()
            assert imp.stdout.readline().strip() == "sent"
        c.feed(n1, real)  # the master's real charon: mirrored towards n2's (absent) charon
        want = {k for k in hastream.tunnels(3).ike_spis
                if any(r.find(k[0].to_bytes(8, "big")) >= 0 for r in real)}
        c.wait(lambda: _all_hold(c, want, c.nodes), 30, "the real tunnel everywhere")
        time.sleep(2.0)  # heartbeats go every second: two at least would have reached it
        imp.stdin.write("recv\n")
        imp.stdin.flush()
        assert imp.stdout.readline().strip() == "received 0"
    finally:
        imp.kill()
        imp.wait(5)
    st = c.status(n2)
    assert st is not None and st["ha"]["dropped:not_root"] == len(forged)
    assert st["ha"]["send_refused:not_root"] >= 2 and st["ha"].get("accepted", 0) == 0
    assert all(_journaled(c, n) == want for n in c.nodes)
