"""The Raft journal of hasync: sealing of entries and the pure model of committed state.

Rules: `seal` turns batches of raw ha datagrams into sealed entries and back (the only
module here that touches files, for the cluster key); `machine` is the pure apply machine
(opened entries in, changes out) holding `state`, which is pure and deterministic, fed
decoded messages in commit order; nothing secret is ever put into Raft in clear or shown in
a summary.
"""

from hasync.journal.seal import (
    MAX_DATAGRAM,
    MAX_ENTRY,
    MAX_ITEMS,
    Batch,
    EntryError,
    KeyFileError,
    KeyMaterialError,
    Keys,
    Sealer,
    SealError,
    derive_keys,
    generate_key_file,
    load_cluster_key,
    pack_batch,
    unpack_batch,
)
from hasync.journal.snapshot import StateError
from hasync.journal.state import JournalState
from hasync.journal.summary import ChildSummary, IkeSummary

__all__ = [
    "MAX_DATAGRAM",
    "MAX_ENTRY",
    "MAX_ITEMS",
    "Batch",
    "ChildSummary",
    "EntryError",
    "IkeSummary",
    "JournalState",
    "KeyFileError",
    "KeyMaterialError",
    "Keys",
    "SealError",
    "Sealer",
    "StateError",
    "derive_keys",
    "generate_key_file",
    "load_cluster_key",
    "pack_batch",
    "unpack_batch",
]
