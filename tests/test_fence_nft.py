"""NftFence on this host's kernel: raw ESP and ESP-in-UDP sent through a veth pair from a
namespace the fence guards; what the other namespace received is exactly what was permitted."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from fence_net import V4, V6, FenceNet, esp, natt, udp_payload

from hasync.fence.libnft import LibNft
from hasync.fence.nft import NftFence
from hasync.fence.port import FenceError, Permit

NFT = "/usr/sbin/nft"
DST, DST6 = V4[1], V6[1]
SA = (DST, 0x1000, 50)
SPI_NATT = 0x2000
SA_NATT = (DST, SPI_NATT, 50)


@pytest.fixture(scope="module")
def net() -> Iterator[FenceNet]:
    if os.geteuid() != 0 or not os.access(NFT, os.X_OK) or not shutil.which("ip"):
        pytest.skip("needs root, ip and /usr/sbin/nft")
    net = FenceNet().open()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(params=["process", "library"])
def fence(net: FenceNet, request: pytest.FixtureRequest) -> Iterator[NftFence]:
    """The fence on the nft command, and in-process on libnftables (D264): same results."""
    f = NftFence(NFT, netns=net.sender, library=request.param == "library")
    assert (f.lib is not None) == (request.param == "library")
    asyncio.run(f.setup())
    yield f
    f.close()


def esp_got(got: list[list[object]]) -> list[tuple[object, ...]]:
    return [tuple(g[1:]) for g in got if g[0] == "esp"]


def test_an_sa_passes_up_to_its_mark_and_the_rest_is_dropped_and_counted(
        net: FenceNet, fence: NftFence) -> None:
    asyncio.run(fence.grant([Permit(SA, 0, 3, False)]))
    got = net.exchange([esp(DST, 0x1000, s) for s in (1, 2, 3, 4, 9)] + [esp(DST, 0x7777, 1)])
    assert esp_got(got) == [(0x1000, 1), (0x1000, 2), (0x1000, 3)]
    counts = asyncio.run(fence.counts())
    assert counts.per_sa == {SA: 2}
    assert counts.unknown == 1


def test_a_higher_grant_lets_the_next_numbers_pass(net: FenceNet, fence: NftFence) -> None:
    asyncio.run(fence.grant([Permit(SA, 0, 3, False)]))
    assert esp_got(net.exchange([esp(DST, 0x1000, 4)])) == []
    asyncio.run(fence.grant([Permit(SA, 3, 10, False)]))
    got = net.exchange([esp(DST, 0x1000, s) for s in (3, 4, 10, 11)])
    assert esp_got(got) == [(0x1000, 4), (0x1000, 10)]
    assert asyncio.run(fence.counts()).per_sa == {SA: 3}


def test_a_prepared_permit_passes_nothing_until_a_grant_opens_the_gate(
        net: FenceNet, fence: NftFence) -> None:
    """D262, D265: a backup's standby permit is linked behind the shut gate; its grant only
    opens the gate."""
    asyncio.run(fence.prepare([Permit(SA, 0, 3, False)]))
    assert fence.book.linked == {SA}
    assert esp_got(net.exchange([esp(DST, 0x1000, 1)])) == []
    assert asyncio.run(fence.counts()).unknown == 1  # no permit: not even a counter of its own
    asyncio.run(fence.grant([Permit(SA, 0, 3, False)]))
    got = net.exchange([esp(DST, 0x1000, s) for s in (1, 4)])
    assert esp_got(got) == [(0x1000, 1)]
    assert asyncio.run(fence.counts()).per_sa == {SA: 1}


def test_the_opening_grant_leaves_nothing_else_in_force(net: FenceNet, fence: NftFence) -> None:
    """D265: links kept behind the shut gate, and links the book doubts, are gone once the next
    grant opens it: exactly that grant's permits pass."""
    other = (DST, 0x3000, 50)
    asyncio.run(fence.grant([Permit(SA, 0, 100, False), Permit(SA_NATT, 0, 100, False)]))
    asyncio.run(fence.revoke_all())
    asyncio.run(fence.prepare([Permit(other, 0, 100, False)]))
    fence.book.unsure([other], gate=True)  # a script about it failed: linked or not
    asyncio.run(fence.grant([Permit(SA_NATT, 0, 100, False)]))
    got = net.exchange([esp(DST, 0x1000, 5), esp(DST, 0x3000, 5), natt(DST, SPI_NATT, 5)])
    assert [g[0] for g in got] == ["udp"]
    assert fence.book.linked == {SA_NATT} and fence.book.doubt == set()
    asyncio.run(fence.grant([Permit(SA, 0, 100, False)]))  # the gate is open: added
    assert esp_got(net.exchange([esp(DST, 0x1000, 6)])) == [(0x1000, 6)]


