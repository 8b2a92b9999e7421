"""The decodes a master made of charon's datagrams as they came, kept for the apply of the
committed batch that carries the same bytes, so that node does not decode them twice (D272).

Rules: a datagram's journal decode is a pure function of its bytes (`decode_only(raw,
NEEDED, NAMED)`, journal/state.py), so the key is the bytes themselves: equal bytes, equal
decode, whatever path the batch took through Raft. Only decodes made with exactly NEEDED and
NAMED go in (the caller's rule: the endpoint decodes with them, daemon.py). Bounded at
`limit`, the oldest dropped first: a batch that never commits costs memory only until newer
ones push it out, and a datagram not found is decoded again, as on every other node. One
lock: the event loop puts, Raft's thread takes, a batch at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from hasync.ha import HaMessage

LIMIT = 8192  # datagrams: eight full batches of 256 in flight or pending, four times over


class DecodedCache:
    """Decoded datagrams by their bytes, at most `limit`, oldest dropped first."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._by_raw: OrderedDict[bytes, HaMessage] = OrderedDict()  # O(1) oldest (midsync.py)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_raw)

    def put(self, raw: bytes, msg: HaMessage) -> None:
        """Keep `msg`, the NEEDED decode of `raw`."""
        with self._lock:
            self._by_raw[raw] = msg
            if len(self._by_raw) > self.limit:
                self._by_raw.popitem(last=False)

    def take(self, raws: Sequence[bytes]) -> list[HaMessage | None]:
        """The kept decode of each of `raws` (None where there is none), each taken out."""
        with self._lock:
            pop = self._by_raw.pop
            return [pop(raw, None) for raw in raws]
