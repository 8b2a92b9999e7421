"""The kept IKE_SAs of `JournalState`: its lineages by live IKE_SA, and who owns each IKE_SA.

Rules: pure (no IO, no clocks); internal to hasync.journal, owned by one `JournalState`.
`lineages` and `owner` are read by the state and its helpers but changed only through the
methods here, which keep them consistent: every IKE_SA of a lineage is in `owner`, mapped to
the lineage's live (last) IKE_SA, the key of that lineage in `lineages`. The remote-host cache
is emptied for every IKE_SA whose lineage changes. A kept lineage's CHILD_SAs change only
through `add_child` and `set_children`, so `children` (their number over every kept lineage)
is kept without a walk: `hasync status` and every scrape read it (D272).
"""

from __future__ import annotations

from hasync.ha import Host

from . import rehome
from .model import Key, _Child, _Ike, _Lineage
from .snapshot import StateError


class Lineages:
    """Lineages by live IKE_SA in creation order, with every kept IKE_SA's live IKE_SA."""

    def __init__(self) -> None:
        self.lineages: dict[Key, _Lineage] = {}  # by live IKE_SA, in creation order
        self.owner: dict[Key, Key] = {}  # every kept IKE_SA -> the live IKE_SA of its lineage
        self._hosts: dict[Key, Host | None] = {}  # remote_host() cache, by live IKE_SA
        self.children = 0  # CHILD_SAs of the lineages in `lineages`

    def find(self, key: Key, wildcard: bool) -> Key | None:
        """The kept IKE_SA a lookup finds (ike_sa_manager.c entry_match_by_id())."""
        if key in self.owner:
            return key
        if key[2] != 0 or not wildcard:
            return None
        matches = [k for k in self.owner if (k[0], k[1], k[3]) == (key[0], key[1], key[3])]
        return min(matches) if matches else None

    def lineage(self, key: Key) -> _Lineage | None:
        """The lineage of live IKE_SA `key`, if it is live."""
        return self.lineages.get(key) if self.owner.get(key) == key else None

    def adopt(self, key: Key, lineage: _Lineage) -> None:
        """Keep `lineage` under its live IKE_SA `key`, last in creation order."""
        self.lineages[key] = lineage
        self.children += len(lineage.children)
        for member in lineage.ikes:
            self.owner[member.key] = key
            self._hosts.pop(member.key, None)

    def take(self, key: Key) -> _Lineage:
        """Remove live IKE_SA `key`'s lineage from the order (its IKE_SAs stay owned)."""
        lineage = self.lineages.pop(key)
        self.children -= len(lineage.children)
        return lineage

    def drop(self, key: Key) -> None:
        """Forget live IKE_SA `key`'s lineage and every IKE_SA in it."""
        lineage = self.lineages.pop(key)
        self.children -= len(lineage.children)
        for member in lineage.ikes:
            del self.owner[member.key]
            self._hosts.pop(member.key, None)

    def add_child(self, lineage: _Lineage, child: _Child) -> None:
        """Add a CHILD_SA to kept `lineage`."""
        lineage.children.append(child)
        self.children += 1

    def set_children(self, lineage: _Lineage, children: list[_Child]) -> None:
        """Replace kept `lineage`'s CHILD_SAs."""
        self.children += len(children) - len(lineage.children)
        lineage.children = children

    def prune(self, lineage: _Lineage) -> bool:
        """Drop retired IKE_SAs older than the oldest one a live CHILD_SA was created under;
        True if any went."""
        origins = {child.origin for child in lineage.children}
        pruned = False
        while len(lineage.ikes) > 1 and lineage.ikes[0].key not in origins:
            del self.owner[lineage.ikes.pop(0).key]
            pruned = True
        return pruned

    def restore(self, ikes: list[_Ike], children: list[_Child]) -> None:
        """Add one restored lineage, checking it is consistent."""
        keys = [ike.key for ike in ikes]
        if not ikes or len(set(keys)) != len(keys) or any(k in self.owner for k in keys):
            raise StateError("snapshot lineage empty or with a repeated IKE_SA")
        if any(child.origin not in keys for child in children):
            raise StateError("snapshot CHILD_SA created under an IKE_SA not in its lineage")
        self.lineages[keys[-1]] = _Lineage(ikes, children)
        self.children += len(children)
        self.owner.update(dict.fromkeys(keys, keys[-1]))

    def forget_host(self, key: Key) -> None:
        """Empty the remote-host cache of IKE_SA `key` (its fields are about to change)."""
        self._hosts.pop(key, None)

    def remote_host(self, key: Key) -> Host | None:
        """Live IKE_SA `key`'s remote host as a passive charon holds it."""
        if key in self._hosts:
            return self._hosts[key]
        lineage = self.lineage(key)
        if lineage is None:
            return None
        host = self._hosts[key] = rehome.remote_host(lineage.ikes[-1])
        return host
