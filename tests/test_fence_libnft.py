"""libnftables in-process (hasync/fence/libnft.py, D264): what happens when the library is
missing or a command outlives its timeout. The fence's own behaviour on the library is
tests/test_fence_nft.py, run on both backends."""

from __future__ import annotations

import asyncio
import time

import pytest

from hasync.fence import nft
from hasync.fence.libnft import LibNft
from hasync.fence.port import FenceError


def test_a_missing_library_names_the_package_and_the_fence_falls_back_to_nft(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(FenceError, match="libnftables1"):
        LibNft(library="libnftables-not-here.so.9")

    def missing(netns: str | None) -> LibNft:
        return LibNft(netns, library="libnftables-not-here.so.9")
    monkeypatch.setattr(nft, "LibNft", missing)
    f = nft.NftFence(library=True)
    assert f.lib is None and "libnftables1" in caplog.text


def test_a_command_past_its_timeout_is_a_fence_error_and_the_next_waits_behind_it() -> None:
    try:
        lib = LibNft()
    except FenceError:
        pytest.skip("libnftables is not installed")
    done: list[str] = []

    def slow(command: str, json_out: bool) -> str:
        time.sleep(0.3 if command == "slow" else 0.0)
        done.append(command)
        return ""
    lib._run = slow  # type: ignore[method-assign]
    f = nft.NftFence(library=False, timeout_s=0.05)
    f.lib = lib

    async def go() -> None:
        with pytest.raises(FenceError, match="timed out"):
            await f._run("grant", ["-f", "-"], "slow")
        f.timeout_s = 5.0
        await f._run("grant", ["-f", "-"], "next")
    asyncio.run(go())
    assert done == ["slow", "next"] and f.stats == {"grant": 1}
    lib.close()
