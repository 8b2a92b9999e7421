"""Configuration text for the lab's daemons: strongswan.conf, swanctl.conf and keepalived.conf.

Rules: pure functions from settings to text (no IO); every timer the lab's results depend on
is a field of `LabTimers` and is reported with the results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .pki import GATEWAY_ID, client_id
from .topology import POOL

# openssl gives AES, SHA-2, HMAC, GCM, ECDSA and the ECP groups; kdf is needed for IKEv2's
# PRF+ in 5.9.8; pkcs8 reads the lab's keys.
PLUGINS = ("random nonce openssl pem pkcs1 pkcs8 x509 constraints pubkey kdf "
           "kernel-netlink socket-default vici")
IKE_PROPOSAL = "aes256-sha256-ecp256"
ESP_PROPOSAL = "aes256gcm16-ecp256"


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


def strongswan_conf(log_path: str, vici_socket: str, timers: LabTimers, ha: bool,
                    keys_in_log: bool = False) -> str:
    """strongswan.conf for one charon; with `ha`, the ha plugin talks to 127.0.0.2:4510.

    With `keys_in_log`, charon logs IKE and CHILD key material (level 4): for golden vectors.
    """
    levels = "ike = 4\n                chd = 4" if keys_in_log else "ike = 2"
    ha_block = """
    ha { local = 127.0.0.1
         remote = 127.0.0.2
         segment_count = 1 }""" if ha else ""
    return f"""charon {{
  load = {PLUGINS}{' ha' if ha else ''}
  retransmit_tries = {timers.retransmit_tries}
  retransmit_timeout = {timers.retransmit_timeout_s}
  retransmit_base = {timers.retransmit_base}
  install_virtual_ip = yes
  filelog {{ f {{ path = {log_path}
                time_format = %H:%M:%S
                default = 1
                {levels}
                cfg = 1 }} }}
  plugins {{
    vici {{ socket = unix://{vici_socket} }}{ha_block}
  }}
}}
"""


def swanctl_gateway(vip: str, protected: str) -> str:
    """swanctl.conf of a gateway: road warriors with certificates, virtual IPs from a pool."""
    return f"""connections {{
  rw {{
    local_addrs = {vip}
    pools = rw_pool
    mobike = no
    proposals = {IKE_PROPOSAL}
    local {{ auth = pubkey
            certs = own.pem
            id = {GATEWAY_ID} }}
    remote {{ auth = pubkey
             cacerts = ca.pem }}
    children {{ net {{ local_ts = {protected}
                     esp_proposals = {ESP_PROPOSAL} }} }}
  }}
}}
pools {{ rw_pool {{ addrs = {POOL} }} }}
"""


def hasync_toml(node: str, raft: str, peers: list[str], state_dir: str, key_file: str,
                control_socket: str, vrrp_fifo: str, vici_socket: str) -> str:
    """hasync.toml of a lab gateway (charon's ha plugin: local 127.0.0.1, remote 127.0.0.2)."""
    peer_list = ", ".join(f'"{p}"' for p in peers)
    return f"""[node]
name = "{node}"
state_dir = "{state_dir}"
control_socket = "{control_socket}"

[cluster]
name = "lab"
key_file = "{key_file}"
bind = "{raft}"
peers = [{peer_list}]

[charon]
ha_local = "127.0.0.1:4510"
ha_remote = "127.0.0.2:4510"
vici_socket = "{vici_socket}"
control_fifo = "/var/run/charon.ha"

[keepalived]
instance = "VI_1"
notify_fifo = "{vrrp_fifo}"
"""


def swanctl_client(name: str, vip: str, protected: str, timers: LabTimers) -> str:
    """swanctl.conf of a road-warrior client that asks for a virtual IP and runs DPD."""
    return f"""connections {{
  home {{
    remote_addrs = {vip}
    vips = 0.0.0.0
    mobike = no
    proposals = {IKE_PROPOSAL}
    dpd_delay = {timers.dpd_delay_s}s
    keyingtries = 0
    local {{ auth = pubkey
            certs = own.pem
            id = {client_id(name)} }}
    remote {{ auth = pubkey
             id = {GATEWAY_ID} }}
    children {{ net {{ remote_ts = {protected}
                     esp_proposals = {ESP_PROPOSAL}
                     dpd_action = {timers.dpd_action} }} }}
  }}
}}
"""


def keepalived_conf(node: str, priority: int, advert_int: float, fifo: str,
                    vips: list[tuple[str, str]], lan_if: str,
                    hasync_fifo: str | None = None) -> str:
    """keepalived.conf: one VRRPv3 instance holding the public and the protected VIP.

    The lab reads `notify_fifo`; hasync, when it runs, reads `vrrp_notify_fifo` (keepalived
    writes every VRRP event to both: keepalived/vrrp/vrrp_notify.c notify_fifo(), 2.2.7).
    """
    vip_lines = "\n".join(f"    {addr} dev {dev}" for addr, dev in vips)
    hasync = f"\n  vrrp_notify_fifo {hasync_fifo}" if hasync_fifo else ""
    return f"""global_defs {{
  router_id {node}
  vrrp_version 3
  notify_fifo {fifo}{hasync}
  vrrp_garp_master_repeat 3
  vrrp_garp_master_refresh 5
  script_user root
  enable_script_security
}}
vrrp_instance VI_1 {{
  state BACKUP
  nopreempt
  interface {lan_if}
  virtual_router_id 51
  priority {priority}
  advert_int {advert_int}
  virtual_ipaddress {{
{vip_lines}
  }}
}}
"""
