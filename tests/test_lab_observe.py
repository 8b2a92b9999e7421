"""Parsers for what the lab reads off nodes: `ip -s xfrm state`, xfrm_stat, vici list-sas."""

from __future__ import annotations

from hasync_lab import observe

# The layout of iproute2 6.1's `ip -s xfrm state` (keys replaced).
XFRM = """src 192.0.2.1 dst 192.0.2.101
\tproto esp spi 0xc836dec0(3358973632) reqid 1(0x00000001) mode tunnel
\treplay-window 0 seq 0x00000000 flag af-unspec (0x00100000)
\taead rfc4106(gcm(aes)) 0x00 (288 bits) 128
\tencap type espinudp sport 4500 dport 4500 addr 0.0.0.0
\tanti-replay context: seq 0x0, oseq 0x14, bitmap 0x00000000
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\tlifetime current:
\t  1680(bytes), 20(packets)
\tstats:
\t  replay-window 2 replay 3 failed 1
src 192.0.2.101 dst 192.0.2.1
\tproto esp spi 0x00c1a2b3(12689075) reqid 1(0x00000001) mode tunnel
\treplay-window 0 seq 0x00000000 flag af-unspec esn (0x00100000)
\taead rfc4106(gcm(aes)) 0x00 (288 bits) 128
\tanti-replay esn context:
\t seq-hi 0x1, seq 0x10, oseq-hi 0x0, oseq 0x0
\t replay_window 128, bitmap-length 4
\t 00000000 00000000 00000000 0000ffff
\tstats:
\t  replay-window 0 replay 0 failed 0
"""


def test_parse_xfrm_states_plain_and_esn() -> None:
    a, b = observe.parse_xfrm_states(XFRM)
    assert (a.src, a.dst, a.spi, a.encap) == ("192.0.2.1", "192.0.2.101", 0xC836DEC0, True)
    assert (a.seq, a.oseq, a.replay, a.failed) == (0, 0x14, 5, 1)  # 2 behind + 3 replayed
    assert (b.spi, b.encap, b.seq, b.oseq) == (0x00C1A2B3, False, (1 << 32) | 0x10, 0)


def test_parse_xfrm_states_empty_and_garbage() -> None:
    assert observe.parse_xfrm_states("") == []
    assert observe.parse_xfrm_states("nonsense\nsrc x\n") == []


def test_parse_xfrm_stat() -> None:
    text = "XfrmInError             \t0\nXfrmInStateSeqError     \t20\nbad line here\n"
    assert observe.parse_xfrm_stat(text) == {"XfrmInError": 0, "XfrmInStateSeqError": 20}


def test_parse_list_sas_keeps_installed_children_only() -> None:
    # vici.Session decodes keys to str and leaves values as bytes
    entry = {"home": {
        "state": b"ESTABLISHED", "initiator-spi": b"ab925c1d2b0527f8",
        "responder-spi": b"78149feff565ae5d", "local-vips": [b"10.3.0.2"],
        "child-sas": {
            "net-1": {"state": b"INSTALLED", "spi-in": b"c836dec0",
                       "spi-out": b"c7c7a0da", "encap": b"yes"},
            "net-2": {"state": b"REKEYED", "spi-in": b"01", "spi-out": b"02"},
        }}}
    (sa,) = observe.parse_list_sas([entry])  # type: ignore[list-item]
    assert sa.spis == "ab925c1d2b0527f8_78149feff565ae5d"
    assert sa.child_spis == (("c836dec0", "c7c7a0da"),)
    assert sa.encap and sa.local_vips == ("10.3.0.2",) and sa.state == "ESTABLISHED"


def test_states_and_stat_come_from_one_command() -> None:
    class OneRun:
        def __init__(self) -> None:
            self.calls: list[tuple[list[str], float]] = []

        def run(self, node: str, argv: list[str], timeout: float = 60) -> str:
            self.calls.append((argv, timeout))
            return XFRM + "@@\nXfrmInError 0\nXfrmInStateSeqError 4\n"
    lab = OneRun()
    states, stat = observe.xfrm_states_and_stat(lab, "c1")  # type: ignore[arg-type]
    assert len(lab.calls) == 1 and lab.calls[0][0][0] == "sh"
    assert lab.calls[0][1] == observe.XFRM_DUMP_TIMEOUT_S  # 2000 SAs took over 60 s
    assert [s.spi for s in states] == [s.spi for s in observe.parse_xfrm_states(XFRM)]
    assert stat == {"XfrmInError": 0, "XfrmInStateSeqError": 4}


def test_prometheus_answers_reduce_to_changes_and_name_errors() -> None:
    from hasync_lab import monitor
    values = [[1.0, "0"], [2.0, "0"], [3.0, "1"], [4.0, "1"], [5.0, "1"]]
    assert monitor.changes(values) == [[1.0, 0.0], [3.0, 1.0], [5.0, 1.0]]
    assert monitor.changes(values[:3]) == [[1.0, 0.0], [3.0, 1.0]]
    answer = {"status": "success", "data": {"result": [
        {"metric": {"instance": "gw2", "__name__": "up"}, "values": values},
        {"metric": {"instance": "gw1", "alertname": "HasyncDown"}, "values": values[2:]}]}}
    assert monitor.series(answer) == {"gw2": monitor.changes(values),
                                      "gw1/HasyncDown": [[3.0, 1.0], [5.0, 1.0]]}
    assert monitor.series({"status": "error", "error": "bad query"}) == "bad query"
    text = monitor.config({"gw2": "10.1.0.12:9812", "gw1": "10.1.0.11:9812"})
    assert "  - job_name: hasync\n" in text and text.index("gw1") < text.index("gw2")
    assert f"rule_files:\n  - {monitor.RULES}\n" in text and monitor.RULES.exists()
