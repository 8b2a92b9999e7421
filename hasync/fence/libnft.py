"""libnftables in this process (ctypes): what the nft command does, without a process per
command (D264).

Rules: the library (`libnftables.so.1`, Debian package libnftables1, which nftables depends
on) is driven from one worker thread of its own, which opens the nft context (and its netlink
socket) and, given a named network namespace, first moves itself there (setns(2) is
per-thread): the daemon's event loop never blocks on netlink, and the context is never used
by two threads. A command either succeeds (its output, JSON when asked) or raises
`FenceError` with the library's error text; a command that outlives the caller's timeout
keeps running on the worker, and the next one waits behind it (one worker: commands stay in
order). The API is nftables' include/nftables/libnftables.h: nft_ctx_new(NFT_CTX_DEFAULT),
nft_ctx_buffer_output/error, nft_ctx_output_set_flags (NFT_CTX_OUTPUT_JSON = 1 << 4),
nft_run_cmd_from_buffer, nft_ctx_get_output_buffer/get_error_buffer.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .port import FenceError

LIBRARY = "libnftables.so.1"
INSTALL_HINT = "install the Debian package libnftables1 (nftables depends on it)"
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4
CLONE_NEWNET = 0x40000000  # linux/sched.h


def _bind(lib: Any) -> None:
    """Declare the C signatures used (ctypes would otherwise truncate pointers to int)."""
    p, c = ctypes.c_void_p, ctypes.c_char_p
    for name, res, args in (("nft_ctx_new", p, [ctypes.c_uint32]),
                            ("nft_ctx_free", None, [p]),
                            ("nft_ctx_buffer_output", ctypes.c_int, [p]),
                            ("nft_ctx_buffer_error", ctypes.c_int, [p]),
                            ("nft_ctx_get_output_buffer", c, [p]),
                            ("nft_ctx_get_error_buffer", c, [p]),
                            ("nft_ctx_output_set_flags", None, [p, ctypes.c_uint]),
                            ("nft_run_cmd_from_buffer", ctypes.c_int, [p, c])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args


class LibNft:
    """One libnftables context on a worker thread (in `netns` if given)."""

    def __init__(self, netns: str | None = None, library: str = LIBRARY) -> None:
        try:
            self._lib = ctypes.CDLL(library, use_errno=True)
            _bind(self._lib)
        except (OSError, AttributeError) as e:
            raise FenceError(f"{library} cannot be loaded ({INSTALL_HINT}): {e}") from e
        self.netns, self.library = netns, library
        self._ctx: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hasync-nft")
        self._closed = threading.Event()

    def _open(self) -> int:
        """On the worker: enter the namespace, then open the context (its netlink socket)."""
        if self._ctx is not None:
            return self._ctx
        if self.netns is not None:
            fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise FenceError(f"setns into {self.netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
        ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise FenceError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        self._ctx = ctx
        return ctx

    def _run(self, command: str, json_out: bool) -> str:
        """On the worker: one command (a whole script is one transaction, as `nft -f`)."""
        if self._closed.is_set():
            raise FenceError("the nft context is closed")
        ctx = self._open()
        self._lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON if json_out else 0)
        rc = self._lib.nft_run_cmd_from_buffer(ctx, command.encode())
        out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise FenceError(f"libnftables refused the command: {err.strip()}")
        return out

    async def run(self, command: str, json_out: bool = False) -> str:
        """Run `command` on the worker; its output (FenceError if refused)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, command, json_out)

    def close(self) -> None:
        """Free the context once the worker is idle; later commands fail."""
        self._closed.set()

        def free() -> None:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None
        self._pool.submit(free)
        self._pool.shutdown(wait=False)


__all__ = ["INSTALL_HINT", "LIBRARY", "LibNft"]
