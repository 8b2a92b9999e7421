"""Peers that moved, as the master sees them, so that the journal follows them (rehome.py).

Rules: pure (no IO, no clocks: `now` is passed in). charon's ha plugin never syncs a peer's new
address (ha_ike.c syncs hosts only in ike_updown()), yet the master's charon moves the IKE_SA
and its CHILD_SAs' kernel SAs when the peer sends UPDATE_SA_ADDRESSES (MOBIKE, ike_mobike.c
process_i/r -> ike_sa.c update_hosts()) or, without MOBIKE, when a NAT'd peer's mapping
changes (ike_sa.c process_message()). So:
- a client's IKE request (ikesniff.py) from a host other than the journal's remote host of its
  IKE_SA makes a candidate, with that IKE_SA's outbound SPIs from the journal;
- the candidate is confirmed once the kernel holds one of those SPIs at the new address
  (charon moved it: a forged or refused request moves nothing), and then journaled as an
  IKE_UPDATE (rehome.py roam_update());
- a candidate not confirmed within PENDING_S is dropped and counted; an IKE_SA without CHILD_SAs
  cannot be confirmed this way and is counted (`roams:no_child_sa`), not followed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from .ha import Host
from .midsync import Key

PENDING_S = 10.0  # a move not seen in the kernel by then is not followed
IPPROTO_ESP, IPPROTO_AH = 50, 51
COUNTED = ("roams:seen", "roams:followed", "roams:unconfirmed", "roams:no_child_sa")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A request from a new host, waiting for the kernel to show the move."""

    host: Host
    spis: frozenset[int]
    since: float


@dataclass
class Roams:
    """The master's candidates for moved peers, by live IKE_SA."""

    counters: Counter[str] = field(default_factory=Counter)
    pending: dict[Key, Candidate] = field(default_factory=dict)
    followed: dict[Key, Host] = field(default_factory=dict)  # journaled, not yet committed

    def seen(self, key: Key, host: Host, journal_host: Host | None, spis: Iterable[int],
             now: float) -> None:
        """A request on IKE_SA `key` came from `host`; the journal has it at `journal_host`."""
        if journal_host is None or host == journal_host or self.followed.get(key) == host:
            self.pending.pop(key, None)
            if host == journal_host:
                self.followed.pop(key, None)
            return
        held = self.pending.get(key)
        if held is not None and held.host == host:
            return
        spis = frozenset(spis)
        if not spis:
            self.counters["roams:no_child_sa"] += 1
            return
        self.counters["roams:seen"] += 1
        self.pending[key] = Candidate(host, spis, now)

    def confirm(self, kernel: Container[tuple[str, int, int]],
                now: float) -> list[tuple[Key, Host]]:
        """Candidates whose SAs the kernel now holds at the new address; expired ones go."""
        out: list[tuple[Key, Host]] = []
        for key, cand in list(self.pending.items()):
            addr = str(cand.host.address)
            if any((addr, spi, proto) in kernel for spi in cand.spis
                   for proto in (IPPROTO_ESP, IPPROTO_AH)):
                out.append((key, cand.host))
                self.followed[key] = cand.host
                del self.pending[key]
                self.counters["roams:followed"] += 1
            elif now - cand.since > PENDING_S:
                del self.pending[key]
                self.counters["roams:unconfirmed"] += 1
        return out

    def clear(self) -> None:
        """Not master any more: nothing to follow."""
        self.pending.clear()
        self.followed.clear()