def test_drops_after_a_grant_without_counters_are_unknown_until_counts_adds_them(
        net: FenceNet, fence: NftFence) -> None:
    """D266: a promotion's first grant leaves the counter elements out; `counts` adds them."""
    asyncio.run(fence.grant([Permit(SA, 0, 3, False)], counters=False))
    assert esp_got(net.exchange([esp(DST, 0x1000, s) for s in (1, 4)])) == [(0x1000, 1)]
    counts = asyncio.run(fence.counts())
    assert counts.per_sa == {SA: 0} and counts.unknown == 1
    net.exchange([esp(DST, 0x1000, 5)])
    assert asyncio.run(fence.counts()).per_sa == {SA: 1}


def test_revoke_all_drops_everything(net: FenceNet, fence: NftFence) -> None:
    asyncio.run(fence.grant([Permit(SA, 0, 100, False), Permit(SA_NATT, 0, 100, False)]))
    asyncio.run(fence.revoke_all())
    got = net.exchange([esp(DST, 0x1000, 5), natt(DST, SPI_NATT, 5)])
    assert got == []
    assert asyncio.run(fence.counts()).per_sa == {SA: 1, SA_NATT: 1}


def test_esp_in_udp_is_fenced_and_ike_and_keepalives_pass(net: FenceNet, fence: NftFence) -> None:
    asyncio.run(fence.grant([Permit(SA_NATT, 10, 20, False)]))
    ike = bytes(4) + b"IKE header and more"
    got = net.exchange([natt(DST, SPI_NATT, 11), natt(DST, SPI_NATT, 21),
                        natt(DST, 0x5555, 1), udp_payload(DST, ike),
                        udp_payload(DST, b"\xff")])
    assert got == [["udp", (bytes.fromhex("00002000") + (11).to_bytes(4, "big")
                            + bytes(16)).hex()],
                   ["udp", ike.hex()], ["udp", "ff"]]
    counts = asyncio.run(fence.counts())
    assert counts.per_sa == {SA_NATT: 1} and counts.unknown == 1


def test_an_esn_permit_across_the_low_32_wrap(net: FenceNet, fence: NftFence) -> None:
    top = 1 << 32
    asyncio.run(fence.grant([Permit(SA, top - 2, top + 1, True)]))
    got = net.exchange([esp(DST, 0x1000, s) for s in (top - 2, top - 1, 0, 1, 2)])
    assert esp_got(got) == [(0x1000, top - 1), (0x1000, 0), (0x1000, 1)]


def test_ipv6_is_fenced_too(net: FenceNet, fence: NftFence) -> None:
    sa6 = (DST6, 0x6000, 50)
    asyncio.run(fence.grant([Permit(sa6, 0, 2, False)]))
    got = net.exchange([esp(DST6, 0x6000, s) for s in (1, 2, 3)] + [esp(DST6, 0x6001, 1)])
    assert esp_got(got) == [(0x6000, 1), (0x6000, 2)]
    counts = asyncio.run(fence.counts())
    assert counts.per_sa == {sa6: 1} and counts.unknown == 1


def test_forget_drops_the_permit_and_the_counter(net: FenceNet, fence: NftFence) -> None:
    asyncio.run(fence.grant([Permit(SA, 0, 5, False)]))
    asyncio.run(fence.forget([SA]))
    assert esp_got(net.exchange([esp(DST, 0x1000, 1)])) == []
    counts = asyncio.run(fence.counts())
    assert counts.per_sa == {} and counts.unknown == 1


def test_setup_is_idempotent_and_starts_with_nothing_permitted(
        net: FenceNet, fence: NftFence) -> None:
    asyncio.run(fence.grant([Permit(SA, 0, 5, False)]))
    asyncio.run(fence.setup())
    assert esp_got(net.exchange([esp(DST, 0x1000, 1)])) == []


def test_a_failed_grant_keeps_the_old_permits_and_the_next_one_rewrites(
        net: FenceNet, fence: NftFence) -> None:
    asyncio.run(fence.grant([Permit(SA, 0, 5, False)]))
    fence.nft, lib = "/bin/false", fence.lib  # nft exits 1: nothing reaches the kernel
    if lib is not None:  # the library refuses a script the kernel never sees
        fence.lib = LibNft(net.sender, library=lib.library)
        with pytest.raises(FenceError, match="refused"):
            asyncio.run(fence.lib.run("add rule inet no_such_table c accept"))
        real = fence.lib.run
        fence.lib.run = lambda command, json_out=False: real(  # type: ignore[method-assign]
            "add rule inet no_such_table c accept")
    with pytest.raises(FenceError, match="exited 1" if lib is None else "refused"):
        asyncio.run(fence.grant([Permit(SA, 5, 9, False)]))
    assert fence.stats == {"grant": 1} and SA not in fence.book.installed
    assert esp_got(net.exchange([esp(DST, 0x1000, s) for s in (5, 6)])) == [(0x1000, 5)]
    if fence.lib is not None:
        fence.lib.close()
    fence.nft, fence.lib = NFT, lib
    asyncio.run(fence.grant([Permit(SA, 5, 9, False)]))
    assert esp_got(net.exchange([esp(DST, 0x1000, s) for s in (5, 6)])) == [(0x1000, 6)]


