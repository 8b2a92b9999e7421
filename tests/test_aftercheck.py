"""hasync_lab.aftercheck: judging rekeys and DPD from vici views and charon's file log.

The log lines are strongSwan 5.9.8's, in the lab's filelog layout (time_format %H:%M:%S); the
drivers run against a faked vici and swanctl (the real ones are exercised in the VM).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hasync_lab import aftercheck, cluster, observe, topology
from hasync_lab.aftercheck import DpdExchange
from hasync_lab.observe import IkeSa
from hasync_lab.prereq import LabError
from hasync_lab.procs import Lab

DPD_OK = """\
12:00:01 07[IKE] sending DPD request
12:00:01 07[ENC] generating INFORMATIONAL request 2 [ ]
12:00:01 07[NET] sending packet: from 192.0.2.101[500] to 192.0.2.1[500] (80 bytes)
12:00:01 12[NET] received packet: from 192.0.2.1[500] to 192.0.2.101[500] (80 bytes)
12:00:01 12[ENC] parsed INFORMATIONAL response 2 [ ]
"""

DPD_LOST = """\
12:00:01 07[IKE] <home|1> sending DPD request
12:00:01 07[ENC] <home|1> generating INFORMATIONAL request 5 [ ]
12:00:02 09[IKE] <home|1> retransmit 1 of request with message ID 5
12:00:03 11[IKE] <home|1> retransmit 2 of request with message ID 5
12:00:05 13[IKE] <home|1> retransmit 3 of request with message ID 5
12:00:08 14[IKE] <home|1> giving up after 3 retransmits
12:00:08 14[IKE] <home|1> restarting CHILD_SA net
"""


def sa(spi_i: str, state: str = "ESTABLISHED", children: tuple[tuple[str, str], ...] = (),
       name: str = "home") -> IkeSa:
    """An IkeSa as observe.parse_list_sas makes it."""
    return IkeSa(name, state, spi_i, "r" + spi_i, children, False, ())


def test_log_lines_cut_the_prefix_with_or_without_the_ike_name() -> None:
    assert aftercheck.log_lines(DPD_OK)[0] == "sending DPD request"
    assert aftercheck.log_lines(DPD_LOST)[1] == "generating INFORMATIONAL request 5 [ ]"
    assert aftercheck.log_lines("no prefix here\n\n12:00:01.250 01[DMN] x  \n") == ["x"]


def test_dpd_answered() -> None:
    assert aftercheck.dpd_exchanges(DPD_OK) == [DpdExchange(2, True, 0, False)]
    assert aftercheck.dpd_verdict(aftercheck.dpd_exchanges(DPD_OK)) == DpdExchange(2, True, 0,
                                                                                  False)


def test_dpd_given_up_after_retransmits() -> None:
    (ex,) = aftercheck.dpd_exchanges(DPD_LOST)
    assert ex == DpdExchange(5, False, 3, True)
    assert aftercheck.dpd_error([ex], ["a_b"], []) == "DPD given up after 3 retransmits"


def test_dpd_pending_and_unrelated_informational() -> None:
    text = ("12:00:00 05[ENC] generating INFORMATIONAL request 1 [ D ]\n"  # a delete
            "12:00:00 05[ENC] parsed INFORMATIONAL response 1 [ ]\n"
            "12:00:01 07[IKE] sending DPD request\n"
            "12:00:01 07[ENC] generating INFORMATIONAL request 2 [ ]\n"
            "12:00:01 08[ENC] parsed INFORMATIONAL response 7 [ ]\n")  # another message ID
    (ex,) = aftercheck.dpd_exchanges(text)
    assert ex == DpdExchange(2, False, 0, False)
    assert aftercheck.dpd_verdict([ex]) is None
    assert aftercheck.dpd_error([ex], ["a_b"], ["a_b"]) == "DPD sent, never answered"
    assert aftercheck.dpd_error([], ["a_b"], ["a_b"]) == "no DPD sent"
    # the request not logged yet: the DPD has no message ID
    assert aftercheck.dpd_exchanges("12:00:01 07[IKE] sending DPD request\n") == [
        DpdExchange(None, False, 0, False)]


def test_dpd_error_needs_the_same_ike_sa() -> None:
    ok = aftercheck.dpd_exchanges(DPD_OK)
    assert aftercheck.dpd_error(ok, ["a_b"], ["a_b"]) is None
    assert aftercheck.dpd_error(ok, ["a_b"], ["c_d"]) == "IKE_SA changed: ['a_b'] -> ['c_d']"
    assert aftercheck.dpd_error(ok, [], []) == "no ESTABLISHED IKE_SA home before the DPD"


def test_a_second_dpd_after_an_answered_one() -> None:
    exs = aftercheck.dpd_exchanges(DPD_OK + DPD_LOST)
    assert [(e.msgid, e.answered, e.gave_up) for e in exs] == [(2, True, False),
                                                               (5, False, True)]
    assert aftercheck.dpd_verdict(exs) == exs[0]


def test_views_of_the_sas() -> None:
    sas = [sa("a1", children=(("c1", "c2"),)), sa("b1", "REKEYED", (("c3", "c4"),)),
           sa("x", children=(("c9", "c9"),), name="other")]
    assert aftercheck.ike_spis(sas) == ("a1_ra1",)
    assert aftercheck.any_ike_spis(sas) == ("a1_ra1", "b1_rb1")
    assert aftercheck.child_pairs(sas) == (("c1", "c2"), ("c3", "c4"))


def test_replaced() -> None:
    assert aftercheck.replaced(["a"], ["b"], ["b"])
    assert not aftercheck.replaced(["a"], ["b"], ["a", "b"])  # the old one still there
    assert not aftercheck.replaced(["a"], ["a"], ["a"])
    assert not aftercheck.replaced(["a"], [], [])  # nothing new
    assert not aftercheck.replaced([], ["b"], ["b"])  # nothing to replace


def test_complete_text_drops_a_line_being_written() -> None:
    assert aftercheck.complete_text(b"a\nb\npart") == "a\nb\n"
    assert aftercheck.complete_text(b"part") == ""
    assert aftercheck.complete_text(b"\xff\n") == "\ufffd\n"


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """A Lab with a log directory, no namespaces."""
    (tmp_path / "log").mkdir()
    return Lab(topology.plan(2, 1, 0), tmp_path)


def test_log_offset_and_read_log(lab: Lab) -> None:
    assert aftercheck.log_offset(lab, "c1") == 0
    assert aftercheck.read_log(lab, "c1", 0) == ""
    path = aftercheck.charon_log(lab, "c1")
    path.write_text("12:00:00 01[DMN] old\n")
    off = aftercheck.log_offset(lab, "c1")
    with path.open("a") as f:
        f.write(DPD_OK + "12:00:02 01[DMN] half")
    assert aftercheck.read_log(lab, "c1", off) == DPD_OK


class FakeClient:
    """Stands in for a client's vici (list-sas answers in turn) and swanctl."""

    def __init__(self, views: list[list[IkeSa] | None], fail: bool = False) -> None:
        self.views, self.fail = views, fail
        self.calls: list[list[str]] = []

    def list_sas(self, _path: str) -> list[IkeSa]:
        """The next view (None: vici does not answer); the last one repeats."""
        view = self.views.pop(0) if len(self.views) > 1 else self.views[0]
        if view is None:
            raise TimeoutError("vici did not answer")
        return view

    def swanctl(self, _lab: Lab, _node: str, args: list[str], **_kw: object) -> str:
        """Record the call; fail like lab.run does."""
        self.calls.append(args)
        if self.fail:
            raise LabError("swanctl --rekey failed (1): no matching IKE_SA\nmore")
        return ""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    """Patch vici and swanctl with a FakeClient whose views the test sets."""
    client = FakeClient([[]])
    monkeypatch.setattr(observe, "list_sas", client.list_sas)
    monkeypatch.setattr(cluster, "swanctl", client.swanctl)
    monkeypatch.setattr(aftercheck, "POLL_S", 0.001)
    monkeypatch.setattr(aftercheck, "LIST_S", 0.5)
    return client


