"""The libreswan 4.10 client's text: its ipsec.conf, and what whack and pluto's log say.

Rules: pure (text in, frozen dataclasses out; no IO). The formats parsed are libreswan 4.10's,
captured from real runs (tests/data/libreswan/). The connection asks the lab's gateways'
`rw` connection (confgen._gateway_conn: certificates from the lab CA, identity vpn.lab, a
virtual IP from the ha plugin's pool, the protected network as its traffic selector) for a
virtual IP with IKEv2 configuration payloads, and narrows its 0.0.0.0/0 to it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .confgen import LabTimers
from .observe import IkeSa
from .pki import GATEWAY_ID, client_id

CONN = "home"  # the client's connection, as the strongSwan clients' (confgen)
CA_NICKNAME = "hasync-lab-ca"  # the lab CA in the client's NSS database
SECRETS = "# keys are in the NSS database\n"  # pluto needs the file; nothing goes in it
# the libraries pluto links against, installed by apt beside the unpacked package
# (`apt-cache depends libreswan`, less those every Debian 12 has); the Makefile's LIBRESWAN_LIBS
LIBRARY_PACKAGES = ("libnss3-tools", "libnss3", "libnspr4", "libldns3", "libunbound8",
                    "libevent-core-2.1-7", "libevent-pthreads-2.1-7", "libcurl3-nss",
                    "libldap-2.5-0", "libcap-ng0")
IKE = "aes256-sha2_256-dh19"  # = confgen.IKE_PROPOSAL aes256-sha256-ecp256
# confgen.ESP_CIPHERS' names -> libreswan's; ";dh19": PFS on CHILD rekeys, as the gateways'
# proposals ask (a CHILD_SA made in IKE_AUTH carries no KE: libreswan drops it there)
ESP = {"aes256gcm": "aes_gcm256-null;dh19", "aes128gcm": "aes_gcm128-null;dh19",
       "aes256cbc": "aes256-sha2_256;dh19", "chacha20": "chacha20_poly1305-null;dh19"}


@dataclass(frozen=True)
class ClientSpec:
    """One libreswan road warrior: who it is, where it connects, and its timers."""

    name: str  # lab client name: identity <name>.clients.lab, its certificate's nickname
    local: str  # its own outer address (left=)
    gateway: str  # the gateways' VIP (right=)
    protected: str  # the network behind the gateways (rightsubnet=)
    cipher: str = "aes256gcm"  # an ESP key
    dpd_delay_s: int = 10  # a liveness check after this long without inbound traffic
    dpd_action: str = "restart"  # when the peer does not answer: re-initiate
    retransmit_interval_ms: int = 1000  # first retransmission; libreswan doubles it each time
    retransmit_timeout_s: int = 7  # an exchange (liveness checks too) is given up after this

    def __post_init__(self) -> None:
        if self.cipher not in ESP:
            raise ValueError(f"unknown ESP cipher {self.cipher!r}: one of {', '.join(ESP)}")


DPD_ACTIONS = {"restart": "restart", "clear": "clear", "trap": "hold"}  # strongSwan -> 4.10


def spec_for(name: str, local: str, gateway: str, protected: str, timers: LabTimers,
             cipher: str = "aes256gcm") -> ClientSpec:
    """A ClientSpec whose timers match the strongSwan clients' (confgen.LabTimers).

    strongSwan waits timeout x base^n before retransmission n+1 and gives up `tries`
    retransmissions later (charon.retransmit_* in strongswan.conf(5)); libreswan doubles its
    interval until retransmit-timeout has passed (its log: "will wait 1, 2, 4 seconds",
    "7 second timeout exceeded after 3 retransmits"): the same first wait and total.
    """
    if timers.dpd_action not in DPD_ACTIONS:
        raise ValueError(f"dpd_action {timers.dpd_action!r} has no libreswan equivalent: "
                         f"one of {', '.join(DPD_ACTIONS)}")
    total = sum(timers.retransmit_timeout_s * timers.retransmit_base ** n
                for n in range(timers.retransmit_tries + 1))
    return ClientSpec(name, local, gateway, protected, cipher, timers.dpd_delay_s,
                      DPD_ACTIONS[timers.dpd_action],
                      round(timers.retransmit_timeout_s * 1000), math.ceil(total))


def ipsec_conf(spec: ClientSpec, log_path: str, updown: str) -> str:
    """ipsec.conf of one client: `config setup` for pluto, and the connection CONN.

    dpdtimeout is not used by IKEv2 in 4.10: `whack --status` shows "liveness: active;
    dpdaction:restart; dpddelay:10s; retransmit-timeout:7s", and a liveness check is given up
    after retransmit-timeout like any exchange (tests/data/libreswan/pluto-dpd-dead.log); it
    is set to the same value for readers of the file.
    """
    return f"""config setup
    logfile={log_path}
    logappend=yes
    logtime=yes
    plutodebug=none
    uniqueids=yes

