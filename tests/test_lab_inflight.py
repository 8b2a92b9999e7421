"""An IKE exchange in flight at the fault (issue 18, item 2): the lab's drop rules, the
client-log verdict, and the lab run (`hasync lab failover --inflight child-rekey`) in the VM:
the first client rekeys its CHILD_SA, the master processes the request but the response is
lost, the master is killed, and the client must keep its IKE_SA and complete the rekey with
the new master."""

from __future__ import annotations

from typing import Any

import pytest

from hasync_lab import cli, confgen, inflight

from labrun import LAB_EXTENDED, NEEDS_ROOT, lab_fixture

CLIENT_LOG = """\
10:00:01 05[IKE] <home|1> retransmit 1 of request with message ID 7
10:00:05 05[IKE] <home|1> retransmit 2 of request with message ID 7
10:00:09 07[IKE] <home|1> CHILD_SA net{4} established with SPIs c1f0a4b2_i ca5e2c10_o
"""


def test_the_rules_drop_ike_to_the_client_and_leave_esp_alone() -> None:
    text = inflight.rules("192.0.2.11")
    assert "ip daddr 192.0.2.11 udp sport 500 counter drop" in text
    assert "udp sport 4500 @th,64,32 0 counter drop" in text  # IKE's zero marker only
    assert "hook output" in text


def test_for_a_dpd_the_rules_also_drop_esp_to_the_client_without_counting_it() -> None:
    text = inflight.rules("2001:db8:2::101", esp=True)
    assert "ip6 daddr 2001:db8:2::101 meta l4proto esp drop" in text
    assert "udp sport 4500 @th,64,32 != 0 drop" in text  # ESP in UDP, not IKE's marker
    assert text.count("counter") == 2  # only the IKE responses are counted
    assert "esp" not in inflight.rules("192.0.2.11")


DPD_LOG = """\
10:00:11 05[IKE] <home|1> sending DPD request
10:00:11 05[ENC] <home|1> generating INFORMATIONAL request 9 [ ]
10:00:15 05[IKE] <home|1> retransmit 1 of request with message ID 9
10:00:22 07[ENC] <home|1> parsed INFORMATIONAL response 9 [ ]
"""


def test_a_dpd_in_flight_completes_when_its_response_is_parsed() -> None:
    assert inflight.verdict(DPD_LOG, "dpd") == {"retransmits": 1, "gave_up": False,
                                                 "completed": True}
    unanswered = DPD_LOG.rsplit("10:00:22", 1)[0]
    assert inflight.verdict(unanswered, "dpd")["completed"] is False


def test_dropped_packets_add_up_over_both_rules() -> None:
    listing = ("ip daddr 1.2.3.4 udp sport 500 counter packets 2 bytes 300 drop\n"
               "ip daddr 1.2.3.4 udp sport 4500 @th,64,32 0x0 counter packets 1 bytes 90 drop")
    assert inflight.dropped(listing) == 3 and inflight.dropped("") == 0


def test_the_verdict_reads_retransmits_and_completion() -> None:
    v = inflight.verdict(CLIENT_LOG, "child-rekey")
    assert v == {"retransmits": 2, "gave_up": False, "completed": True}
    given_up = "10:00:20 05[IKE] <home|1> giving up after 5 retransmits\n"
    assert inflight.verdict(given_up, "ike-rekey") == {"retransmits": 0, "gave_up": True,
                                                        "completed": False}


def test_inflight_runs_on_strongswans_default_retransmissions() -> None:
    spec = cli.spec_of(cli.parser().parse_args(["failover", "--inflight", "child-rekey"]))
    assert spec.inflight == "child-rekey"
    assert spec.timers.retransmit_tries == 5 and spec.timers.retransmit_timeout_s == 4.0
    assert confgen.IN_FLIGHT_TIMERS["retransmit_base"] == 1.8
    with pytest.raises(cli.LabError, match="--inflight"):
        cli.spec_of(cli.parser().parse_args(["failover", "--inflight", "child-rekey",
                                             "--baseline"]))


