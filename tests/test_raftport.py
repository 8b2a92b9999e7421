"""Issue 17 finding 4: the Raft port cannot be exhausted without the key. A real cluster of
ClusterJournals on 127.0.0.x, an attacker in its own process (idle connections and junk, from
a member's address and from elsewhere), and the pure parts (frames, admission) on their own."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hasync import views
from hasync.journal.seal import derive_keys
from hasync.raft import ClusterJournal
from hasync.raftport import PER_PEER, FrameError, FrameReader, PortPolicy
from hasync.syncobj_compat import FailReason, outcome

from netutil import free_ports, wait_until

KEYS = derive_keys(bytes(range(32)), "test")
FLOOD = 2000  # idle connections from each attacker address
JUNK = 64 << 20  # bytes of junk from each attacker address
SYSTEMD_NOFILE = 1024  # systemd's soft RLIMIT_NOFILE for a unit that sets no LimitNOFILE
MEMBER_SRC, OUTSIDER_SRC = "127.0.0.2", "127.0.0.9"  # the second node's address; no member's
FLOOD_SCRIPT = Path(__file__).with_name("raftflood.py")


def _wait(pred: Callable[[], object], timeout: float = 30.0) -> None:
    wait_until(pred, timeout)


def _settle(pred: Callable[[], object], timeout: float = 10.0) -> None:
    """Give the node up to `timeout` to reach `pred` (checked later by behaviour)."""
    with contextlib.suppress(AssertionError):
        _wait(pred, timeout)


def _commit(propose: Callable[[Callable[[Any, Any], None]], None],
            timeout: float = 30.0) -> FailReason:
    done: list[Any] = []
    propose(lambda result, error: done.append(error))
    _wait(lambda: done, timeout)
    return outcome(done[0])


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def _nofile(soft: int) -> Iterator[None]:
    """The process's soft RLIMIT_NOFILE set to `soft`, restored afterwards."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


class _Cluster:
    """n ClusterJournals, node i on 127.0.0.(i+1); node 0 has the lowest address, so the
    others dial it (pysyncobj/transport.py, TCPTransport._shouldConnect)."""

    def __init__(self, base: Path, n: int) -> None:
        self.base = base
        self.addrs = [f"127.0.0.{i + 1}:{p}" for i, p in enumerate(free_ports(n))]
        self.nodes = [self._start(i) for i in range(n)]

    def _start(self, i: int) -> ClusterJournal:
        peers = [a for a in self.addrs if a != self.addrs[i]]
        return ClusterJournal(f"n{i}", self.addrs[i], peers, self.base / f"n{i}", KEYS)

    @property
    def port(self) -> int:
        """Node 0's Raft port."""
        return int(self.addrs[0].rsplit(":", 1)[1])

    def joined(self) -> bool:
        """Every node sees a leader and all its peers connected."""
        sts = [j.status() for j in self.nodes]
        return all(s["leader"] and len(s["peers"]) == len(self.nodes) - 1
                   and set(s["peers"].values()) == {"connected"} for s in sts)

    def restart(self, i: int) -> None:
        """Stop node i and start it again on the same port and state."""
        import time
        self.nodes[i].destroy()
        _wait(lambda: self.nodes[0].status()["peers"].get(self.addrs[i]) == "down")
        time.sleep(0.5)  # pysyncobj's destroy runs on its thread (tests/test_raft.py likewise)
        self.nodes[i] = self._start(i)

    def close(self) -> None:
        for j in self.nodes:
            j.destroy()


