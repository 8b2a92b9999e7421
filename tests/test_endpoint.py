"""The HA endpoint on real UDP sockets over loopback: charon's datagrams in, nothing from
anyone else, nothing to a socket not owned by root (issue 17, findings 1 and 2)."""

from __future__ import annotations

import asyncio
import os
import pwd
import random
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from hasync import procudp
from hasync.endpoint import HaEndpoint, open_endpoint
from hasync.ha import HaMessage, MalformedMessage, decode

from hastream import golden

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to run a socket as nobody)")
NOBODY = """
import os, socket, sys, time
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.settimeout(0.2)
print("bound", flush=True)
got = 0
for line in sys.stdin:  # one datagram to send per line; "recv" counts what arrives
    if line.startswith("recv"):
        try:
            while True:
                s.recv(65535)
                got += 1
        except OSError:
            print("received", got, flush=True)
    else:
        s.sendto(bytes.fromhex(line.strip()), ("127.0.0.2", int(sys.argv[2])))
        print("sent", flush=True)
"""


def _vectors() -> list[bytes]:
    return list(golden().values())


def _udp(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    return s


async def _settle(ep: HaEndpoint, counter: str, want: int) -> None:
    for _ in range(200):
        if ep.counters[counter] >= want:
            return
        await asyncio.sleep(0.01)


async def _exchange(sender: socket.socket, ep: HaEndpoint, payloads: list[bytes],
                    counter: str = "received") -> None:
    want = ep.counters[counter] + len(payloads)
    for p in payloads:
        sender.sendto(p, ep.sockname)
    await _settle(ep, counter, want)


def _open(charon: socket.socket, handler: Callable[[bytes, HaMessage, float], None],
          ) -> HaEndpoint:
    return open_endpoint(("127.0.0.2", 0), charon.getsockname(), handler)


def test_accepts_charon_drops_malformed_and_sees_nothing_from_strangers() -> None:
    async def main() -> None:
        charon, stranger = _udp(), _udp(host="127.0.0.3")
        got: list[HaMessage] = []
        ep = _open(charon, lambda raw, msg, now: got.append(msg))
        vectors = _vectors()
        await _exchange(charon, ep, vectors)
        for v in vectors[:3]:  # connected: the kernel never queues a stranger's datagram
            stranger.sendto(v, ep.sockname)
        rng = random.Random(19)  # seeded: os.urandom's 2 bytes were once a valid header
        garbage = [rng.randbytes(n) for n in (0, 1, 2, 7, 300)] + [b"\x03\x63", b"\x09\x01"]
        for g in garbage:
            with pytest.raises(MalformedMessage):
                decode(g)
        await _exchange(charon, ep, garbage)
        assert len(got) == len(vectors) and ep.counters["accepted"] == len(vectors)
        assert ep.counters["received"] == len(vectors) + len(garbage)
        malformed = sum(v for k, v in ep.counters.items() if k.startswith("dropped:malformed"))
        assert malformed == len(garbage)
        assert ep.last_rx is not None
        assert ep.send(vectors[0])  # it still works after all that, and sends to charon
        charon.settimeout(2)
        assert charon.recv(65535) == vectors[0]
        ep.close()
        for s in (charon, stranger):
            s.close()
    asyncio.run(main())


def test_a_failing_handler_is_counted_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        charon = _udp()

        def boom(raw: bytes, msg: HaMessage, now: float) -> None:
            raise RuntimeError("handler bug")

        ep = _open(charon, boom)
        await _exchange(charon, ep, _vectors()[:2])
        assert ep.counters["handler_error"] == 2
        ep.close()
        charon.close()
    asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage().startswith("handling ")]
    assert len(failed) == 2 and all(r.exc_info and r.exc_info[0] is RuntimeError for r in failed)