run = lab_fixture("inflight", ["failover", "--failovers", "1", "--inflight", "child-rekey"],
                  3600)


@pytest.mark.lab
@pytest.mark.lab_extended  # make test runs it inside the matrix (tests/test_lab_takeover.py)
@NEEDS_ROOT
def test_a_child_rekey_in_flight_at_the_fault_completes_on_the_new_master(
        run: dict[str, Any]) -> None:
    (fo,) = run["failovers"]
    flight = fo["inflight"]
    assert flight["responses_dropped"] >= 1, flight  # the master answered; the client never saw
    assert flight["completed"] and not flight["gave_up"], flight
    first = next(c for c in fo["clients"] if c["client"] == flight["client"])
    for c in fo["clients"]:
        assert c["reestablished"] is False and c["ike_sa_init"] == 0, c
        assert c["ike_spi_after"] == c["ike_spi_before"] and c["seq_reuse"] == 0, c
    assert first["resumed"], first
    counted = flight["mid_sync"]
    assert counted["mid_sync:rewound_at_promotion"] + counted["mid_sync:rewound"] >= 1, counted


def _in_flight(kind: str) -> Any:
    """A fixture: `hasync lab failover --failovers 1 --inflight KIND`, run once."""
    return lab_fixture(f"inflight-{kind}", ["failover", "--failovers", "1", "--inflight", kind],
                       3600)


def extended(test: Any) -> Any:
    """A lab test of `make test-lab-extended` (it needs root)."""
    for mark in reversed(LAB_EXTENDED):
        test = mark(test)
    return test


ike_rekey = _in_flight("ike-rekey")


@extended
def test_an_ike_rekey_in_flight_is_not_completed_but_the_tunnels_carry_on(
        ike_rekey: dict[str, Any]) -> None:
    """docs/operations.md: the passive charons destroyed the old IKE_SA when the rekeyed one
    was synced, so the client's retransmissions go unanswered (it re-authenticates after its
    retransmissions, past this window); every client's traffic resumes on the new master."""
    (fo,) = ike_rekey["failovers"]
    flight = fo["inflight"]
    assert flight["responses_dropped"] >= 1 and not flight["completed"], flight
    assert flight["retransmits"] >= 1, flight
    for c in fo["clients"]:
        assert c["resumed"] and c["seq_reuse"] == 0, c
        if c["client"] != flight["client"]:
            assert c["reestablished"] is False and c["ike_sa_init"] == 0, c


dpd = _in_flight("dpd")


@extended
def test_a_dpd_in_flight_at_the_fault_is_answered_by_the_new_master(
        dpd: dict[str, Any]) -> None:
    """The master answered the client's DPD, the answer was lost, the master died: the
    client's retransmission reaches the new master, whose hasync set the message ID back at
    the promotion (midsync.py); the DPD is answered and every client keeps its IKE_SA. The
    in-flight client's skip also holds the ESP the lab dropped to start its DPD, so only its
    direction is checked."""
    (fo,) = dpd["failovers"]
    flight = fo["inflight"]
    assert flight["responses_dropped"] >= 1, flight
    assert flight["completed"] and not flight["gave_up"] and flight["retransmits"] >= 1, flight
    counted = flight["mid_sync"]
    assert counted["mid_sync:rewound_at_promotion"] + counted["mid_sync:rewound"] >= 1, counted
    for c in fo["clients"]:
        assert c["reestablished"] is False and c["ike_sa_init"] == 0, c
        assert c["ike_spi_after"] == c["ike_spi_before"] and c["seq_reuse"] == 0, c
        assert c["resumed"] and all(j["seq_skipped"] >= 0 for j in c["seq_jumps"]), c
        assert c["client"] == flight["client"] or c["seq_skip_ok"], c
