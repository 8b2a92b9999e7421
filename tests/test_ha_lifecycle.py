"""Golden vectors of a tunnel's whole life from the real charon (tests/data/ha/
v3_lab_lifecycle.json, recorded with `hasync lab capture-ha`), checked against the codec, the
key material charon itself logged, and the journal state.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from hasync.ha import IkeSaId, MalformedMessage, MessageType, decode, encode
from hasync.journal.state import JournalState

DATA = json.loads((Path(__file__).parent / "data" / "ha" / "v3_lab_lifecycle.json").read_text())
VECTORS = [(name, bytes.fromhex(h)) for name, h in DATA["vectors"]]
KEYS: list[tuple[str, bytes]] = [(label, bytes.fromhex(h)) for label, h in DATA["logged_keys"]]


def _first(kind: str) -> bytes:
    return next(raw for name, raw in VECTORS if kind in name)


def _keys(label: str) -> list[bytes]:
    return [k for lab, k in KEYS if lab == label]


@pytest.mark.parametrize(("name", "raw"), VECTORS, ids=[n for n, _ in VECTORS])
def test_every_vector_round_trips_and_truncations_fail(name: str, raw: bytes) -> None:
    msg = decode(raw)
    assert encode(msg) == raw and msg.version == 3
    assert msg.type.name.lower() in name
    for cut in range(len(raw)):  # a prefix is either a shorter valid message or malformed
        with contextlib.suppress(MalformedMessage):
            assert encode(decode(raw[:cut])) == raw[:cut]


def test_lifecycle_has_every_message_the_issue_names() -> None:
    seen = {decode(raw).type for _, raw in VECTORS}
    for t in (MessageType.IKE_ADD, MessageType.IKE_UPDATE, MessageType.IKE_MID_RESPONDER,
              MessageType.CHILD_ADD, MessageType.CHILD_DELETE, MessageType.IKE_DELETE,
              MessageType.STATUS, MessageType.SEGMENT_TAKE, MessageType.SEGMENT_DROP):
        assert t in seen, t


def test_ike_add_carries_the_dh_secret_charon_logged() -> None:
    first = decode(_first("establish_ike_add"))
    assert first.get("secret") == _keys("shared Diffie Hellman secret")[0]


def test_ike_rekey_carries_the_old_sk_d_charon_logged() -> None:
    rekey = decode(_first("ike_rekey_ike_add"))
    old = decode(_first("establish_ike_add"))
    assert isinstance(rekey.get("ike_rekey_id"), IkeSaId)
    assert rekey.get("ike_rekey_id") == old.get("ike_id")
    assert rekey.get("old_skd") == _keys("Sk_d secret")[0]
    assert rekey.get("secret") == _keys("shared Diffie Hellman secret")[1]


def test_child_rekey_carries_its_pfs_secret_and_no_esp_key_ever_crosses() -> None:
    child_rekey = decode(_first("child_rekey_child_add"))
    assert child_rekey.get("secret") == _keys("DH secret")[0]
    esp_keys = _keys("encryption initiator key") + _keys("encryption responder key")
    ike_keys = [k for lab in ("Sk_ai secret", "Sk_ar secret", "Sk_ei secret", "Sk_er secret")
                for k in _keys(lab)]
    assert len(esp_keys) == 4 and ike_keys
    for _, raw in VECTORS:  # the passive node derives these itself (ha_child.c, ha_ike.c)
        for key in esp_keys + ike_keys:
            assert key not in raw


def _state_after(step: str) -> JournalState:
    st, steps = JournalState(), [n for n, _ in VECTORS]
    last = max(i for i, n in enumerate(steps) if n.startswith(step))
    for _, raw in VECTORS[:last + 1]:
        st.apply(raw, decode(raw), 1.0)
    return st


def _ike_and_children(st: JournalState) -> list[tuple[str, list[Any]]]:
    return [(s.initiator_spi, [c.inbound_spi for c in s.children]) for s in st.summaries(2.0)]


def test_journal_follows_the_tunnel_through_its_life() -> None:
    est = _ike_and_children(_state_after("establish"))
    assert len(est) == 1 and len(est[0][1]) == 1
    rekeyed = _ike_and_children(_state_after("child_rekey"))
    assert len(rekeyed[0][1]) == 2  # the old CHILD_SA lives until its CHILD_DELETE
    after_ike_rekey = _state_after("ike_rekey")
    (ike,) = _ike_and_children(after_ike_rekey)
    new_id = decode(_first("ike_rekey_ike_add")).get("ike_id")
    assert isinstance(new_id, IkeSaId) and int(ike[0], 16) == new_id.initiator_spi
    assert len(ike[1]) == 1  # the rekeyed CHILD_SA moved to the new IKE_SA
    assert all(raw in after_ike_rekey.replay_plan() for raw in (_first("child_rekey_child_add"),))
    assert _ike_and_children(_state_after("terminate")) == []
