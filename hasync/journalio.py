"""The daemon's side of the cluster journal: opening it from the configuration, Raft's applied
batches as core events, and the quorum probe's loop (the witness runs it too).

Rules: Raft's thread only builds an event here (a function of `now`) and posts it; the core
runs on the loop. The quorum probe (quorum.py, pure) is driven from the loop; the answers come
back from Raft's thread through call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from .config import Config
from .effects import Event
from .ha import HaMessage, MessageType
from .journal.seal import Batch, derive_keys, load_cluster_key
from .midsync import key_of
from .node import NodeCore
from .quorum import QuorumProbe
from .raft import Applied, ClusterJournal, RaftTiming
from .syncobj_compat import FailReason, outcome

MID_TYPES = (MessageType.IKE_MID_RESPONDER, MessageType.CHILD_ADD)  # what midsync.py follows


def open_journal(cfg: Config, on_applied: Applied) -> ClusterJournal:
    """This node's ClusterJournal with the [cluster] timing and key."""
    c = cfg.cluster
    timing = RaftTiming(election_min_s=c.election_timeout_ms / 1000,
                        election_max_s=c.election_timeout_ms * 2.5 / 1000,
                        heartbeat_s=c.heartbeat_ms / 1000,
                        connection_timeout_s=c.connection_timeout_ms / 1000)
    return ClusterJournal(
        cfg.node.name, str(c.bind), [str(p) for p in c.peers], cfg.node.state_dir,
        derive_keys(load_cluster_key(c.key_file), c.name), on_applied, timing)


def applied_event(core: NodeCore, batch: Batch | None,
                  applied: list[tuple[bytes, HaMessage]], refeed: list[bytes],
                  number: int) -> Event:
    """Raft's thread: a batch applied (None: a snapshot's jump, all in `refeed`), as the
    core's event."""
    datagrams = [raw for raw, _ in applied] + refeed  # refeed: peers that moved (rehome.py)
    mids = [(key, raw if msg.type == MessageType.IKE_MID_RESPONDER else spi)
            for raw, msg in applied if msg.type in MID_TYPES
            and (key := key_of(msg.get("ike_id")))
            and isinstance(spi := msg.get("inbound_spi", 0), int)]
    ts = batch.ts if batch is not None else None  # the sender's clock (a catch-up replays
    # old entries with their times)
    return lambda now: core.on_applied(datagrams, mids, ts, number)


async def quorum_loop(journal: ClusterJournal | None, probe: QuorumProbe) -> None:
    """Commit a probe entry every `probe.interval_s`, one at a time (quorum.py)."""
    assert journal is not None
    loop = asyncio.get_running_loop()

    def answer(number: int, sent: float, result: Any, error: Any) -> None:
        ok = outcome(error) is FailReason.SUCCESS
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon has stopped
            loop.call_soon_threadsafe(probe.answered, number, ok, sent)
    while True:
        now = time.monotonic()
        if probe.due(now):
            number = probe.sent(now)
            journal.barrier(lambda result, error, n=number, t=now: answer(n, t, result, error))
        await asyncio.sleep(min(0.1, probe.interval_s / 4))
