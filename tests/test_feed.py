"""hasync.feed: charon's socket queue read from /proc/net/udp, and a feed that never overruns
a slow reader (the restored backup's replay lost most SAs to a full socket buffer)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from hasync import feed
from hasync.feed import CharonFeed, udp_rx_queue

HEAD = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops")
ROW = ("  {n}: {addr} 00000000:0000 07 00000000:{q} 00:00000000 00000000     0        0 4242 2 "
       "0000000000000000 0")
PROC = "\n".join([HEAD, ROW.format(n=123, addr="0100007F:119E", q="00004A00"),
                  ROW.format(n=124, addr="0200007F:119E", q="00000000")]) + "\n"

def test_rx_queue_of_the_socket_bound_to_the_address() -> None:
    assert udp_rx_queue(PROC, ("127.0.0.1", 4510)) == 0x4A00
    assert udp_rx_queue(PROC, ("127.0.0.2", 4510)) == 0
    assert udp_rx_queue(PROC, ("127.0.0.3", 4510)) is None
    assert udp_rx_queue("header only\n", ("127.0.0.1", 4510)) is None


def test_feed_waits_for_room_and_keeps_order(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    proc = tmp_path / "udp"
    sent: list[bytes] = []
    levels = iter([feed.DEFAULT_RCVBUF, feed.DEFAULT_RCVBUF] + [0] * 100)

    def send(raw: bytes) -> None:
        sent.append(raw)
        level = next(levels)
        proc.write_text(PROC.replace("00004A00", f"{level:08X}"))

    async def main() -> CharonFeed:
        f = CharonFeed(send, ("127.0.0.1", 4510), proc)
        task = asyncio.create_task(f.run())
        f.put([bytes([k]) for k in range(40)])
        f.put([b"late"])
        await asyncio.wait_for(f.drained(), 5)
        task.cancel()
        return f
    monkeypatch.setattr(feed, "POLL_S", 0.001)
    proc.write_text(PROC)
    f = asyncio.run(main())
    assert sent == [bytes([k]) for k in range(40)] + [b"late"]
    assert f.counters == {"fed": 41, "stalls": 0, "fallback": 0, "overflows": 0,
                          "overflow_dropped": 0} and f.queued == 0


def test_feed_without_proc_file_pauses_and_a_stalled_reader_is_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "FALLBACK_PAUSE_S", 0.001)
    monkeypatch.setattr(feed, "STALL_S", 0.01)
    monkeypatch.setattr(feed, "POLL_S", 0.001)
    full = tmp_path / "udp"
    full.write_text(PROC.replace("00004A00", f"{feed.DEFAULT_RCVBUF // 2:08X}"))

    async def run(path: Path) -> CharonFeed:
        f = CharonFeed(lambda raw: None, ("127.0.0.1", 4510), path, rcvbuf=feed.DEFAULT_RCVBUF)
        task = asyncio.create_task(f.run())
        f.put([b"x"] * 32)  # MIN_BURST (16 KiB) holds 22 of them: two bursts
        await asyncio.wait_for(f.drained(), 5)
        task.cancel()
        return f
    assert asyncio.run(run(tmp_path / "missing")).counters["fallback"] == 2
    assert asyncio.run(run(full)).counters["stalls"] == 2


def test_the_cost_of_a_datagram_bounds_what_the_kernel_queues_for_it() -> None:
    """The feed's budget holds only if `datagram_cost` is at least the datagram's truesize."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for size in [*range(1, 4200, 13), 8000, 16000, 60000]:
            tx.sendto(b"x" * size, rx.getsockname())
            queued = udp_rx_queue(Path("/proc/net/udp").read_text(), rx.getsockname())
            assert queued is not None and 0 < queued <= feed.datagram_cost(b"x" * size), size
            rx.recv(65535)
    finally:
        rx.close()
        tx.close()


