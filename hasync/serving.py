"""What the daemon answers: the control socket (`hasync status|health|sas`), the Prometheus
endpoint, both over one status.Answers, and the daemon's own health problems.

Rules: both servers run on the loop and are closed by the daemon's exit stack (`opened`) in
reverse order; their counters show in the status answer. The metrics endpoint is opened only
when [metrics] listen is set (its package is imported only then), and an address it cannot
listen on is an error naming the configuration key.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from .charonwatch import CharonWatch
from .config import Config
from .control import ControlServer
from .guard import Guard
from .node import NodeCore
from .quorum import QuorumProbe
from .status import Answers

log = logging.getLogger("hasync")


@dataclass
class Problems:
    """The daemon's own failed conditions for `hasync health`: quorum, then the guard's."""

    core: NodeCore
    quorum: QuorumProbe
    charon: CharonWatch
    guard: Guard | None

    def __call__(self, now: float) -> list[str]:
        """The reasons, in `hasync health`'s order."""
        reasons = [r for r in (self.quorum.reason(now), self.charon.problem(now)) if r]
        reasons.extend(self.core.problems())
        guard_health = getattr(self.guard, "health", None)
        if guard_health is not None:
            reasons.extend(guard_health(now))
        return reasons


async def open_control(cfg: Config, answers: Answers, opened: contextlib.AsyncExitStack) -> None:
    """The control socket, closed by `opened`."""
    control = ControlServer(cfg.node.control_socket, answers.handlers())
    await control.start()
    answers.control = lambda: control.counters
    opened.push_async_callback(control.close)


async def open_metrics(cfg: Config, answers: Answers, opened: contextlib.AsyncExitStack) -> None:
    """The Prometheus endpoint, if [metrics] listen is set (imported here: the package is
    needed only then)."""
    listen = cfg.metrics.listen
    if listen is None:
        return
    from .metrics import MetricsServer, registry_for
    limit = cfg.metrics.sas  # per-SA series: the first page of that many IKE_SAs
    server = MetricsServer(*listen.sockaddr, registry_for(
        lambda: answers.status({"digest": False}),
        (lambda: answers.sas({"limit": limit})) if limit else None))
    try:
        await server.start()
    except OSError as e:
        raise OSError(e.errno, f"{cfg.source}: metrics.listen: cannot listen on "
                      f"{listen}: {e.strerror}") from None
    answers.metrics = lambda: server.counters
    opened.push_async_callback(server.close)
    log.info("metrics: GET http://%s/metrics", listen)
