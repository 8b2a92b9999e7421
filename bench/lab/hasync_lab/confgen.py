"""Configuration text for the lab's daemons: strongswan.conf, swanctl.conf and keepalived.conf.

Rules: pure functions from settings to text (no IO); every timer the lab's results depend on
is a field of `LabTimers` and is reported with the results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .pki import GATEWAY_ID, client_id
from .routebased import child_options
from .topology import POOL, POOL6, PROTECTED6

# openssl gives AES, SHA-2, HMAC, GCM, ECDSA and the ECP groups; kdf is needed for IKEv2's
# PRF+ in 5.9.8; pkcs8 reads the lab's keys.
PLUGINS = ("random nonce openssl pem pkcs1 pkcs8 x509 constraints pubkey kdf "
           "kernel-netlink socket-default vici")
IKE_PROPOSAL = "aes256-sha256-ecp256"
ESP_PROPOSAL = "aes256gcm16-ecp256"
ESN_CLIENTS = ("c2",)  # these clients ask for 64-bit extended sequence numbers (RFC 4303 2.2.1)
# ESP ciphers a lab client can ask for (`hasync lab failover --proposals`): name -> strongSwan's
# proposal keywords. cbc is AES-256-CBC with HMAC-SHA2-256-128 (RFC 4868); chacha20 is
# ChaCha20-Poly1305 (RFC 7634, the kernel's rfc7539esp).
ESP_CIPHERS = {"aes256gcm": "aes256gcm16", "aes128gcm": "aes128gcm16",
               "aes256cbc": "aes256-sha256", "chacha20": "chacha20poly1305"}
# a gateway accepts each of them, with or without ESN (AEAD and integrity algorithms cannot
# share one proposal)
GATEWAY_ESP = ("aes256gcm16-aes128gcm16-chacha20poly1305-ecp256-esn-noesn, "
               "aes256-sha256-ecp256-esn-noesn")
POOL_NAME = "rw_pool"  # the gateways' pool of virtual IPs: charon's ha plugin holds it
POOL6_NAME = "rw_pool6"  # its IPv6 twin (`six`: the lab's --ipv6, inner6.py)


@dataclass(frozen=True)
class LabTimers:
    """Timers that decide how a client notices a dead gateway (reported with every result)."""

    dpd_delay_s: int = 10  # client DPD: a check after this long without inbound traffic
    dpd_action: str = "restart"  # client re-initiates when DPD fails
    retransmit_tries: int = 3  # then the exchange (DPD included) is given up
    retransmit_timeout_s: float = 1.0
    retransmit_base: float = 1.4  # timeouts 1.0, 1.4, 1.96, 2.74 s: about 7 s in all
    advert_int_s: float = 0.5  # VRRP advertisement interval

    def as_dict(self) -> dict[str, object]:
        """Return the timers as a JSON-ready dict."""
        return asdict(self)


# strongSwan's own retransmission schedule (charon.retransmit_*: 4 s x 1.8^n, 5 tries, given up
# after 165 s), for runs with an exchange in flight at the fault (inflight.py): the lab's
# 7-second schedule would end the exchange before any new master could answer it
IN_FLIGHT_TIMERS = {"retransmit_tries": 5, "retransmit_timeout_s": 4.0, "retransmit_base": 1.8}


def strongswan_conf(log_path: str, vici_socket: str, timers: LabTimers, ha: bool,
                    keys_in_log: bool = False, many_peers: bool = False,
                    hasync_peer: bool = False, install_routes: bool = True,
                    six: bool = False) -> str:
    """strongswan.conf for one charon; with `ha`, the ha plugin talks to 127.0.0.2:4510.

    With `hasync_peer` (hasync is that peer), charon waits HA_HEARTBEAT_TIMEOUT_MS, as
    deploy/strongswan-ha.conf does, before a missing heartbeat makes it take every segment.

    With `keys_in_log`, charon logs IKE and CHILD key material (level 4): for golden vectors.
    With `many_peers` (the benchmark's tunnels: hundreds of IKE_SAs from one client address),
    charon's DoS protection is relaxed: its defaults drop IKE_SA_INITs beyond 5 half-open
    IKE_SAs per peer address (libcharon/network/receiver.c, block_threshold).
    With `six`, the ha plugin also holds the IPv6 pool (POOL6_NAME).
    """
    levels = "ike = 4\n                chd = 4" if keys_in_log else "ike = 2"
    timeout = f"\n         heartbeat_timeout = {HA_HEARTBEAT_TIMEOUT_MS}" if hasync_peer else ""
    # the ha plugin's own pool (ha_attribute.c): a passive node reserves the virtual IPs of the
    # IKE_SAs it mirrors and frees them with the IKE_SA, so a new master never hands out a
    # kept tunnel's address (a swanctl pool knows only the leases it gave itself)
    # one setting a line: a value runs to the end of its line (strongswan.conf(5))
    pool6 = f"\n                  {POOL6_NAME} = {POOL6}" if six else ""
    ha_block = f"""
    ha {{ local = 127.0.0.1
         remote = 127.0.0.2
         segment_count = 1{timeout}
         pools {{ {POOL_NAME} = {POOL}{pool6} }} }}""" if ha else ""
    return f"""charon {{
  load = {PLUGINS}{' ha' if ha else ''}
  retransmit_tries = {timers.retransmit_tries}
  retransmit_timeout = {timers.retransmit_timeout_s}
  retransmit_base = {timers.retransmit_base}
  install_virtual_ip = yes{DOS_RELAXED if many_peers else ""}{"" if install_routes else NO_ROUTES}
  filelog {{ f {{ path = {log_path}
                flush_line = yes
                time_format = %H:%M:%S
                default = 1
                {levels}
                cfg = 1 }} }}
  plugins {{
    vici {{ socket = unix://{vici_socket} }}{ha_block}
  }}
}}
"""


NO_ROUTES = "\n  install_routes = no"  # VTI gateways: routebased.py
DOS_RELAXED = "\n  dos_protection = no"  # no cookies, no block_threshold (network/receiver.c)
TUNNEL_DOMAIN = "tunnels.lab"  # the benchmark's tunnels: identity tNNNN.tunnels.lab, PSK
TUNNEL_PSK = "hasync-lab-benchmark-tunnels"  # lab only: every tunnel shares it


def tunnel_id(name: str) -> str:
    """The IKE identity of benchmark tunnel `name`."""
    return f"{name}.{TUNNEL_DOMAIN}"


def _yes(on: bool) -> str:
    return "yes" if on else "no"


def _gateway_conn(conn: str, local: str, remote: str, vip: str, protected: str,
                  route: str = "", mobike: bool = False, six: bool = False) -> str:
    """One gateway connection for road warriors, virtual IPs from the ha plugin's pool;
    `route`: routebased.KINDS, or "" for policy-based; `mobike`: MOBIKE allowed (a client
    still needs its own `mobike = yes` to use it); `six`: the IPv6 pool and protected network
    as well (a client asking for one family gets that one)."""
    bind = f"\n                     {child_options(route)}" if route else ""
    return f"""  {conn} {{
    local_addrs = {vip}
    pools = {POOL_NAME}{f", {POOL6_NAME}" if six else ""}
    mobike = {_yes(mobike)}
    proposals = {IKE_PROPOSAL}
    local {{ {local}
            id = {GATEWAY_ID} }}
    remote {{ {remote} }}
    children {{ net {{ local_ts = {protected}{f", {PROTECTED6}" if six else ""}
                     esp_proposals = {GATEWAY_ESP}{bind} }} }}
  }}
"""


def swanctl_gateway(vip: str, protected: str, route: str = "", mobike: bool = False,
                    six: bool = False) -> str:
    """swanctl.conf of a gateway: road warriors with certificates (rw) or a pre-shared key
    (tunnels, the benchmark's), virtual IPs from the ha plugin's pool (strongswan_conf);
    with `mobike`, the certificate clients may use MOBIKE (mobike.py); with `six`, they may
    also ask for an IPv6 virtual IP and reach the IPv6 protected network."""
    rw = _gateway_conn("rw", "auth = pubkey\n            certs = own.pem",
                       "auth = pubkey\n             cacerts = ca.pem", vip, protected, route,
                       mobike, six)
    psk = _gateway_conn("tunnels", "auth = psk", f"auth = psk\n             id = *.{TUNNEL_DOMAIN}",
                        vip, protected, route, six=six)
    return f"""connections {{
{rw}{psk}}}
secrets {{ ike-tunnels {{ secret = "{TUNNEL_PSK}" }} }}
"""


def hasync_toml(node: str, raft: str, peers: list[str], state_dir: str, key_file: str,
                control_socket: str, vrrp_fifo: str, vici_socket: str,
                health_file: str = "/run/hasync/health", metrics: str = "") -> str:
    """hasync.toml of a lab gateway (charon's ha plugin: local 127.0.0.1, remote 127.0.0.2;
    the metrics endpoint on `metrics`, if given)."""
    peer_list = ", ".join(f'"{p}"' for p in peers)
    return f"""[node]
name = "{node}"
state_dir = "{state_dir}"
control_socket = "{control_socket}"
health_file = "{health_file}"

[cluster]
name = "lab"
key_file = "{key_file}"
bind = "{raft}"
peers = [{peer_list}]
heartbeat_ms = {LAB_RAFT[0]}
election_timeout_ms = {LAB_RAFT[1]}
connection_timeout_ms = {LAB_RAFT[2]}
quorum_timeout_ms = {LAB_QUORUM_MS}

[charon]
ha_local = "127.0.0.1:4510"
ha_remote = "127.0.0.2:4510"
vici_socket = "{vici_socket}"
control_fifo = "/var/run/charon.ha"

[keepalived]
instance = "VI_1"
notify_fifo = "{vrrp_fifo}"
fault_within_ms = {LAB_FAULT_WITHIN_MS}

[takeover]
tick_ms = {LAB_TICK_MS}
ha_timeout_ms = {LAB_HA_TIMEOUT_MS}
""" + (f'\n[metrics]\nlisten = "{metrics}"\n' if metrics else "")


def witness_toml(node: str, raft: str, peers: list[str], state_dir: str, key_file: str,
                 control_socket: str, health_file: str) -> str:
    """hasync.toml of the lab's witness: [node] with role "witness" and [cluster] only."""
    cluster = hasync_toml(node, raft, peers, state_dir, key_file, control_socket, "", "",
                          health_file).split("\n[charon]")[0]
    return cluster.replace("[node]\n", '[node]\nrole = "witness"\n', 1).rstrip() + "\n"


def _client_conn(conn: str, child: str, auth: str, local_id: str, esp: str, vip: str,
                 protected: str, timers: LabTimers, dpd: bool = True,
                 mobike: bool = False, six: bool = False) -> str:
    """One road-warrior connection: a virtual IP asked for, DPD (unless not `dpd`), retried
    for ever; MOBIKE with `mobike`; with `six`, an IPv6 virtual IP and the IPv6 protected
    network as well (one CHILD_SA carries both families)."""
    certs = "\n            certs = own.pem" if auth == "pubkey" else ""
    return f"""  {conn} {{
    remote_addrs = {vip}
    vips = 0.0.0.0{", ::" if six else ""}
    mobike = {_yes(mobike)}
    proposals = {IKE_PROPOSAL}
    dpd_delay = {timers.dpd_delay_s if dpd else 0}s
    keyingtries = 0
    local {{ auth = {auth}{certs}
            id = {local_id} }}
    remote {{ auth = {auth}
             id = {GATEWAY_ID} }}
    children {{ {child} {{ remote_ts = {protected}{f", {PROTECTED6}" if six else ""}
                     esp_proposals = {esp}
                     dpd_action = {timers.dpd_action} }} }}
  }}
"""


def client_esp(name: str, cipher: str = "aes256gcm") -> str:
    """The ESP proposal of lab client `name` with ESP_CIPHERS' `cipher` (ESN: ESN_CLIENTS)."""
    if cipher not in ESP_CIPHERS:
        raise ValueError(f"unknown ESP cipher {cipher!r}: one of {', '.join(ESP_CIPHERS)}")
    return f"{ESP_CIPHERS[cipher]}-ecp256" + ("-esn" if name in ESN_CLIENTS else "")


def swanctl_client(name: str, vip: str, protected: str, timers: LabTimers,
                   extra: tuple[str, ...] = (), cipher: str = "aes256gcm",
                   mobike: bool = False, six: bool = False, extra_six: bool = False) -> str:
    """swanctl.conf of a road-warrior client that asks for a virtual IP and runs DPD; with
    `extra`, also those connections (benchmark-style, pre-shared key), started by hand; with
    `mobike`, its own connection uses MOBIKE; with `six`, it asks for an IPv6 virtual IP too
    (inner6.py); with `extra_six`, so do the `extra` connections (leases.py: both pools)."""
    esp = client_esp(name, cipher)
    conn = _client_conn("home", "net", "pubkey", client_id(name), esp, vip, protected, timers,
                        mobike=mobike, six=six)
    # leases.py's tunnels carry no traffic and no DPD: an idle DPD in flight at a slow
    # failover would re-establish them, which is not what their rounds measure
    more = "".join(_client_conn(n, n, "psk", tunnel_id(n), ESP_PROPOSAL, vip, protected, timers,
                                dpd=False, six=extra_six) for n in extra)
    secret = f'secrets {{ ike-tunnels {{ secret = "{TUNNEL_PSK}" }} }}\n' if extra else ""
    return f"connections {{\n{conn}{more}}}\n{secret}"


def swanctl_client_tunnels(names: list[str], esn: bool, vip: str, protected: str,
                           timers: LabTimers) -> str:
    """swanctl.conf of a client carrying many tunnels: one connection per name, each its own
    identity (tunnel_id) and virtual IP, authenticated by the lab's pre-shared key."""
    esp = ESP_PROPOSAL + ("-esn" if esn else "")
    conns = "".join(_client_conn(n, n, "psk", tunnel_id(n), esp, vip, protected, timers)
                    for n in names)
    return (f"connections {{\n{conns}}}\n"
            f'secrets {{ ike-tunnels {{ secret = "{TUNNEL_PSK}" }} }}\n')


# The same check as deploy/keepalived-hasync.conf: every second; FAULT (the VIP given up) after
# 2 failures or runs over 3 s; back after 2 successes; no weight, so a failure means FAULT, not
# a lower priority. keepalived runs the command without a shell and needs its first word to be
# an absolute path; with enable_script_security it disables (ignores) a root script if the file
# or any directory above it is writable by a non-root user, so the lab's
# `{sys.executable} -m hasync health ...` needs an interpreter path only root can write.
# keepalived's vrrp_script timing (interval, timeout, fall, rise), as deploy/ sets it.
HEALTH_TIMING = (1, 3, 2, 2)
# Under QEMU/TCG six charons, three hasyncs and the probes share two emulated CPUs: a check
# can wait seconds for a CPU, so the lab allows 10 s per run (keepalived faults at once on
# a timeout, not after `fall` of them) and 3 failures in a row.
HA_HEARTBEAT_TIMEOUT_MS = 10000  # charon's plugins.ha.heartbeat_timeout with hasync as peer
#                                  (docs/decisions.md, Daemon); charon's default is 2100
LAB_HEALTH_TIMING = (1, 10, 3, 2)
LAB_HEALTH_MAX_AGE_S = 10  # the verdict's age the lab's check accepts (deploy/: 3 s): the
#                           check's own sh took seconds to start while 1000 tunnels came up
LAB_FAULT_WITHIN_MS = 30000  # the lab's check faults within 3 x 1 s + a 10 s timeout; waits
#                              for a CPU under TCG took seconds more (deploy/: 10000)
LAB_RAFT = (500, 2500, 7000)  # heartbeat, election, connection timeout (ms): emulated CPUs
#                               stall for a second at times, and elections must not flap then
LAB_QUORUM_MS = 12000  # no majority heard this long fails health: must outlast an election
#                        and a probe (config.py: 4/3 x (2.5 x 2500 + 4 x 500) = 11000)
LAB_BARRIER_MS = 30000  # how long the lab waits for a promotion's claim: a Raft election
#                         under emulation took over 10 s at times
LAB_HA_TIMEOUT_MS = 10000  # how long charon's HA stream may pause before the node is unhealthy
#                            (default 3 s): at 1000 tunnels a new master's charon sent nothing
#                            for 3 to 6.5 s after each activation, its health failed, and the
#                            VIP went round the gateways for minutes (docs/decisions.md)
LAB_TICK_MS = 200  # the sequence guard's tick in the lab (default 100 ms; 200 is the most
#                    the default reserve horizon allows), to spare the emulated CPUs


def health_check(health_cmd: str | None,
                 timing: tuple[int, int, int, int] = HEALTH_TIMING) -> tuple[str, str]:
    """(vrrp_script block, track_script lines) running `health_cmd`, or two empty strings."""
    if health_cmd is None:
        return "", ""
    if not health_cmd.startswith("/") or any(c in health_cmd for c in '"\n'):
        raise ValueError(f"health_cmd must start with an absolute path and hold no '\"' "
                         f"or newline: {health_cmd!r}")
    script = f"""vrrp_script chk_hasync {{
  script "{health_cmd}"
  interval {timing[0]}
  timeout {timing[1]}
  fall {timing[2]}
  rise {timing[3]}
}}
"""
    return script, "  track_script {\n    chk_hasync\n  }\n"


def _vip_line(addr: str, dev: str, hide: tuple[str, ...]) -> str:
    """One keepalived VIP line; one in `hide` carries what keeps charon from offering it.

    An IPv4 one is a link-scoped /32: the kernel refuses a secondary address whose scope
    differs from its subnet's primary (net/ipv4/devinet.c __inet_insert_ifa(): EINVAL,
    "ipv4: Invalid scope value"), and the node's own address in the same /24 is global.
    keepalived then logs a Netlink error and runs master without the VIP (D274).
    """
    if addr not in hide:
        return f"    {addr} dev {dev}"
    if ":" in addr:
        return f"    {addr} dev {dev} preferred_lft 0"
    return f"    {addr.split('/')[0]}/32 dev {dev} scope link"


def keepalived_conf(node: str, priority: int, advert_int: float, fifo: str,
                    vips: list[tuple[str, str]], lan_if: str,
                    hasync_fifo: str | None = None, health_cmd: str | None = None,
                    excluded: list[tuple[str, str]] | None = None,
                    link_scope: tuple[str, ...] = ()) -> str:
    """keepalived.conf: one VRRPv3 instance holding the public and the protected VIP.

    The lab reads `notify_fifo`; hasync, when it runs, reads `vrrp_notify_fifo` (keepalived
    writes every VRRP event to both: keepalived/vrrp/vrrp_notify.c notify_fifo(), 2.2.7).
    With `health_cmd`, the instance tracks it (`health_check`). The VIPs in `link_scope`
    (as given in `vips` or `excluded`) are hidden from charon's MOBIKE, which skips link-scoped
    and deprecated addresses (kernel_netlink_net.c filter_addresses(); mobike.py): an IPv4
    one gets `scope link`, an IPv6 one `preferred_lft 0` (the kernel derives an IPv6
    address's scope from the address and ignores the one asked for: the lab saw fd00:1::1
    offered with `scope link`); an IPv4 one is then a /32 (`_vip_line`).
    """
    vip_lines = "\n".join(_vip_line(addr, dev, link_scope) for addr, dev in vips)
    # an IPv6 VIP beside IPv4 ones: VRRPv3 carries one family per instance, the excluded
    # addresses move with it all the same (keepalived.conf(5))
    six = "\n".join(_vip_line(addr, dev, link_scope) for addr, dev in excluded or [])
    six_block = f"  virtual_ipaddress_excluded {{\n{six}\n  }}\n" if six else ""
    hasync = f"\n  vrrp_notify_fifo {hasync_fifo}" if hasync_fifo else ""
    script, track = health_check(health_cmd, LAB_HEALTH_TIMING)
    return f"""global_defs {{
  router_id {node}
  vrrp_version 3
  notify_fifo {fifo}{hasync}
  vrrp_garp_master_repeat 3
  vrrp_garp_master_refresh 5
  script_user root
  enable_script_security
}}
{script}vrrp_instance VI_1 {{
  state BACKUP
  nopreempt
  interface {lan_if}
  virtual_router_id 51
  priority {priority}
  advert_int {advert_int}
  virtual_ipaddress {{
{vip_lines}
  }}
{six_block}{track}}}
"""