conn {CONN}
    ikev2=yes
    authby=ecdsa
    left={spec.local}
    leftid=@{client_id(spec.name)}
    leftcert={spec.name}
    leftsubnet=0.0.0.0/0
    leftmodecfgclient=yes
    leftupdown={updown}
    right={spec.gateway}
    rightid=@{GATEWAY_ID}
    rightca=%same
    rightsubnet={spec.protected}
    narrowing=yes
    ike={IKE}
    esp={ESP[spec.cipher]}
    pfs=yes
    mobike=no
    dpddelay={spec.dpd_delay_s}
    dpdtimeout={spec.retransmit_timeout_s}
    dpdaction={spec.dpd_action}
    retransmit-interval={spec.retransmit_interval_ms}
    retransmit-timeout={spec.retransmit_timeout_s}
    keyingtries=%forever
    rekey=yes
    auto=add
"""


# whack --showstates (4.10, as captured in tests/data/libreswan/): one line per state, then
# for a CHILD SA a second line with its SPIs (esp.<spi>@<dst>: the one to the gateway is ours
# outbound, the one to us inbound)
_STATE = re.compile(r'^\d+ #(\d+): "([^"]+)"(?:\[\d+\])? (\S+?)(?::(\d+))? (STATE_\w+) '
                    r'\((.*?)\);(.*)$')
_PARENT = re.compile(r"IKE SA #(\d+)")
_SPIS = re.compile(r'^\d+ #(\d+): "[^"]+"(?:\[\d+\])? \S+ esp\.([0-9a-f]+)@(\S+) '
                   r'esp\.([0-9a-f]+)@(\S+) ')
# whack --trafficstatus: one line per CHILD SA that carries traffic
_TRAFFIC = re.compile(r'^\d+ #(\d+): "([^"]+)"(?:\[\d+\])? .*?inBytes=(\d+), outBytes=(\d+)'
                      r'.*?(?:lease=([0-9a-f.:]+)/\d+)?$')


@dataclass(frozen=True)
class State:
    """One of pluto's states (an IKE SA or a CHILD SA) as `whack --showstates` lists it."""

    serial: int  # pluto's state number: #1, #2...; a rekey or re-initiation makes a new one
    conn: str
    peer: str  # the gateway's address
    port: int  # and its IKE port: 4500 once NAT-T floated (UDP-encapsulated ESP)
    name: str  # e.g. STATE_V2_ESTABLISHED_IKE_SA
    parent: int | None  # a CHILD SA's IKE SA serial
    spi_in: str = ""  # a CHILD SA's ESP SPIs (8 hex digits, as vici's), inbound and outbound
    spi_out: str = ""

    @property
    def is_ike(self) -> bool:
        """An IKE SA (else a CHILD SA)."""
        return self.name.endswith("_IKE_SA") or "PARENT" in self.name

    @property
    def established(self) -> bool:
        """Established (IKE SA or CHILD SA)."""
        return self.name.startswith("STATE_V2_ESTABLISHED")


@dataclass(frozen=True)
class Status:
    """A connection's states, its virtual IP and the bytes its CHILD SAs carried."""

    states: tuple[State, ...] = ()
    vip: str | None = None  # the lease the gateway gave (trafficstatus' lease=)
    in_bytes: int = 0
    out_bytes: int = 0

    @property
    def ike_sas(self) -> tuple[str, ...]:
        """The established IKE SAs, as '#serial' (whack shows no IKE SPIs)."""
        return tuple(f"#{s.serial}" for s in self.states if s.is_ike and s.established)

    @property
    def esp_spis(self) -> tuple[tuple[str, str], ...]:
        """(inbound, outbound) ESP SPIs of the established CHILD SAs."""
        return tuple((s.spi_in, s.spi_out) for s in self.states
                     if not s.is_ike and s.established and s.spi_in)

    @property
    def established(self) -> bool:
        """An established IKE SA carrying an established CHILD SA."""
        return bool(self.ike_sas and self.esp_spis)

    @property
    def encap(self) -> bool:
        """An established CHILD SA runs over port 4500 (NAT-T: ESP in UDP)."""
        return any(s.port == 4500 for s in self.states if not s.is_ike and s.established)


def as_ike_sa(st: Status, name: str = CONN) -> IkeSa:
    """The newest established IKE SA as the lab's observe.IkeSa, so code written for the
    strongSwan clients' vici listings can read a libreswan client: whack shows no IKE SPIs,
    so spi_i is pluto's state number ('#4') and spi_r is empty; like SPIs, it changes when
    the IKE SA is rekeyed or re-established. None-like (state '') when nothing is up."""
    ike = [s for s in st.states if s.is_ike and s.established]
    if not ike:
        return IkeSa(name=name, state="", spi_i="", spi_r="", child_spis=(), encap=False,
                     local_vips=())
    return IkeSa(name=name, state="ESTABLISHED", spi_i=f"#{ike[-1].serial}", spi_r="",
                 child_spis=st.esp_spis, encap=st.encap,
                 local_vips=(st.vip,) if st.vip else (), remote_host=ike[-1].peer)


