"""Text views of `hasync status`: the takeover lines."""

from __future__ import annotations

from hasync.views import status_text

PROMOTION = {"claimed": True, "quorum": True, "epoch": 3, "claim_attempts": 2,
             "wait_ms": 101.0, "xfrm_ms": 80.5, "writes": 6, "sas": 6, "max_jump": 4195,
             "activate_ms": 40.0, "total_ms": 221.5,
             "errors": ["NEWAE replay on SA 192.0.2.101/0x1/50: ENOENT"]}


def test_status_shows_the_last_promotion_and_its_phases() -> None:
    text = status_text({"node": "gw2", "takeover": {
        "records": 6, "tracker": {"tracked": 6, "renewals": 40, "violations": 0,
                                  "max_overrun": 0}, "last_promotion": PROMOTION},
        "health": {"healthy": False, "reasons": ["charon does not answer over vici (x)"]}})
    assert "health: FAILING: charon does not answer over vici (x)" in text
    assert "sequence guard: 6 SA records, 6 SAs tracked, 40 marks journaled, 0 violations" in text
    assert "last promotion claimed epoch 3: claim 101.0 ms, XFRM 80.5 ms (6 of 6 SAs written" \
        in text
    assert "charon activated in 40.0 ms" in text and "promotion error: NEWAE" in text


def test_status_says_how_the_promotion_read_the_kernel_and_what_the_notices_lost() -> None:
    text = status_text({"node": "gw2", "takeover": {
        "records": 6, "tracker": {}, "notices": {"notices": 9, "unknown:overflow": 1},
        "last_promotion": {**PROMOTION, "read": "notices", "changed": 2}}})
    assert "XFRM 80.5 ms (planned from the last read and 2 SA notices; 6 of 6 SAs written" \
        in text
    assert "SA notices: {'notices': 9, 'unknown:overflow': 1}" in text


def test_status_shows_an_unclaimed_promotion_and_the_fence() -> None:
    text = status_text({"node": "gw2", "takeover": {
        "records": 1, "tracker": {}, "epoch": None,
        "fence": {"permits": 0, "fenced": {"c0ffee01@192.0.2.1": 40, "x@y": 2}, "unknown": 3,
                  "errors": 1},
        "last_promotion": {"claimed": False, "quorum": False, "claim_attempts": 9,
                           "wait_ms": 4000.0}}})
    assert "fence: 0 SAs permitted, 42 packets fenced (+3 of unknown SAs), sender epoch " \
        "None, 1 fence errors" in text
    assert "last promotion NOT CLAIMED after 9 attempts (4000.0 ms): charon not activated, " \
        "nothing sent" in text


def test_status_of_a_node_never_promoted() -> None:
    text = status_text({"node": "gw3", "takeover": {"records": 0, "tracker": {},
                                                    "last_promotion": None},
                        "health": {"healthy": True, "reasons": []}})
    assert "health: ok" in text and "last promotion" not in text


def test_status_tells_a_charon_slow_over_vici_that_the_verdict_let_pass() -> None:
    text = status_text({"node": "gw1", "health": {"healthy": True, "reasons": [],
                                                  "vici_busy": True, "vici_busy_checks": 7}})
    assert "health: ok (charon slow over vici in 7 checks; now slow)" in text
    text = status_text({"node": "gw1", "health": {"healthy": True, "reasons": [],
                                                  "vici_busy": False, "vici_busy_checks": 7}})
    assert "health: ok (charon slow over vici in 7 checks; now answering)" in text


def test_status_tells_verdicts_judged_late() -> None:
    text = status_text({"node": "gw1", "health": {"healthy": True, "reasons": [],
                                                  "late_verdicts": 2}})
    assert "health: ok (2 verdicts judged over 3 s late: a starved daemon)" in text
    assert "late" not in status_text({"node": "gw1", "health": {"healthy": True,
                                                                "reasons": []}})


def test_status_shows_caught_errors_by_counter_name() -> None:
    text = status_text({"node": "gw1", "ha": {"accepted": 3, "handler_error": 2},
                        "control": {"ok": 5, "internal": 1}, "counters": {"fifo_errors": 0}})
    assert "errors: ha.handler_error 2, control.internal 1" in text.splitlines()
    assert "errors:" not in status_text({"node": "gw1", "ha": {"handler_error": 0}})


def test_status_shows_every_nonzero_counter_by_name() -> None:
    text = status_text({"counters": {"fifo_errors": 0, "batches_dropped": 2, "report_errors": 1,
                                     "reports_failed:QUEUE_FULL": 3}})
    assert "counters: batches_dropped 2, report_errors 1, reports_failed:QUEUE_FULL 3" in text
    assert "fifo_errors" not in text
    assert "counters:" not in status_text({"counters": {"fifo_errors": 0}})


def test_finding8_sas_escapes_client_chosen_identities() -> None:
    """A client identity holding terminal escapes is shown escaped, never obeyed."""
    from hasync.views import sas_text
    evil = "CN=alice\x1b]0;owned\x07\x1b[2J\x9b31m\u202eexe.txt\r\nfake line"
    text = sas_text({"ike_sas": [{
        "config_name": "rw\x1b[5m", "initiator_spi": "0a", "responder_spi": "0b",
        "local_addr": "192.0.2.1", "remote_addr": "198.51.100.7", "remote_id": evil,
        "mid_initiator": 1, "mid_responder": 2, "age": 3.0,
        "children": [{"name": "net\x07", "inbound_spi": "c1", "outbound_spi": "c2",
                      "age": 1.0}]}]})
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 or c == "\u202e"
                   for c in text)
    assert text.count("\n") == 1  # the identity's CR LF did not start a line of its own
    assert "[CN=alice\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eexe.txt\\x0d\\x0afake line]" in text
    assert text.startswith("rw\\x1b[5m: 0a_i 0b_r 192.0.2.1 <-> 198.51.100.7 [")
    assert "  net\\x07: c1_i c2_o age 1 s" in text


def test_finding3_status_shows_charons_incarnation_readiness_and_drift() -> None:
    text = status_text({"node": "gw2", "ha": {"accepted": 5, "dropped:not_root": 3,
                                              "send_refused:not_root": 1, "kernel_drops": 7},
                        "takeover": {"charon": {
                            "up": True, "ready": False, "missing_conns": ["rw"], "restarts": 1,
                            "drift": {"charon_ikes": 0, "journal_ikes": 3,
                                      "journal_children": 3, "children_missing": 3}}}})
    assert "kernel drops 7" in text and "'dropped:not_root': 3" in text
    assert "'send_refused:not_root': 1" in text
    assert ("charon: up, connections missing ['rw'], 1 restarts seen; holds 0 of the journal's "
            "3 IKE_SAs, 3 CHILD_SAs missing in the kernel") in text


def test_status_shows_the_collectors_pauses() -> None:
    text = status_text({"gc": {"collections": [3, 1, 0], "pause_s": [0.01, 0.0, 0.0],
                               "max_pause_ms": [4.0, 1.0, 0.0], "threshold": [10000, 10, 10]}})
    assert "garbage collector: [3, 1, 0] collections" in text and "longest [4.0, 1.0, 0.0]" in text
    assert "garbage collector" not in status_text({})