def test_ike_rekey_waits_for_the_old_sa_to_go(lab: Lab, fake: FakeClient) -> None:
    fake.views = [[sa("a")], [sa("a")], [sa("a", "REKEYED"), sa("b")], [sa("b")]]
    res = aftercheck.ike_rekey(lab, "c1", timeout=5)
    assert fake.calls == [["--rekey", "--ike", "home"]]
    assert (res["ok"], res["before"], res["after"], res["error"]) == (True, ["a_ra"],
                                                                      ["b_rb"], None)
    assert isinstance(res["ms"], float)


def test_child_rekey_and_timeout(lab: Lab, fake: FakeClient) -> None:
    fake.views = [[sa("a", children=(("1", "2"),))], [sa("a", children=(("3", "4"),))]]
    res = aftercheck.child_rekey(lab, "c1", timeout=5)
    assert fake.calls == [["--rekey", "--child", "net"]]
    assert (res["ok"], res["before"], res["after"]) == (True, [("1", "2")], [("3", "4")])
    fake.views = [[sa("a", children=(("3", "4"),))]]
    res = aftercheck.child_rekey(lab, "c1", timeout=0.05)
    assert (res["ok"], res["ms"], res["error"]) == (False, None, "not replaced within 0.05 s")


def test_rekey_failures_are_results(lab: Lab, fake: FakeClient) -> None:
    res = aftercheck.ike_rekey(lab, "c1")  # no IKE_SA at all
    assert (res["ok"], fake.calls) == (False, [])
    assert res["error"] == "no ESTABLISHED IKE_SA home on c1"
    fake.views, fake.fail = [[sa("a")]], True
    res = aftercheck.ike_rekey(lab, "c1")
    assert res["ok"] is False
    assert res["error"] == "swanctl --rekey failed (1): no matching IKE_SA"


