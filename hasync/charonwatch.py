"""Does the local charon hold what the journal holds? Restarts, loaded connections, and drift.

Rules (sans-IO: the daemon asks charon over vici and the kernel, and passes `now`):
- charon's incarnation is its vici socket (device, inode, change time: vicicheck.socket_id);
  charon binds it anew at every start (strongswan src/libcharon/plugins/vici/vici_socket.c).
  An incarnation that changes means charon restarted and holds nothing (vici `stats`'
  uptime.since cannot say: it is computed from two clocks and moves by a second between
  answers, which the lab showed). The node must replay the journal into it
  again (deploy/ sets `resync = no`, so charon never asks; ha_plugin.c). A charon that does not
  answer is *down*; the incarnation seen before it is kept, so a restart is noticed when it
  answers again with another `since`.
- A replay before the connections are loaded is destroyed by charon's ha plugin ("HA is missing
  nodes peer configuration", ha_dispatcher.c process_ike_update): charon is *ready* for a
  replay once every peer config the journal's IKE_SAs name is loaded (vici `list-conns`), and
  at once if the journal names none.
- Drift: on a node that mirrors, charon's IKE_SA count (vici `stats` ikesas.total) and the
  kernel's SPIs must match the journal's IKE_SAs and CHILD_SAs' inbound SPIs once the feed is
  idle. A difference that lasts DRIFT_S is a health problem (keepalived moves the VIPs away or
  keeps them off this node); a shorter one is an exchange in flight. The numbers are in the
  reason so the operator sees what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DRIFT_S = 10.0  # a difference lasting this long is not an exchange in flight


@dataclass(frozen=True)
class Holdings:
    """What charon and the kernel hold against what the journal holds (one comparison)."""

    charon_ikes: int  # vici stats ikesas.total
    journal_ikes: int
    journal_children: int
    children_missing: int  # journal inbound SPIs not in the kernel's last read

    @property
    def differs(self) -> bool:
        """Whether charon or the kernel lack (or exceed) what the journal holds."""
        return self.charon_ikes != self.journal_ikes or self.children_missing > 0

    def reason(self) -> str:
        """A health reason naming the numbers."""
        return (f"charon_drift: charon holds {self.charon_ikes} IKE_SAs of the journal's "
                f"{self.journal_ikes}; {self.children_missing} of its {self.journal_children} "
                f"CHILD_SAs are not in the kernel")


@dataclass
class CharonWatch:
    """charon's incarnation, readiness for a replay, and drift from the journal."""

    drift_s: float = DRIFT_S
    since: str | None = None  # the incarnation last seen answering (vicicheck.socket_id)
    up: bool = False  # the last `stats` was answered
    ready: bool = False  # the current incarnation has the journal's connections loaded
    restarts: int = 0
    missing_conns: tuple[str, ...] = ()
    drift_since: float | None = None  # the first settled check that found a difference
    differs_at: float | None = None  # the latest settled check that found one
    last: Holdings | None = None
    counters: dict[str, int] = field(default_factory=lambda: {
        "charon_restarts": 0, "charon_down_checks": 0, "charon_drift_checks": 0})

    def on_stats(self, since: str | None) -> str:
        """One `stats` answer (None: no answer): "restart" when charon restarted since the
        last answer, "first" for the first incarnation seen (the daemon replays into it if
        it already replayed into nothing), "" otherwise."""
        if since is None:
            self.up = False
            self.counters["charon_down_checks"] += 1
            return ""
        self.up = True
        if since == self.since:
            return ""
        first = self.since is None
        self.since, self.ready, self.drift_since, self.differs_at = since, False, None, None
        if first:
            return "first"
        self.restarts += 1
        self.counters["charon_restarts"] += 1
        return "restart"

    def on_conns(self, loaded: set[str], needed: set[str]) -> bool:
        """charon's loaded connections against the journal's; True when it becomes ready."""
        self.missing_conns = tuple(sorted(needed - loaded))
        if self.ready or self.missing_conns:
            return False
        self.ready = True
        return True

    def compare(self, held: Holdings | None, now: float) -> None:
        """One settled drift check; None when none applies (not mirroring, charon down)."""
        self.last = held
        if held is None or not held.differs:
            self.drift_since = self.differs_at = None
            return
        self.counters["charon_drift_checks"] += 1
        if self.drift_since is None:
            self.drift_since = now
        self.differs_at = now

    def problem(self, now: float) -> str | None:
        """Why charon is not fit to take over, or None."""
        if self.up and not self.ready:
            missing = ", ".join(self.missing_conns[:5]) or "checking"
            return f"charon_not_ready: its connections are not loaded ({missing})"
        if self.drift_since is not None and self.differs_at is not None and \
                self.differs_at - self.drift_since >= self.drift_s and self.last is not None:
            return self.last.reason()
        return None

    def status(self) -> dict[str, object]:
        """For `hasync status`."""
        last = self.last
        return {"since": self.since, "up": self.up, "ready": self.ready,
                "restarts": self.restarts, "missing_conns": list(self.missing_conns),
                "drift": None if last is None else {
                    "charon_ikes": last.charon_ikes, "journal_ikes": last.journal_ikes,
                    "journal_children": last.journal_children,
                    "children_missing": last.children_missing},
                **self.counters}
