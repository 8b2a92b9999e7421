"""The HA endpoint on real UDP sockets over loopback: charon's datagrams in, others dropped."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from hasync.endpoint import HaEndpoint, open_endpoint
from hasync.ha import HaMessage

from hastream import golden


def _vectors() -> list[bytes]:
    return list(golden().values())


def _udp(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    return s


async def _exchange(sender: socket.socket, ep: HaEndpoint, payloads: list[bytes]) -> None:
    assert ep.transport is not None
    addr = ep.transport.get_extra_info("sockname")
    want = ep.counters["received"] + len(payloads)
    for p in payloads:
        sender.sendto(p, addr)
    for _ in range(200):
        if ep.counters["received"] >= want:
            return
        await asyncio.sleep(0.01)


def test_accepts_charon_drops_foreign_and_malformed() -> None:
    async def main() -> None:
        charon, stranger = _udp(), _udp(host="127.0.0.3")
        got: list[HaMessage] = []
        ep = await open_endpoint(("127.0.0.1", 0), charon.getsockname(),
                                 lambda raw, msg, now: got.append(msg))
        vectors = _vectors()
        await _exchange(charon, ep, vectors)
        await _exchange(stranger, ep, vectors[:3])
        garbage = [os.urandom(n) for n in (0, 1, 2, 7, 300)] + [b"\x03\x63", b"\x09\x01"]
        await _exchange(charon, ep, garbage)
        assert len(got) == len(vectors)
        assert ep.counters["accepted"] == len(vectors)
        assert ep.counters["dropped:foreign_source"] == 3
        malformed = sum(v for k, v in ep.counters.items() if k.startswith("dropped:malformed"))
        assert malformed >= len(garbage) - 1  # a random 2-byte datagram may be a valid header
        assert ep.last_rx is not None
        # the endpoint still works after all that, and sends to charon
        assert ep.send(vectors[0])
        charon.settimeout(2)
        assert charon.recv(65535) == vectors[0]
        assert ep.transport is not None
        ep.transport.close()
        for s in (charon, stranger):
            s.close()
    asyncio.run(main())


def test_a_failing_handler_is_counted_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        charon = _udp()

        def boom(raw: bytes, msg: HaMessage, now: float) -> None:
            raise RuntimeError("handler bug")

        ep = await open_endpoint(("127.0.0.1", 0), charon.getsockname(), boom)
        await _exchange(charon, ep, _vectors()[:2])
        assert ep.counters["handler_error"] == 2
        assert ep.transport is not None
        ep.transport.close()
        charon.close()
    asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage().startswith("handling ")]
    assert len(failed) == 2 and all(r.exc_info and r.exc_info[0] is RuntimeError for r in failed)
