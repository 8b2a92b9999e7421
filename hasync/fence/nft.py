"""The send fence driven through the nft command (`FencePort` on nftables).

Rules: every change is one `nft -f -` script, so the kernel applies it whole or not at all
(nftables transactions, torvalds/linux net/netfilter/nf_tables_api.c, nf_tables_commit /
nf_tables_abort); reads are `nft -j list`. The scripts and the parsing are in `rules.py`; this
module runs them one at a time (a lock), and updates its book of what is installed only after
nft succeeded. After a failed or timed-out change the book forgets what it said of the SAs the
change touched, so the next grant rewrites them. Every failure is a `FenceError` carrying
nft's stderr, counted in `stats` under the operation's name (`hasync status` shows it). With
`netns`, nft runs through `ip netns exec <netns>` (tests and the bench use that). With
`library`, the commands run in this process through libnftables (`libnft.py`, D264), the same
scripts and output, without a process each; a library that cannot be loaded is logged, and
the nft command is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable

from ..guard.records import SaKey
from . import rules
from .libnft import LibNft
from .port import FenceCounts, FenceError, Permit

log = logging.getLogger(__name__)

INSTALL_HINT = "install the Debian package nftables"


class NftFence:
    """`FencePort` on the nftables table `inet hasync_fence` (see rules.py for the rules)."""

    def __init__(self, nft: str = "/usr/sbin/nft", natt_port: int = rules.NATT_PORT,
                 timeout_s: float = 5.0, netns: str | None = None,
                 library: bool = False) -> None:
        self.nft = nft
        self.lib: LibNft | None = None  # libnftables in-process (D264), else a process each
        if library:
            try:
                self.lib = LibNft(netns)
            except FenceError as e:
                log.warning("the send fence runs %s per command instead: %s", nft, e)
        self.natt_port = natt_port
        self.timeout_s = timeout_s
        self.netns = netns
        self.book = rules.FenceBook(opened=None)  # the gate is unknown until `setup`
        self.stats: dict[str, int] = {}  # failures by operation, e.g. "grant": 2
        self.last_error = ""
        self._lock = asyncio.Lock()

    def _argv(self, *args: str) -> list[str]:
        """The command line for nft with `args`, inside `netns` if one is set."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, self.nft, *args]

    async def _run(self, op: str, args: list[str], stdin: str | None = None) -> str:
        """Run nft; its stdout, or a FenceError (counted under `op`) with its stderr."""
        try:
            return await self._exec(args, stdin)
        except FenceError as e:
            self.stats[op] = self.stats.get(op, 0) + 1
            self.last_error = f"{op}: {e}"
            raise

    async def _exec(self, args: list[str], stdin: str | None) -> str:
        """One nft command: in-process (`lib`) or one nft process, bounded by `timeout_s`."""
        if self.lib is not None:
            json_out = args[0] == "-j"
            command = stdin if args == ["-f", "-"] else " ".join(args[json_out:])
            try:
                return await asyncio.wait_for(self.lib.run(command or "", json_out),
                                              self.timeout_s)
            except TimeoutError as e:  # it runs on; the next command waits behind it
                raise FenceError(f"libnftables: {args[0]} timed out after {self.timeout_s} "
                                 "s") from e
        return await self._process(args, stdin)

    async def _process(self, args: list[str], stdin: str | None) -> str:
        """One nft process, bounded by `timeout_s`."""
        if os.sep in self.nft and not os.access(self.nft, os.X_OK):
            raise FenceError(f"{self.nft} is missing: {INSTALL_HINT}")
        argv = self._argv(*args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except FileNotFoundError as e:
            raise FenceError(f"{argv[0]} not found ({INSTALL_HINT}): {e}") from e
        except OSError as e:
            raise FenceError(f"cannot run {argv[0]}: {e}") from e
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), self.timeout_s)
        except TimeoutError as e:
            with contextlib.suppress(ProcessLookupError):  # it ended as the timeout fired
                proc.kill()
            await proc.wait()
            raise FenceError(f"{' '.join(argv)} timed out after {self.timeout_s} s") from e
        except asyncio.CancelledError:  # a promotion preempts a backup's chore (D263)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()  # reaped at once (SIGKILL), not left to the loop's end
            raise
        if proc.returncode != 0:
            raise FenceError(f"{' '.join(argv)} exited {proc.returncode}: "
                             f"{err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    async def _apply(self, op: str, plan: rules.Plan) -> None:
        """Run a plan's script; take its book on success, else forget what it touched."""
        if not plan.script:
            self.book = plan.book
            return
        try:
            await self._run(op, ["-f", "-"], plan.script)
        except BaseException:  # failed, timed out or cancelled: it may have landed
            self.book.unsure(plan.keys, plan.gate)
            raise
        self.book = plan.book

    async def setup(self) -> None:
        """Create the table afresh (rules, no permits, zeroed counters)."""
        async with self._lock:
            await self._apply("setup", rules.Plan(rules.setup_script(self.natt_port),
                                                  rules.FenceBook(), gate=True))

    async def grant(self, permits: Iterable[Permit], counters: bool = True) -> None:
        """Replace each SA's permit with the given one, in one transaction (the first after a
        revoke opens the gate: exactly these are in force); then, with `counters`, give every
        SA linked a drop counter of its own (without: at the next grant or `counts`, D266)."""
        async with self._lock:
            await self._apply("grant", rules.plan_grant(self.book, permits))
            if counters:
                await self._apply("count", rules.plan_count(self.book))

    async def prepare(self, permits: Iterable[Permit]) -> None:
        """Behind the shut gate, fill and link these permits (rules.plan_prepare)."""
        async with self._lock:
            await self._apply("prepare", rules.plan_prepare(self.book, permits))

    async def revoke_all(self) -> None:
        """Shut the gate: nothing is permitted (rules.plan_revoke)."""
        async with self._lock:
            await self._apply("revoke", rules.plan_revoke(self.book))

    async def forget(self, keys: Iterable[SaKey]) -> None:
        """Drop the SAs' permits and counters."""
        async with self._lock:
            await self._apply("forget", rules.plan_forget(self.book, keys))

    async def counts(self) -> FenceCounts:
        """The drop counters, per SA and `unknown` (first the counters a grant left out)."""
        async with self._lock:
            await self._apply("count", rules.plan_count(self.book))
        t = f"{rules.FAMILY} {rules.TABLE}"
        docs = [await self._run("counts", ["-j", "list", *f"set {t} {name}".split()])
                for name in ("sa4", "sa6", "unknown")]  # sets only: no full cache (D278)
        known = {(str(rules.ip_address(k[0])), k[1]): k for k in self.book.counted}
        try:
            return rules.counts_from_json(docs, known)
        except rules.FenceParseError as e:
            self.stats["counts"] = self.stats.get("counts", 0) + 1
            self.last_error = f"counts: {e}"
            raise FenceError(str(e)) from e

    def close(self) -> None:
        """Free the library's context if any (the kernel's table stays, fail-closed)."""
        if self.lib is not None:
            self.lib.close()