@AS_ROOT
def test_finding1_a_user_at_charons_address_is_neither_heard_nor_told() -> None:
    """As uid nobody, bind charon's address while charon is down and send a golden IKE_ADD:
    nothing is handed on, nothing is sent to that socket, the counters say so."""
    async def main() -> None:
        port = _udp().getsockname()[1]  # a free port for "charon", closed: charon is down
        got: list[HaMessage] = []
        ep = open_endpoint(("127.0.0.2", 0), ("127.0.0.1", port),
                           lambda raw, msg, now: got.append(msg))
        impostor = subprocess.Popen([sys.executable, "-c", NOBODY, str(port),
                                     str(ep.sockname[1])], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
        assert impostor.stdin is not None and impostor.stdout is not None
        assert impostor.stdout.readline().strip() == "bound"
        assert [r.uid for r in procudp.sockets_at(("127.0.0.1", port))] == [
            pwd.getpwnam("nobody").pw_uid]
        for _ in range(3):
            impostor.stdin.write(golden()["ike_add"].hex() + "\n")
            impostor.stdin.flush()
            assert impostor.stdout.readline().strip() == "sent"
        await _settle(ep, "received", 3)
        assert not ep.send(golden()["status_empty"])
        impostor.stdin.write("recv\n")
        impostor.stdin.flush()
        answer = impostor.stdout.readline().strip()
        impostor.stdin.close()
        impostor.wait(5)
        ep.close()
        assert got == [] and ep.counters["accepted"] == 0
        assert ep.counters["dropped:not_root"] == 3, dict(ep.counters)
        assert ep.counters["send_refused:not_root"] == 1 and ep.counters["sent"] == 0
        assert answer == "received 0"
    asyncio.run(main())


def test_finding1_a_batch_from_another_socket_than_the_one_verified_is_dropped() -> None:
    """charon restarts (its socket's inode changes): what came in between is not trusted."""
    async def main() -> None:
        charon = _udp()
        got: list[HaMessage] = []
        ep = _open(charon, lambda raw, msg, now: got.append(msg))
        await _exchange(charon, ep, _vectors()[:2])
        port = charon.getsockname()[1]
        charon.close()
        reborn = _udp(port)  # a new socket at the same address: another inode
        await _exchange(reborn, ep, _vectors()[:2])
        assert ep.counters["dropped:owner_changed"] == 2 and len(got) == 2
        await _exchange(reborn, ep, _vectors()[:2])  # the new socket is verified from now on
        assert len(got) == 4
        ep.close()
        reborn.close()
    asyncio.run(main())


def test_finding2_a_flood_from_elsewhere_is_not_queued_and_kernel_drops_are_counted() -> None:
    async def main() -> None:
        charon, stranger = _udp(), _udp(host="127.0.0.3")
        got: list[HaMessage] = []
        ep = _open(charon, lambda raw, msg, now: got.append(msg))
        loop = asyncio.get_running_loop()
        loop.remove_reader(ep.sock.fileno())  # the loop is busy: nothing is read for a while
        ep.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(2000):  # a flood from another socket: never reaches this queue
            stranger.sendto(b"\x03" * 1000, ep.sockname)
        vector = _vectors()[0]
        for _ in range(3):
            charon.sendto(vector, ep.sockname)
        ep.start(loop)
        await _settle(ep, "accepted", 3)
        assert ep.counters["accepted"] == 3 and ep.counters["kernel_drops"] == 0
        loop.remove_reader(ep.sock.fileno())
        for _ in range(200):  # charon itself overflows the queue: the kernel's drops show
            charon.sendto(vector, ep.sockname)
        ep.start(loop)
        await asyncio.sleep(0.2)  # the queue is read
        charon.sendto(vector, ep.sockname)  # the drop count rides on the next datagram
        await _settle(ep, "kernel_drops", 1)
        assert ep.counters["kernel_drops"] > 0, dict(ep.counters)
        ep.close()
        for s in (charon, stranger):
            s.close()
    asyncio.run(main())


def test_proc_address_matches_what_the_kernel_prints() -> None:
    s = _udp(host="127.0.0.5")
    port = s.getsockname()[1]
    rows = procudp.sockets_at(("127.0.0.5", port))
    assert len(rows) == 1 and rows[0].uid == os.geteuid()
    assert procudp.proc_address(("127.0.0.5", port)) == rows[0].local
    s.close()
    assert procudp.sockets_at(("127.0.0.5", port)) == []
    assert procudp.parse("header\nshort row\n") == []