def test_a_grant_does_not_rely_on_the_book(net: FenceNet, fence: NftFence) -> None:
    """Chains and links are added before they are flushed: a wrong book cannot fail a grant."""
    asyncio.run(fence.grant([Permit(SA, 0, 5, False)]))
    fence.book.installed.clear()
    fence.book.linked.clear()
    asyncio.run(fence.grant([Permit(SA, 0, 5, False), Permit(SA_NATT, 0, 5, False)]))
    asyncio.run(fence.forget([SA_NATT]))
    asyncio.run(fence.forget([SA_NATT]))  # forgetting what is gone is no error either
    assert esp_got(net.exchange([esp(DST, 0x1000, s) for s in (5, 6)])) == [(0x1000, 5)]


def test_a_missing_nft_says_which_package_to_install() -> None:
    f = NftFence("/nonexistent/nft", netns="unused")
    with pytest.raises(FenceError, match="install the Debian package nftables"):
        asyncio.run(f.setup())
    assert f.stats == {"setup": 1} and "nftables" in f.last_error


def test_an_nft_that_hangs_is_killed_and_the_book_forgets_what_it_touched(
        tmp_path: Path) -> None:
    hang = tmp_path / "nft"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    f = NftFence(str(hang), timeout_s=0.2)
    f.book.installed[SA] = ((1, 5),)
    f.book.linked.add(SA)
    with pytest.raises(FenceError, match="timed out"):
        asyncio.run(f.grant([Permit(SA, 5, 9, False)]))
    assert f.stats == {"grant": 1}
    assert SA not in f.book.installed and SA not in f.book.linked and SA in f.book.doubt
    assert f.book.opened is None  # an opening grant: the gate is unknown now


def test_a_cancelled_prepare_kills_nft_and_the_book_forgets_what_it_touched(
        tmp_path: Path) -> None:
    """D263: a promotion preempts a backup's chore; what its script may have done is unsure."""
    hang = tmp_path / "nft"
    pidfile = tmp_path / "pid"
    hang.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    hang.chmod(0o755)
    f = NftFence(str(hang), timeout_s=30.0)
    f.book.installed[SA] = ((1, 5),)
    f.book.opened = False  # set up: the gate is shut, so a backup prepares

    async def go() -> None:
        task = asyncio.ensure_future(f.prepare([Permit(SA, 5, 9, False)]))
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(go())
    pid = int(pidfile.read_text())
    for _ in range(100):  # killed (a zombie until reaped, or gone)
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("nft still runs")
    assert SA not in f.book.installed


def test_nft_s_stderr_is_in_the_error(tmp_path: Path) -> None:
    bad = tmp_path / "nft"
    bad.write_text("#!/bin/sh\necho 'Error: Could not process rule' >&2\nexit 1\n")
    bad.chmod(0o755)
    f = NftFence(str(bad))
    with pytest.raises(FenceError, match="exited 1: Error: Could not process rule"):
        asyncio.run(f.revoke_all())
    with pytest.raises(FenceError):
        asyncio.run(f.counts())
    assert f.stats == {"revoke": 1, "counts": 1}



def test_an_nft_gone_when_its_timeout_fires_is_a_fence_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The process ended as its timeout fired, so kill() found none: the ProcessLookupError
    stopped the guard and the daemon (lab, 1000 tunnels under QEMU/TCG)."""
    class Gone:
        returncode = 0

        async def communicate(self, data: bytes | None) -> tuple[bytes, bytes]:
            await asyncio.Event().wait()  # never answers within the timeout
            return b"", b""

        def kill(self) -> None:
            raise ProcessLookupError

        async def wait(self) -> int:
            return 0

    async def spawn(*argv: str, **kw: object) -> Gone:
        return Gone()
    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    f = NftFence("nft", timeout_s=0.05)
    with pytest.raises(FenceError, match="timed out"):
        asyncio.run(f.revoke_all())
    assert f.stats == {"revoke": 1}


def test_unknown_counts_plain_and_udp_esp_of_sas_never_permitted(
        net: FenceNet, fence: NftFence) -> None:
    """D278: `unknown` is a counter set, one element per protocol; the counts add them."""
    net.exchange([esp(DST, 0x7777, 1), natt(DST, 0x7778, 1), natt(DST, 0x7778, 2)])
    assert asyncio.run(fence.counts()).unknown == 3
    asyncio.run(fence.grant([Permit(SA, 0, 3, False)]))  # the gate opens: the maps' drops
    net.exchange([esp(DST, 0x7777, 2), natt(DST, 0x7778, 3)])
    assert asyncio.run(fence.counts()).unknown == 5
