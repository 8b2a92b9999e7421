"""One ClusterJournal in its own process, driven over stdin, for tests that kill -9 nodes.

Usage: python tests/raftproc.py NAME PORT PEER_PORTS STATE_DIR [--legacy] [--record SHADOW]
       [--compact N]
--legacy: pysyncobj's own journal (no syncs), to show what the durable journal fixes.
--record: model a power loss (tests/powerloss.py) for STATE_DIR.
--compact N: snapshot and compact the journal past N entries (RaftTiming).

Commands (one per line on stdin) and what they print (one line, flushed):
- `marks`: claim the ESP sender, then journal SEQ marks 1, 2, 3... one at a time; prints
  `ACK <mark>` once each is committed and applied here.
- `stream <seed>`: submit HA batches (hastream tunnels) one at a time, forever; `ACKB <n>`.
- `stop`: stop `marks`/`stream`.
- `sync`: commit a barrier (retried until it succeeds), then `SYNCED`.
- `status`: `STATUS <json>`: role, term, commit/applied index, state digest, ESP mark.
Rules: test helper only; pysyncobj's log records go to STATE_DIR/../raft.log (WARNING and up).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEY = ("192.0.2.101", 0xC0FFEE01, 50)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Driver:
    """The commands, run against one ClusterJournal."""

    def __init__(self, j: Any) -> None:
        self.j = j
        self.go = threading.Event()
        self.n = 0
        self.epoch = 0

    def _wait(self, propose: Any) -> tuple[Any, Any]:
        done: list[tuple[Any, Any]] = []
        ev = threading.Event()
        propose(lambda r, e: (done.append((r, e)), ev.set()))
        ev.wait(10)
        return done[0] if done else (None, "timeout")

    def marks(self) -> None:
        from hasync.guard.entries import SeqEntry
        from hasync.guard.records import SeqRecord
        from hasync.syncobj_compat import FailReason, outcome
        while self.go.is_set() and not self.epoch:
            r, e = self._wait(self.j.claim)
            if outcome(e) is FailReason.SUCCESS and isinstance(r, int):
                self.epoch = r
            else:
                time.sleep(0.1)
        while self.go.is_set():
            mark = self.n + 1
            rec = SeqRecord(KEY, mark, 0, (1,), 50.0, self.j.node, 1.0, self.epoch)
            entry = SeqEntry(self.j.node, 1.0, (rec,), epoch=self.epoch)
            r, e = self._wait(lambda cb, entry=entry: self.j.submit_seq(entry, cb))
            if outcome(e) is FailReason.SUCCESS:
                self.n = mark
                _out(f"ACK {mark}")
            else:
                time.sleep(0.05)

    def stream(self, seed: int) -> None:
        from hasync.syncobj_compat import FailReason, outcome

        import hastream
        s = hastream.tunnels(400, seed=seed)
        i = 0
        while self.go.is_set() and i < len(s.datagrams):
            _, e = self._wait(lambda cb, i=i: self.j.submit(s.datagrams[i:i + 4], cb))
            if outcome(e) is FailReason.SUCCESS:
                i += 4
                _out(f"ACKB {i // 4}")
            else:
                time.sleep(0.05)

    def sync(self) -> None:
        from hasync.syncobj_compat import FailReason, outcome
        while outcome(self._wait(self.j.barrier)[1]) is not FailReason.SUCCESS:
            time.sleep(0.1)
        _out("SYNCED")

    def status(self) -> None:
        st = self.j.status()
        with self.j.lock:
            digest = self.j.state.digest()
            rec = self.j.seqs.records.get(KEY)
        st.update(digest=digest, mark=rec.mark if rec else 0)
        _out("STATUS " + json.dumps(st))

    def command(self, line: str) -> None:
        word, *args = line.split()
        if word in ("marks", "stream"):
            self.go.set()
            target = self.marks if word == "marks" else (lambda: self.stream(int(args[0])))
            threading.Thread(target=target, daemon=True).start()
        elif word == "stop":
            self.go.clear()
        elif word == "sync":
            threading.Thread(target=self.sync, daemon=True).start()
        elif word == "status":
            self.status()


def main(argv: list[str]) -> None:
    name, port, peers, state = argv[0], int(argv[1]), argv[2], Path(argv[3])
    logging.basicConfig(filename=str(state.parent / "raft.log"), level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    if "--record" in argv:
        from powerloss import Recorder
        Recorder(state, Path(argv[argv.index("--record") + 1])).install()
    from hasync.journal import durable
    from hasync.journal.seal import derive_keys
    from hasync.raft import ClusterJournal, RaftTiming
    if "--legacy" in argv:
        durable.install(False)
    others = [f"127.0.0.1:{p}" for p in peers.split(",") if p]
    compact = int(argv[argv.index("--compact") + 1]) if "--compact" in argv else 5000
    timing = RaftTiming(connection_timeout_s=1.5, compaction_min_entries=compact)
    j = ClusterJournal(name, f"127.0.0.1:{port}", others, state,
                       derive_keys(bytes(range(32)), "test"), timing=timing)
    d = Driver(j)
    _out("READY")
    for line in sys.stdin:
        if line.strip():
            d.command(line.strip())
    j.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