class _Attacker:
    """tests/raftflood.py in its own process."""

    def __init__(self, what: str, port: int, src: str, n: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(FLOOD_SCRIPT), what, "127.0.0.1", str(port), src, str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout

    def ready(self) -> None:
        """An idle attacker has started (it opens nothing before `go`)."""
        assert self.stdout.readline().strip() == "ready"

    def go(self) -> dict[str, int]:
        """Let an idle attacker connect; its counts once all are open."""
        self.stdin.write("go\n")
        self.stdin.flush()
        return self.result()

    def result(self) -> dict[str, int]:
        line = self.stdout.readline()
        assert line, f"attacker exited with {self.proc.wait()}"
        return dict(json.loads(line))

    def close(self) -> None:
        self.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _junk(port: int, src: str) -> dict[str, int]:
    attacker = _Attacker("junk", port, src, JUNK)
    try:
        return attacker.result()
    finally:
        attacker.close()


def _member_dials_in(cluster: _Cluster, i: int) -> None:
    """Node i restarts and dials node 0 afresh (node 0 saw it go down, then sees it
    connected), and node i commits through the cluster."""
    cluster.restart(i)
    _wait(lambda: cluster.nodes[0].status()["peers"].get(cluster.addrs[i]) == "connected")
    _wait(cluster.joined)
    assert _commit(cluster.nodes[i].barrier) is FailReason.SUCCESS


def test_finding4_raft_port_exhaustion_by_idle_connections_and_junk(tmp_path: Path) -> None:
    with _nofile(SYSTEMD_NOFILE):
        cluster = _Cluster(tmp_path, 3)
        attackers: list[_Attacker] = []
        try:
            target = cluster.nodes[0]
            _wait(cluster.joined)
            with pytest.raises(ConnectionRefusedError):  # it listens on its own address only
                socket.create_connection(("127.0.0.5", cluster.port), timeout=5)
            assert _commit(target.barrier) is FailReason.SUCCESS
            # the largest entry hasync makes (a 4 x 60 KB batch) still crosses the port,
            # forwarded by a follower as one apply_command message
            big = [os.urandom(60_000) for _ in range(4)]
            assert _commit(lambda cb: cluster.nodes[2].submit(big, cb)) is FailReason.SUCCESS
            base = _fds()
            attackers = [_Attacker("idle", cluster.port, src, FLOOD)
                         for src in (MEMBER_SRC, OUTSIDER_SRC)]
            for a in attackers:
                a.ready()
            member, outsider = (a.go() for a in attackers)
            # the listening socket is still open (pysyncobj's closes on EMFILE: refused), ...
            socket.create_connection(("127.0.0.1", cluster.port), timeout=5,
                                     source_address=("127.0.0.3", 0)).close()
            assert member["opened"] + outsider["opened"] >= FLOOD  # (so the flood got in)
            assert _fds() <= base + PER_PEER + 8  # ... and holds no more than the caps allow
            assert _commit(target.barrier) is FailReason.SUCCESS
            junk = [_junk(cluster.port, src) for src in (MEMBER_SRC, OUTSIDER_SRC)]
            assert all(j["sent"] >= JUNK for j in junk), junk
            assert _fds() <= base + PER_PEER + 8
            assert _commit(target.barrier) is FailReason.SUCCESS
            for a in attackers:
                a.close()
            _member_dials_in(cluster, 2)
            counts = target.raft_port.snapshot()
            assert counts["rejected_not_member"] >= outsider["opened"]
            # a snapshot names only the counters that counted: one of these two may be absent
            shed = counts.get("evicted_peer_cap", 0) + counts.get("handshake_timeout", 0)
            assert shed >= member["opened"] - PER_PEER, counts
            assert counts["oversize"] >= 1 and counts["bad_token"] >= 1
            assert target.status()["leader"] is not None
            assert "raft port: {" in views.status_text({"raft_port": counts})
        finally:
            for a in attackers:
                a.close()
            cluster.close()


def _leave_free(n: int) -> int:
    """Set the soft RLIMIT_NOFILE so that exactly `n` more descriptors can be opened now;
    returns the limit (probed by opening /dev/null until EMFILE)."""
    def free() -> int:
        held: list[int] = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            return len(held)
        finally:
            for fd in held:
                os.close(fd)

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = max(map(int, os.listdir("/proc/self/fd"))) + 1 + n
    for _ in range(200):  # Raft's threads open and close files meanwhile (the journal's meta)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(limit, 3), hard))
        have = free()
        if have == n:
            return limit
        limit += n - have
        time.sleep(0.01)
    raise AssertionError(f"could not leave {n} descriptors free")


# With no descriptor free, only outsiders dial: an accepted member's connection would wait in
# its handshake and be shed instead (shed_for_fd), and Raft's own threads free a descriptor now
# and then (the journal's meta), so a member could be accepted before the first EMFILE.
@pytest.mark.parametrize(("spare", "shed", "sources"), [
    (0, "shed_new_for_fd", (OUTSIDER_SRC,)),
    (1, "shed_for_fd", (MEMBER_SRC, OUTSIDER_SRC))])
def test_finding4_raft_port_keeps_listening_when_out_of_descriptors(
        tmp_path: Path, spare: int, shed: str, sources: tuple[str, ...]) -> None:
    cluster = _Cluster(tmp_path, 2)
    attackers: list[_Attacker] = []
    try:
        target = cluster.nodes[0]
        _wait(cluster.joined)
        attackers = [_Attacker("idle", cluster.port, src, 50) for src in sources]
        for a in attackers:
            a.ready()
        with _nofile(resource.getrlimit(resource.RLIMIT_NOFILE)[0]):
            _leave_free(spare)  # accept() now fails with EMFILE once `spare` fds are taken
            for a in attackers:
                a.go()
            _settle(lambda: target.raft_port[shed] >= 1)
        for a in attackers:
            a.close()
        # the listening socket survived: the other member restarts and dials in again
        _member_dials_in(cluster, 1)
        assert _commit(target.barrier) is FailReason.SUCCESS
        counts = target.raft_port.snapshot()
        assert counts["accept_no_fd"] >= 1 and counts[shed] >= 1
    finally:
        for a in attackers:
            a.close()
        cluster.close()


def test_frames_are_split_and_bounded() -> None:
    reader = FrameReader(limit=100)
    payloads = [b"a" * 100, b"", b"xyz"]
    stream = b"".join(struct.pack("i", len(p)) + p for p in payloads)
    for i in range(0, len(stream), 7):  # any split of the stream gives the same frames
        reader.feed(stream[i:i + 7])
    assert [reader.next(), reader.next(), reader.next(), reader.next()] == [*payloads, None]
    assert len(reader) == 0
    with pytest.raises(FrameError) as big:
        FrameReader(limit=100).feed(struct.pack("i", 101))  # refused on its header alone
    assert big.value.reason == "oversize"
    with pytest.raises(FrameError) as negative:
        FrameReader(limit=100).feed(struct.pack("i", -1))
    assert negative.value.reason == "bad_length"


def test_admission_members_only_capped_per_address_with_a_deadline() -> None:
    policy = PortPolicy({"10.0.0.1": 1, "10.0.0.2": 2}, per_peer=2, handshake_s=5.0)
    assert policy.admit("x", "10.9.9.9", 0.0) == ("rejected_not_member", [])
    assert policy.admit("a1", "10.0.0.1", 0.0) == (None, [])
    assert policy.admit("a2", "10.0.0.1", 1.0) == (None, [])
    assert policy.admit("a3", "10.0.0.1", 2.0) == (None, ["a1"])  # the oldest pending goes
    policy.authenticated("a2")
    policy.authenticated("a3")
    assert policy.admit("a4", "10.0.0.1", 3.0) == ("rejected_peer_cap", [])  # members stay
    for k in ("b1", "b2", "b3", "b4"):  # two members' addresses on one IP: twice the cap
        assert policy.admit(k, "10.0.0.2", 3.0) == (None, [])
    assert policy.expired(7.9) == []
    assert policy.expired(8.0) == ["b1", "b2", "b3", "b4"]  # authenticated never expire
    policy.closed("a2")
    assert policy.admit("a5", "10.0.0.1", 9.0) == (None, [])
