"""The sequence guard: no new master ever reuses an outbound ESP (SPI, seq), and none accepts
again what the old master accepted (docs/takeover.md argues it).

Rules: `records` holds the shared record types; `rules`, `pacing`, `promotion` and `permits`
are pure (time is an argument); `entries` is the journal codec and its sender-only,
forward-only merge; `ports` the driver's journal port and counters; `kernel` is the only
module here that touches XFRM; `driver` (`Guard`) and the collaborators it owns (`reads` the
kernel side, `fencing` the send fence's, `marks` the sender's marks, `promoter` a promotion's
IO) are the only ones with asyncio, and `Guard` takes its kernel, send fence (hasync/fence),
journal and clocks from its caller.
"""

from hasync.guard.driver import Guard
from hasync.guard.entries import MAX_RECORDS, SeqEntry, SeqLog, pack_seq, unpack_seq
from hasync.guard.kernel import KERNEL_FAILURES, KernelPort, KernelSas
from hasync.guard.pacing import BACKUP_SEQ_TICK_S, REST_K, BackupPace, ReadCosts
from hasync.guard.permits import SenderTerm
from hasync.guard.ports import GuardStats, JournalPort, MarkFlight
from hasync.guard.promotion import (
    PROMOTION_READS,
    IllegalPhase,
    Phase,
    Promotion,
    PromotionReport,
)
from hasync.guard.records import U32_MAX, U64_MAX, KernelSa, SaKey, SeqRecord, Write, WriteResult
from hasync.guard.rules import Held, Reserve, SeqTracker, plan_writes, stretch, target_oseq

__all__ = [
    "BACKUP_SEQ_TICK_S",
    "KERNEL_FAILURES",
    "MAX_RECORDS",
    "PROMOTION_READS",
    "REST_K",
    "U32_MAX",
    "U64_MAX",
    "BackupPace",
    "Guard",
    "GuardStats",
    "Held",
    "IllegalPhase",
    "JournalPort",
    "KernelPort",
    "KernelSa",
    "KernelSas",
    "MarkFlight",
    "Phase",
    "Promotion",
    "PromotionReport",
    "ReadCosts",
    "Reserve",
    "SaKey",
    "SenderTerm",
    "SeqEntry",
    "SeqLog",
    "SeqRecord",
    "SeqTracker",
    "Write",
    "WriteResult",
    "pack_seq",
    "plan_writes",
    "stretch",
    "target_oseq",
    "unpack_seq",
]
