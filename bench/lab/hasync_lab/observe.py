"""What the lab reads off a node: its IKE_SAs over vici and its kernel's XFRM counters.

Rules: parsers are pure (text in, frozen dataclasses out); the readers around them run one
command or one vici request each. The lab reads XFRM through `ip` here because it observes
the kernel as an engineer would; hasync's own XFRM access is its netlink module.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

import vici

from .procs import Lab

_SA_HEAD = re.compile(r"^src (\S+) dst (\S+)")
_SPI = re.compile(r"proto esp spi (0x[0-9a-f]+)")
# iproute2's print_replay/print_replay_esn (ip/ipxfrm.c)
_CTX = re.compile(r"anti-replay context: seq (0x[0-9a-f]+), oseq (0x[0-9a-f]+)")
_CTX_ESN = re.compile(r"anti-replay esn context:\s+seq-hi (0x[0-9a-f]+), seq (0x[0-9a-f]+), "
                      r"oseq-hi (0x[0-9a-f]+), oseq (0x[0-9a-f]+)")
# the stats line: packets dropped out of the window, as replays, failing integrity (xfrm_stats)
_STATS = re.compile(r"replay-window (\d+) replay (\d+) failed (\d+)")


@dataclass(frozen=True)
class XfrmSa:
    """One ESP SA as `ip -s xfrm state` shows it (keys are never kept)."""

    src: str
    dst: str
    spi: int
    encap: bool
    seq: int  # highest inbound sequence number accepted
    oseq: int  # last outbound sequence number sent
    replay: int  # packets dropped by the replay check: replayed or behind the window
    failed: int  # packets that failed integrity checks


@dataclass(frozen=True)
class IkeSa:
    """One IKE_SA as vici's list-sas shows it."""

    name: str
    state: str
    spi_i: str
    spi_r: str
    child_spis: tuple[tuple[str, str], ...]  # (spi-in, spi-out) of each INSTALLED CHILD_SA
    encap: bool  # any CHILD_SA UDP-encapsulated (NAT-T)
    local_vips: tuple[str, ...]
    remote_vips: tuple[str, ...] = ()  # the peer's virtual IPs (a gateway's leases)
    remote_host: str = ""  # the peer's outer address (it moves when a MOBIKE peer roams)

    @property
    def spis(self) -> str:
        """The IKE SPIs as 'initiator_responder' hex."""
        return f"{self.spi_i}_{self.spi_r}"


def parse_xfrm_states(text: str) -> list[XfrmSa]:
    """Parse `ip -s xfrm state` output."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if _SA_HEAD.match(line):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    out = []
    for b in blocks:
        body = "\n".join(b)
        head, spi = _SA_HEAD.match(b[0]), _SPI.search(body)
        if not head or not spi:
            continue
        seq, oseq = _counters(body)
        stats = _STATS.search(body)
        out.append(XfrmSa(head.group(1), head.group(2), int(spi.group(1), 16),
                          "encap type espinudp" in body, seq, oseq,
                          int(stats.group(1)) + int(stats.group(2)) if stats else 0,
                          int(stats.group(3)) if stats else 0))
    return out


def _counters(body: str) -> tuple[int, int]:
    """(seq, oseq) of one SA block; 64-bit for ESN SAs."""
    esn = _CTX_ESN.search(body)
    if esn:
        hi, lo, ohi, olo = (int(g, 16) for g in esn.groups())
        return hi << 32 | lo, ohi << 32 | olo
    ctx = _CTX.search(body)
    return (int(ctx.group(1), 16), int(ctx.group(2), 16)) if ctx else (0, 0)


def parse_xfrm_stat(text: str) -> dict[str, int]:
    """Parse /proc/net/xfrm_stat (`Name value` lines)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


XFRM_DUMP_TIMEOUT_S = 300  # `ip -s xfrm state` of 2000 SAs took over 60 s under TCG


def xfrm_states(lab: Lab, node: str) -> list[XfrmSa]:
    """The ESP SAs in `node`'s kernel."""
    return parse_xfrm_states(lab.run(node, ["ip", "-s", "xfrm", "state"],
                                     timeout=XFRM_DUMP_TIMEOUT_S))


def xfrm_stat(lab: Lab, node: str) -> dict[str, int]:
    """`node`'s XFRM MIB counters."""
    return parse_xfrm_stat(lab.run(node, ["cat", "/proc/net/xfrm_stat"]))


def xfrm_states_and_stat(lab: Lab, node: str) -> tuple[list[XfrmSa], dict[str, int]]:
    """Both of the above from one process (each costs a second to start under TCG)."""
    out = lab.run(node, ["sh", "-c", "ip -s xfrm state && echo @@ && cat /proc/net/xfrm_stat"],
                  timeout=XFRM_DUMP_TIMEOUT_S)
    states, _, stat = out.rpartition("@@\n")
    return parse_xfrm_states(states), parse_xfrm_stat(stat)


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_list_sas(entries: list[dict[str, object]]) -> list[IkeSa]:
    """Turn vici list-sas events ({name: {...}}) into IkeSa records."""
    out = []
    for entry in entries:
        for name, sa in entry.items():
            assert isinstance(sa, dict)
            children = sa.get("child-sas") or {}
            assert isinstance(children, dict)
            kids = [c for c in children.values() if _s(c.get("state", "")) == "INSTALLED"]
            out.append(IkeSa(
                _s(name), _s(sa.get("state", "")), _s(sa.get("initiator-spi", "")),
                _s(sa.get("responder-spi", "")),
                tuple((_s(c.get("spi-in", "")), _s(c.get("spi-out", ""))) for c in kids),
                any(_s(c.get("encap", "no")) == "yes" for c in kids),
                tuple(_s(v) for v in sa.get("local-vips", []) or []),
                tuple(_s(v) for v in sa.get("remote-vips", []) or []),
                _s(sa.get("remote-host", ""))))
    return out


LIST_TIMEOUT_S = 120.0  # a client charon of 333 IKE_SAs took over 30 s to end a list under TCG


def list_sas(vici_socket: str, ike: str | None = None) -> list[IkeSa]:
    """Ask a charon for its IKE_SAs (or those of connection `ike`) over vici, without waiting
    for busy ones (`noblock`: a blocking list-sas waits for every IKE_SA to be checked in,
    and a client restarting tunnels after DPD kept one checked out for minutes;
    vici_query.c list_sas)."""
    query = {"noblock": "yes", **({"ike": ike} if ike else {})}
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(LIST_TIMEOUT_S)
        s.connect(vici_socket)
        return parse_list_sas(list(vici.Session(s).list_sas(query)))
