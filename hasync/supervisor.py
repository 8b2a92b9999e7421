"""The daemon's task supervision: one asyncio.TaskGroup, its stop, and the events run on the loop.

Rules: every background task runs in the one TaskGroup; a task or an event that fails stops the
daemon with its error (logged here, once), never a silent half-daemon. An event is a function
of `now` (effects.py's Event), run on the loop with the clock read here; its commands go to
`do`. Other threads (Raft's) reach the loop only through `threadsafe` (call_soon_threadsafe).
SIGTERM or SIGINT (`stop`) ends the TaskGroup without an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from .effects import Event
from .node import Command

log = logging.getLogger("hasync")


class Stopped(Exception):
    """SIGTERM or SIGINT: the TaskGroup ends without an error."""


class Supervisor:
    """The daemon's TaskGroup and stop: a task or event that fails stops the daemon."""

    def __init__(self, name: str, do: Callable[[list[Command]], None]) -> None:
        self.name, self._do = name, do  # `do` carries out an event's commands (Effects.do)
        self._tg: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._failure: Exception | None = None

    def attach(self) -> asyncio.AbstractEventLoop:
        """Bind to the running loop (before anything that posts events is opened)."""
        self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def attached(self) -> bool:
        """Whether the loop runs (before it, Raft's thread has nowhere to post)."""
        return self._loop is not None

    def stop(self) -> None:
        """SIGTERM or SIGINT: end the TaskGroup without an error."""
        self._stop.set()

    @contextlib.asynccontextmanager
    async def group(self) -> AsyncIterator[None]:
        """The TaskGroup: returns when stopped, raises an ExceptionGroup when a task failed."""
        try:
            async with asyncio.TaskGroup() as self._tg:
                yield
        except* Stopped:
            pass

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task in the daemon's TaskGroup: if it fails, the daemon stops."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("the daemon's TaskGroup is not running")
        return self._tg.create_task(self._logged(coro))

    async def _logged(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a task; log its failure once, with the traceback (a stop is not a failure)."""
        try:
            return await coro
        except Stopped:
            raise
        except Exception:
            log.exception("a task of hasync %s failed: the daemon stops", self.name)
            raise

    async def until_stopped(self) -> None:
        """The task that ends the TaskGroup: with the failed event's error, or Stopped."""
        await self._stop.wait()
        raise self._failure or Stopped()

    def event(self, event: Event) -> None:
        """Run one event on the loop with `now` read here; a failure stops the daemon."""
        try:
            self._do(event(time.monotonic()))
        except Exception as e:
            log.exception("an event failed: hasync %s stops", self.name)
            self._failure = self._failure or e
            self._stop.set()

    def threadsafe(self, event: Event) -> None:
        """Run an event from another thread (Raft's) on the loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon has stopped
            self._loop.call_soon_threadsafe(self.event, event)