def test_dpd_driver(lab: Lab, fake: FakeClient) -> None:
    path = aftercheck.charon_log(lab, "c1")
    path.write_text(DPD_LOST)  # before the offset: ignored
    fake.views = [[sa("a")]]
    off = aftercheck.log_offset(lab, "c1")
    with path.open("a") as f:
        f.write(DPD_OK)
    res = aftercheck.dpd(lab, "c1", 0.0, 1.0, offset=off)
    assert (res["ok"], res["msgid"], res["before"], res["after"]) == (True, 2, ["a_ra"],
                                                                      ["a_ra"])
    res = aftercheck.dpd(lab, "c1", 0.0, 0.05)  # offset now: nothing logged since
    assert (res["ok"], res["ms"], res["error"]) == (False, None, "no DPD sent within 0.05 s")
    with pytest.raises(ValueError, match="DPD delay"):
        aftercheck.dpd(lab, "c1", 10.0, 10.0)


def test_dpd_asks_a_busy_vici_again_for_the_ike_sa(lab: Lab, fake: FakeClient) -> None:
    path = aftercheck.charon_log(lab, "c1")
    off = aftercheck.log_offset(lab, "c1")
    path.write_text(DPD_OK)
    fake.views = [None, [sa("a", "CONNECTING")], [sa("a")]]  # mute, then not yet ESTABLISHED
    res = aftercheck.dpd(lab, "c1", 0.0, 1.0, offset=off)
    assert (res["ok"], res["before"], res["after"]) == (True, ["a_ra"], ["a_ra"])
    fake.views = [None]  # never answers: the check fails, saying why
    res = aftercheck.dpd(lab, "c1", 0.0, 1.0, offset=off)
    assert (res["ok"], res["error"]) == (False, "no ESTABLISHED IKE_SA home before the DPD")