def test_a_fast_reader_is_fed_in_bursts_that_fill_its_queue(tmp_path: Path) -> None:
    """An empty queue takes half the buffer's worth in one burst, read once (not 16 per read)."""
    proc, reads = tmp_path / "udp", []
    proc.write_text(PROC.replace("00004A00", "00000000"))

    async def main() -> CharonFeed:
        f = CharonFeed(lambda raw: None, ("127.0.0.1", 4510), proc, rcvbuf=feed.DEFAULT_RCVBUF)
        real = f.rx_queue
        f.rx_queue = lambda: reads.append(1) or real()  # type: ignore[method-assign]
        task = asyncio.create_task(f.run())
        f.put([b"y" * 400] * 400)
        await asyncio.wait_for(f.drained(), 5)
        task.cancel()
        return f
    f = asyncio.run(main())
    per_burst = -(-(feed.DEFAULT_RCVBUF // 2) // feed.datagram_cost(b"y" * 400))
    assert f.counters["fed"] == 400 and len(reads) == -(-400 // per_burst) and per_burst > 16


def test_a_slow_reader_with_a_small_buffer_loses_nothing() -> None:
    """Real sockets: 600 datagrams of 700 bytes (2.25 KiB each in the socket's accounting)
    into a 128 KiB receive buffer, read slowly: 1.3 MiB in all, none dropped."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the kernel doubles it
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = rx.getsockname()
    got: list[bytes] = []

    async def reader() -> None:
        while len(got) < 600:
            try:
                got.append(rx.recv(2048))
            except BlockingIOError:
                await asyncio.sleep(0.002)
            if len(got) % 8 == 0:
                await asyncio.sleep(0.001)

    async def main() -> CharonFeed:
        f = CharonFeed(lambda raw: tx.sendto(raw, addr), addr,
                       rcvbuf=rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        tasks = [asyncio.create_task(f.run()), asyncio.create_task(reader())]
        f.put([k.to_bytes(2, "big") * 350 for k in range(600)])
        await asyncio.wait_for(f.drained(), 30)
        await asyncio.wait_for(tasks[1], 30)
        tasks[0].cancel()
        return f
    try:
        f = asyncio.run(main())
    finally:
        rx.close()
        tx.close()
    assert [int.from_bytes(g[:2], "big") for g in got] == list(range(600))
    assert f.counters["fallback"] == 0


def test_finding7_the_feed_is_bounded_beyond_a_replay_and_an_overflow_drops_and_says_so(
        tmp_path: Path) -> None:
    """Mirrored datagrams charon has not read stop at max_bytes beyond the replay under way;
    past it the whole queue goes (charon must be replayed again), counted, and put says so."""
    async def main() -> None:
        f = CharonFeed(lambda raw: None, ("127.0.0.1", 4510), tmp_path / "none", max_bytes=1000)
        assert f.put([b"r" * 100] * 30, replay=True)  # a replay of 3000 bytes is let in
        assert f.put([b"m" * 100] * 10)  # and 1000 bytes of mirrored datagrams behind it
        assert f.queued == 40
        assert f.put([b"m" * 100]) is False  # before the fix: queued, without any bound
        assert f.queued == 0 and f.counters["overflows"] == 1
        assert f.counters["overflow_dropped"] == 41
        await asyncio.wait_for(f.drained(), 1)  # whoever waited on the replay is released
        assert f.put([b"m" * 100] * 10) and not f.put([b"m"])  # the ceiling is max_bytes again

    asyncio.run(main())


def test_finding7_a_feed_overflow_starts_a_full_replay_over() -> None:
    """The core takes a feed overflow as 'charon misses datagrams': UNSYNCED, then a replay."""
    from hasync.node import NodeCore, RaftView, Settings, StartReplay, SyncState
    from hasync.role import Role, RoleState
    core = NodeCore(Settings(), RoleState(role=Role.BACKUP))  # type: ignore[call-arg]
    up = RaftView("follower", "127.0.0.1:7001", commit_index=5, applied_index=5)
    assert any(isinstance(c, StartReplay) for c in core.tick(1.0, 0.0, up))
    core.on_feed_overflow(1.5)
    assert core.sync.state is SyncState.UNSYNCED and core.counters["feed_overflows"] == 1
    assert any(isinstance(c, StartReplay) for c in core.tick(2.0, 0.0, up))
