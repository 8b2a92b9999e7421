"""The libreswan road warrior (issue 18, item 7): its ipsec.conf (checked by libreswan's own
parsers when the unpacked package is there), and the parsers of whack's output and pluto's log,
fed with text captured in the VM (`python -m hasync_lab.libreswan_check OUT --vm`,
tests/data/libreswan/)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hasync_lab import confgen, libreswan, libreswan_check
from hasync_lab import libreswan_text as text
from hasync_lab.prereq import LabError

DATA = Path(__file__).resolve().parent / "data" / "libreswan"
CONN = text.CONN


def read(name: str) -> str:
    return (DATA / name).read_text()


def status(step: str) -> text.Status:
    return text.status(read(f"{step}-showstates.txt"), read(f"{step}-trafficstatus.txt"), CONN)


def spec(**kw: object) -> text.ClientSpec:
    return text.ClientSpec("c4", "192.0.2.104", "192.0.2.1", "10.1.0.0/24", **kw)  # type: ignore[arg-type]


def installed() -> libreswan.Install | None:
    try:
        return libreswan.find_install()
    except LabError:
        return None


needs_libreswan = pytest.mark.skipif(installed() is None,
                                     reason="libreswan is not unpacked (make setup)")


# ---- configuration ----

def test_the_connection_asks_the_gateways_rw_conn_for_a_virtual_ip_with_its_timers() -> None:
    conf = text.ipsec_conf(spec(dpd_delay_s=4, retransmit_interval_ms=750,
                                retransmit_timeout_s=9), "/x/pluto.log", "/x/_updown.xfrm")
    lines = {ln.strip() for ln in conf.splitlines()}
    for want in ("ikev2=yes", "left=192.0.2.104", "leftid=@c4.clients.lab", "leftcert=c4",
                 "leftmodecfgclient=yes", "leftsubnet=0.0.0.0/0", "narrowing=yes",
                 "right=192.0.2.1", "rightid=@vpn.lab", "rightsubnet=10.1.0.0/24",
                 "mobike=no", "dpddelay=4", "dpdaction=restart", "retransmit-interval=750",
                 "retransmit-timeout=9", "leftupdown=/x/_updown.xfrm", "logfile=/x/pluto.log",
                 "ike=aes256-sha2_256-dh19", "esp=aes_gcm256-null;dh19"):
        assert want in lines, want


def test_the_lab_timers_become_the_same_first_wait_and_total_retransmission_time() -> None:
    lab = text.spec_for("c3", "10.0.3.2", "192.0.2.1", "10.1.0.0/24", confgen.LabTimers())
    # strongSwan: 1.0 + 1.4 + 1.96 + 2.744 s = 7.1 s; libreswan: 1 s doubling up to 8 s
    assert (lab.retransmit_interval_ms, lab.retransmit_timeout_s) == (1000, 8)
    assert (lab.dpd_delay_s, lab.dpd_action) == (10, "restart")
    inflight = text.spec_for("c1", "192.0.2.101", "192.0.2.1", "10.1.0.0/24",
                             confgen.LabTimers(**confgen.IN_FLIGHT_TIMERS), "chacha20")
    # strongSwan's defaults: 4 s x 1.8^n, 5 retransmissions, given up after 165 s
    assert (inflight.retransmit_interval_ms, inflight.retransmit_timeout_s) == (4000, 166)
    assert inflight.cipher == "chacha20"
    with pytest.raises(ValueError, match="dpd_action 'none'"):
        text.spec_for("c1", "a", "b", "c", confgen.LabTimers(dpd_action="none"))


def test_every_lab_esp_cipher_has_a_libreswan_proposal() -> None:
    assert set(text.ESP) == set(confgen.ESP_CIPHERS)


def test_make_setup_installs_the_libraries_the_module_names() -> None:
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    m = re.search(r"^LIBRESWAN_LIBS := ((?:.*\\\n)*.*)$", makefile, re.M)
    assert m, "LIBRESWAN_LIBS not in the Makefile"
    assert m.group(1).replace("\\\n", " ").split() == list(text.LIBRARY_PACKAGES)
    assert f"LIBRESWAN_ROOT := {libreswan.LIBRESWAN_ROOT}\n" in makefile


def test_an_unknown_cipher_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="aes256gcm"):
        spec(cipher="3des")


def test_a_missing_libreswan_names_make_setup_and_the_packages(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"make setup.*dpkg-deb -x.*libnss3-tools"):
        libreswan.find_install(str(tmp_path))


@needs_libreswan
def test_libreswans_own_parser_accepts_the_written_ipsec_conf(tmp_path: Path) -> None:
    inst = installed()
    assert inst is not None
    conf = tmp_path / "ipsec.conf"
    conf.write_text(text.ipsec_conf(spec(), str(tmp_path / "pluto.log"),
                                    inst.tool("_updown.xfrm")))
    res = subprocess.run([inst.tool("addconn"), "--config", str(conf), "--checkconfig"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # and a key it does not know is an error (the check can fail)
    conf.write_text(conf.read_text().replace("narrowing=yes", "narrowing=sometimes"))
    res = subprocess.run([inst.tool("addconn"), "--config", str(conf), "--checkconfig"],
                         capture_output=True, text=True, check=False)
    assert res.returncode != 0


@needs_libreswan
@pytest.mark.parametrize("cipher", sorted(text.ESP))
def test_libreswan_parses_each_proposal_as_the_gateways_offer_it(cipher: str) -> None:
    inst = installed()
    assert inst is not None
    for line in (f"ike={text.IKE}", f"esp={text.ESP[cipher]}"):
        res = subprocess.run([inst.tool("algparse"), "-v2", "-pfs", line], capture_output=True,
                             text=True, check=False)
        out = res.stdout + res.stderr
        assert res.returncode == 0 and "ERROR" not in out, out
        assert "DH19" in out, out  # ECP-256 as the gateways' proposals (PFS on rekeys)


# ---- whack output (captured in the VM) ----

def test_an_established_connection_shows_its_ike_sa_child_spis_and_virtual_ip() -> None:
    st = status("up")
    assert st.established
    assert st.ike_sas == ("#1",)
    # pluto logged {ESP/ESN=>0xcd74af87 <0x13339749}: outbound to the gateway, inbound to us
    assert st.esp_spis == (("13339749", "cd74af87"),)
    assert st.vip == "10.3.0.1"
    assert (st.in_bytes, st.out_bytes) == (0, 0)


def test_traffic_through_the_tunnel_shows_in_the_byte_counters() -> None:
    st = status("ping")
    assert (st.in_bytes, st.out_bytes) == (252, 252)  # three 84-byte pings each way


def test_a_child_rekey_is_a_new_spi_pair_on_the_same_ike_sa() -> None:
    before, after = status("up"), status("rekey-child")
    assert after.ike_sas == before.ike_sas
    # whack prints esp.6a235df: 8 digits, as vici and observe.IkeSa carry them
    assert after.esp_spis == (("06a235df", "c5cbb539"),)
    assert not set(after.esp_spis) & set(before.esp_spis)
    child = [s for s in after.states if not s.is_ike]
    assert [(s.serial, s.parent) for s in child] == [(3, 1)]


def test_an_ike_rekey_is_a_new_ike_sa_carrying_the_same_child() -> None:
    before, after = status("rekey-child"), status("rekey-ike")
    assert after.ike_sas == ("#4",) and before.ike_sas == ("#1",)
    assert after.esp_spis == before.esp_spis
    assert [(s.serial, s.parent) for s in after.states if not s.is_ike] == [(3, 4)]


def test_the_lab_reads_a_libreswan_client_as_an_ike_sa_whose_id_changes_with_a_rekey() -> None:
    up, rekeyed = (text.as_ike_sa(status(s)) for s in ("up", "rekey-ike"))
    assert (up.name, up.state, up.spi_i) == (CONN, "ESTABLISHED", "#1")
    assert up.child_spis == (("13339749", "cd74af87"),) and up.local_vips == ("10.3.0.1",)
    assert not up.encap and up.remote_host == "192.0.2.1"
    assert rekeyed.spis != up.spis
    assert text.as_ike_sa(text.Status()).state == ""


def test_a_child_sa_on_port_4500_is_udp_encapsulated() -> None:
    # the client behind a masquerading router (libreswan_check --nat): IKE floated to 4500
    nat = text.status(read("nat-up-showstates.txt"), "", CONN)
    assert nat.encap and nat.esp_spis == (("5701eb01", "c6d26314"),)
    assert not status("up").encap


def test_a_half_open_ike_sa_is_not_established() -> None:
    states = ('000 #1: "home"[1] 192.0.2.1:500 STATE_V2_PARENT_I1 (sent IKE_SA_INIT request); '
              'RETRANSMIT in 1s; idle;\n000 #1: pending CHILD SA for "home"[1] 192.0.2.1\n')
    st = text.status(states, "", CONN)
    assert [s.name for s in st.states] == ["STATE_V2_PARENT_I1"]
    assert not st.established and st.ike_sas == () and st.vip is None


def test_another_connections_states_are_not_counted() -> None:
    st = text.status(read("up-showstates.txt"), read("up-trafficstatus.txt"), "other")
    assert st.states == () and st.vip is None and not st.established


# ---- pluto's log ----

def test_the_log_counts_rekeys_and_answered_liveness_checks_without_a_new_ike_sa() -> None:
    ev = text.events(read("pluto-rekeys-and-liveness.log"))
    assert (ev.ike_sa_inits, ev.ike_rekeys, ev.child_rekeys) == (1, 1, 1)
    assert ev.liveness_sent >= 3 and ev.liveness_answered >= 3
    assert ev.retransmits == 0 and not ev.gave_up and not ev.dpd_failed



def test_a_silent_peer_is_given_up_after_retransmit_timeout_and_the_connection_restarted() -> None:
    ev = text.events(read("pluto-dpd-dead.log"))
    # retransmit-interval 1 s doubling (1, 2, 4 s) until retransmit-timeout 7 s
    assert ev.retransmits == 3 and ev.gave_up and ev.dpd_failed
    assert ev.action == "restarting" and ev.ike_sa_inits == 1  # dpdaction=restart
    assert ev.liveness_answered == 0


def test_a_check_in_the_vm_keeps_no_key_material() -> None:
    lines = ["\tproto esp spi 0xa73e05b8 reqid 16401 mode tunnel",
             "\taead rfc4106(gcm(aes)) 0xf5e8 128", "\tenc cbc(aes) 0x11", "\tauth-trunc x 0x1"]
    assert [ln for ln in lines if not libreswan_check.KEY_LINE.match(ln)] == lines[:1]