def parse_states(text: str, conn: str) -> tuple[State, ...]:
    """Parse `whack --showstates` output, keeping connection `conn`'s states."""
    spis: dict[int, tuple[str, str]] = {}
    rows = []
    for line in text.splitlines():
        if m := _SPIS.match(line):
            serial, a, a_dst, b, _ = m.groups()
            a, b = f"{int(a, 16):08x}", f"{int(b, 16):08x}"  # as vici's spi-in/spi-out
            # the SPI whose destination is the gateway is ours outbound
            spis[int(serial)] = (b, a) if a_dst == _peer_of(text, int(serial)) else (a, b)
        elif (m := _STATE.match(line)) and m.group(2) == conn:
            parent = _PARENT.search(m.group(7))
            rows.append((int(m.group(1)), m.group(2), m.group(3), int(m.group(4) or 500),
                         m.group(5), int(parent.group(1)) if parent else None))
    return tuple(State(n, c, peer, port, name, parent, *spis.get(n, ("", "")))
                 for n, c, peer, port, name, parent in rows)


def _peer_of(text: str, serial: int) -> str:
    """The peer address of state `serial` in a --showstates text."""
    for line in text.splitlines():
        m = _STATE.match(line)
        if m and int(m.group(1)) == serial:
            return m.group(3)
    return ""


def parse_traffic(text: str, conn: str) -> tuple[str | None, int, int]:
    """(virtual IP, inBytes, outBytes) of `conn`'s CHILD SAs from `whack --trafficstatus`."""
    vip, rx, tx = None, 0, 0
    for line in text.splitlines():
        m = _TRAFFIC.match(line)
        if m and m.group(2) == conn:
            rx, tx = rx + int(m.group(3)), tx + int(m.group(4))
            vip = m.group(5) or vip
    return vip, rx, tx


def status(states: str, traffic: str, conn: str) -> Status:
    """A connection's Status from `whack --showstates` and `whack --trafficstatus`."""
    vip, rx, tx = parse_traffic(traffic, conn)
    return Status(parse_states(states, conn), vip, rx, tx)


# pluto's log (4.10, as captured; liveness: programs/pluto/ikev2_liveness.c): new
# IKE SAs, rekeys, liveness checks queued and answered (these two with `whack --debug base`
# only), retransmissions on the established IKE SA, the exchange given up, the dpdaction taken
_INIT = re.compile(r"#\d+: initiating IKEv2 connection")
_IKE_REKEYED = re.compile(r"#\d+: initiator rekeyed IKE SA #\d+")
_CHILD_REKEYED = re.compile(r"#\d+: initiator rekeyed Child SA #\d+")
_LIVE_SENT = re.compile(r"liveness: #\d+ queueing liveness probe")
_LIVE_ANSWER = re.compile(r"received an INFORMATIONAL liveness check response")
_RETRANSMIT = re.compile(r"STATE_V2_ESTABLISHED_IKE_SA: retransmission; will wait")
_GIVE_UP = re.compile(r"STATE_V2_ESTABLISHED_IKE_SA: \d+ second timeout exceeded")
_ACTION = re.compile(r"liveness action - (\w+)")


@dataclass(frozen=True)
class Events:
    """What pluto's log says happened over a stretch of time."""

    ike_sa_inits: int  # IKE SAs initiated from scratch (IKE_SA_INIT): re-establishments
    ike_rekeys: int  # IKE SAs rekeyed (CREATE_CHILD_SA), as the initiator
    child_rekeys: int  # CHILD SAs rekeyed, as the initiator
    liveness_sent: int  # liveness probes (DPD) queued; logged with `whack --debug base`
    liveness_answered: int  # their responses received; likewise
    retransmits: int  # retransmissions of a request on an established IKE SA
    gave_up: bool  # an exchange on an established IKE SA timed out (retransmit-timeout)
    action: str | None  # the dpdaction taken: "restarting", "clearing" or "putting"

    @property
    def dpd_failed(self) -> bool:
        """The peer was declared dead and the dpdaction ran."""
        return self.action is not None


def events(log: str) -> Events:
    """Read pluto's log text."""
    action = None
    for m in _ACTION.finditer(log):
        action = m.group(1)
    return Events(len(_INIT.findall(log)), len(_IKE_REKEYED.findall(log)),
                  len(_CHILD_REKEYED.findall(log)), len(_LIVE_SENT.findall(log)),
                  len(_LIVE_ANSWER.findall(log)), len(_RETRANSMIT.findall(log)),
                  bool(_GIVE_UP.search(log)), action)
