"""The daemon's TOML configuration (default `/etc/hasync/hasync.toml`) as frozen dataclasses.

Rules: the only module that reads configuration (no environment variables); `parse_config` is
pure and `load_config` only adds reading the file; unknown sections or keys, wrong types, bad
values and TOML syntax are all `ConfigError`, whose message names the file and the dotted key
(or the line); addresses are IP literals with a port, never host names (no DNS at start or on
failover), and charon's HA link (`charon.ha_local`, `charon.ha_remote`) is loopback only: it
carries IKE and ESP key material in clear; every timing key has a floor below which it breaks
something (`MINIMUMS` says what); every value the daemon may read has a default here, except
the node's name and the cluster's addresses.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/hasync/hasync.toml")
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
INSTANCE_RE = re.compile(r"[!#-~]{1,64}")  # printable ASCII, no space or '"' (FIFO line syntax)
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the NUL
MAX_PEERS = 6  # a cluster has 2 to 7 nodes
PROTOCOL_VERSIONS = (3, 4, 5)  # charon's ha wire versions: 5.9.x, 6.0.1, 6.0.2+
SEGMENTS_MAX = 16  # charon's segment_mask_t is 16 bits

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class ConfigError(ValueError):
    """The configuration file is unreadable, not TOML, or holds a bad value; names file and key."""

    def __init__(self, source: str, where: str | None, reason: str) -> None:
        super().__init__(f"{source}: {where}: {reason}" if where else f"{source}: {reason}")
        self.source = source
        self.where = where
        self.reason = reason


class _Invalid(Exception):
    """A value failed a check; `parse_config` adds the file and the key."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


@dataclass(frozen=True, slots=True)
class Address:
    """An IP literal and a port; prints as `host:port` or `[v6]:port`."""

    host: IP
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.host.version == 6 else str(self.host)
        return f"{host}:{self.port}"

    @property
    def sockaddr(self) -> tuple[str, int]:
        """The (host, port) pair for `socket.bind`/`connect`."""
        return str(self.host), self.port


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """[node]: this gateway's identity and local paths."""

    name: str
    state_dir: Path = Path("/var/lib/hasync")
    control_socket: Path = Path("/run/hasync/control.sock")
    health_file: Path = Path("/run/hasync/health")  # the verdict keepalived's check reads
    role: str = "gateway"  # or "witness": a Raft voter only (docs/operations.md)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """[cluster]: the Raft group (addresses, shared key, timing, batching)."""

    bind: Address
    peers: tuple[Address, ...]
    name: str = "hasync"
    key_file: Path = Path("/etc/hasync/cluster.key")
    heartbeat_ms: int = 100
    election_timeout_ms: int = 1000
    connection_timeout_ms: int = 3500
    batch_max_messages: int = 256
    batch_max_delay_ms: int = 5
    batch_window: int = 4  # batches in flight at once (pipeline.py); 1: one at a time
    quorum_timeout_ms: int = 4000  # no majority heard this long: health fails (quorum.py)


@dataclass(frozen=True, slots=True)
class CharonConfig:
    """[charon]: how hasync meets charon's ha plugin, vici and control FIFO."""

    ha_local: Address = field(default_factory=lambda: parse_address("127.0.0.1:4510"))
    ha_remote: Address = field(default_factory=lambda: parse_address("127.0.0.2:4510"))
    vici_socket: Path = Path("/var/run/charon.vici")
    control_fifo: Path = Path("/var/run/charon.ha")
    segments: int = 1
    protocol_version: int = 3


@dataclass(frozen=True, slots=True)
class KeepalivedConfig:
    """[keepalived]: the VRRP instance that decides the master and its notify FIFO."""

    instance: str = "VI_1"
    notify_fifo: Path = Path("/run/hasync/vrrp.fifo")
    fault_within_ms: int = 10_000  # keepalived's check faults a failing node within this


@dataclass(frozen=True, slots=True)
class TakeoverConfig:
    """[takeover]: the sequence guard's reserves (docs/takeover.md derives the defaults)."""

    reserve_floor: int = 768
    reserve_horizon_ms: int = 800
    takeover_floor: int = 576
    tick_ms: int = 100
    ha_timeout_ms: int = 3000


@dataclass(frozen=True, slots=True)
class FenceConfig:
    """[fence]: the kernel's send fence (hasync/fence): the UDP port of ESP-in-UDP."""

    natt_port: int = 4500


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """[metrics]: the Prometheus endpoint (hasync/metrics.py); off unless `listen` is set."""

    listen: Address | None = None  # host:port of GET /metrics, e.g. "10.1.0.11:9812"
    sas: int = 0  # per-SA series for up to this many journaled IKE_SAs (0: none)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; `source` is the file it came from."""

    node: NodeConfig
    cluster: ClusterConfig
    charon: CharonConfig = field(default_factory=CharonConfig)
    keepalived: KeepalivedConfig = field(default_factory=KeepalivedConfig)
    takeover: TakeoverConfig = field(default_factory=TakeoverConfig)
    fence: FenceConfig = field(default_factory=FenceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = str(DEFAULT_PATH)


# --- value checks: each takes the TOML value and returns the typed one, or raises _Invalid ---

def _type_name(value: Any) -> str:
    """The TOML name of a parsed value's type."""
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
        (list, "array"), (dict, "table"), ((datetime, date, time), "date/time"),
    ]
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def _short(value: Any) -> str:
    """repr of a value, cut to stay readable in one error line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(value: Any) -> str:
    """A TOML string."""
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_type_name(value)} {_short(value)}")
    return value


def _integer(low: int, high: int) -> Callable[[Any], int]:
    """A TOML integer in [low, high] (booleans and floats are not integers)."""
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_type_name(value)} {_short(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high}, got {value}")
        return value
    return check


def _name(value: Any) -> str:
    """A node or cluster name: 1 to 32 of [A-Za-z0-9_-]."""
    text = _string(value)
    if not NAME_RE.fullmatch(text):
        raise _Invalid(f"must be 1 to 32 of A-Z a-z 0-9 _ -, got {_short(text)}")
    return text


def _instance(value: Any) -> str:
    """A keepalived VRRP instance name as it appears, quoted, on the notify FIFO."""
    text = _string(value)
    if not INSTANCE_RE.fullmatch(text):
        raise _Invalid(f"must be 1 to 64 printable characters, no space or '\"': {_short(text)}")
    return text


def _path(value: Any) -> Path:
    """An absolute filesystem path."""
    text = _string(value)
    if "\0" in text:
        raise _Invalid("path contains a NUL character")
    if not text.startswith("/"):
        raise _Invalid(f"must be an absolute path, got {_short(text)}")
    return Path(text)


def _socket_path(value: Any) -> Path:
    """An absolute path short enough for a unix socket address."""
    path = _path(value)
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise _Invalid(f"unix socket path longer than {SUN_PATH_MAX} bytes: {_short(str(path))}")
    return path


def parse_address(text: str) -> Address:
    """`a.b.c.d:port` or `[v6]:port` as an `Address`; raises ValueError on anything else."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"not [ipv6]:port: {text!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"not host:port: {text!r}")
        if ":" in host:
            raise ValueError(f"not host:port (IPv6 needs [brackets]): {text!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r} in {text!r}") from None
    if text.startswith("[") and ip.version != 6:
        raise ValueError(f"brackets are for IPv6 only: {text!r}")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1 to 65535: {text!r}")
    return Address(ip, int(port))


def _address(value: Any) -> Address:
    """A TOML string holding `host:port` with an IP literal host."""
    try:
        return parse_address(_string(value))
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _loopback_address(value: Any) -> Address:
    """An address on loopback (IPv4 127.0.0.0/8 or ::1): charon's HA datagrams hold IKE and
    ESP keys in clear (the ha plugin does not encrypt them), so they never leave the host."""
    addr = _address(value)
    if not addr.host.is_loopback:
        raise _Invalid(f"must be a loopback address (127.0.0.0/8 or [::1]), got {addr}: "
                       "charon's HA datagrams carry keys in clear")
    return addr


def _peers(value: Any) -> tuple[Address, ...]:
    """1 to 6 distinct peer addresses; errors name the bad item as `[i]`."""
    if not isinstance(value, list):
        raise _Invalid(f"expected an array of \"host:port\", got {_type_name(value)}")
    if not 1 <= len(value) <= MAX_PEERS:
        raise _Invalid(f"must list 1 to {MAX_PEERS} peers (2 to 7 nodes), got {len(value)}")
    peers: list[Address] = []
    for i, item in enumerate(value):
        try:
            addr = _address(item)
        except _Invalid as exc:
            raise _Invalid(exc.reason, f"[{i}]") from None
        if addr in peers:
            raise _Invalid(f"duplicate of peers[{peers.index(addr)}]: {addr}", f"[{i}]")
        peers.append(addr)
    return tuple(peers)


def _version(value: Any) -> int:
    """charon's ha protocol version: 3 (5.9.x), 4 (6.0.1) or 5 (6.0.2 on)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_type_name(value)} {_short(value)}")
    if value not in PROTOCOL_VERSIONS:
        raise _Invalid(f"must be 3 (strongSwan 5.9.x), 4 (6.0.1) or 5 (6.0.2 on), got {value}")
    return value


ROLES = ("gateway", "witness")
GATEWAY_ONLY = ("charon", "keepalived", "takeover", "fence", "metrics")  # not on a witness


def _role(value: Any) -> str:
    """`gateway` or `witness`."""
    if value not in ROLES:
        raise _Invalid(f"must be one of {', '.join(ROLES)}, got {_short(value)}")
    return str(value)


Check = Callable[[Any], Any]

# The floor of each timing key, and what a smaller value breaks (issue 17 finding 8).
MINIMUMS: dict[str, tuple[int, str]] = {
    "cluster.heartbeat_ms": (50, "pysyncobj ticks at most every 50 ms (raft.py AUTO_TICK_MIN_S): "
                             "a shorter heartbeat is not kept"),
    "cluster.election_timeout_ms": (300, "six 50 ms ticks: below that a follower's timer "
                                    "fires on one or two late heartbeats and the leader churns"),
    "cluster.connection_timeout_ms": (750, "2.5 x the smallest election timeout: pysyncobj "
                                      "requires connectionTimeout >= raftMaxTimeout "
                                      "(pysyncobj/config.py, SyncObjConf.validate)"),
    "cluster.quorum_timeout_ms": (1300, "4/3 x (2.5 x 300 + 4 x 50): a shorter bound fails "
                                  "health during every Raft election (quorum.py)"),
    "takeover.reserve_horizon_ms": (200, "four of the smallest guard ticks"),
    "takeover.tick_ms": (50, "each tick reads every SA from the kernel; below 50 ms the "
                         "reads run back to back (docs/benchmarks.md: 0.5 s for 2000 SAs)"),
    "takeover.ha_timeout_ms": (2000, "two of charon's 1 s STATUS heartbeats: one late "
                               "heartbeat must not fail health and move the VIP"),
}


def _timing(key: str, high: int) -> Check:
    """A timing key: an integer from its floor in MINIMUMS (the error says why) to `high`."""
    low, why = MINIMUMS[key]
    within = _integer(low, high)

    def check(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value < low:
            raise _Invalid(f"must be at least {low} ({why}), got {value}")
        return within(value)
    return check


# section -> (dataclass, key -> check); defaults and required keys come from the dataclasses.
SCHEMA: dict[str, tuple[type, dict[str, Check]]] = {
    "node": (NodeConfig, {
        "name": _name, "state_dir": _path, "control_socket": _socket_path,
        "health_file": _path, "role": _role,
    }),
    "cluster": (ClusterConfig, {
        "name": _name, "key_file": _path, "bind": _address, "peers": _peers,
        "heartbeat_ms": _timing("cluster.heartbeat_ms", 10_000),
        "election_timeout_ms": _timing("cluster.election_timeout_ms", 60_000),
        "connection_timeout_ms": _timing("cluster.connection_timeout_ms", 600_000),
        "batch_max_messages": _integer(1, 512),  # seal.MAX_ITEMS
        "batch_max_delay_ms": _integer(0, 1000),
        "batch_window": _integer(1, 64),
        "quorum_timeout_ms": _timing("cluster.quorum_timeout_ms", 60_000),
    }),
    "charon": (CharonConfig, {
        "ha_local": _loopback_address, "ha_remote": _loopback_address,
        "vici_socket": _socket_path,
        "control_fifo": _path, "segments": _integer(1, SEGMENTS_MAX),
        "protocol_version": _version,
    }),
    "keepalived": (KeepalivedConfig, {"instance": _instance, "notify_fifo": _path,
                                      "fault_within_ms": _integer(1000, 600_000)}),
    "takeover": (TakeoverConfig, {
        "reserve_floor": _integer(64, 1 << 30),
        "reserve_horizon_ms": _timing("takeover.reserve_horizon_ms", 60_000),
        "takeover_floor": _integer(0, 1 << 30),
        "tick_ms": _timing("takeover.tick_ms", 1000),
        "ha_timeout_ms": _timing("takeover.ha_timeout_ms", 60_000),
    }),
    "fence": (FenceConfig, {"natt_port": _integer(1, 65535)}),
    "metrics": (MetricsConfig, {"listen": _address, "sas": _integer(0, 5000)}),  # SAS_PAGE_MAX
}
# Keys that once existed: loading a config that still has one is an error naming it and why.
REMOVED: dict[str, str] = {
    "cluster.connection_retry_ms": "no longer used (removed in issue 15): it was parsed and "
    "never passed to Raft; delete the key",
    "takeover.no_quorum_reserve": "removed (issue 16): a node without a Raft majority does not "
    "promote, so no reserve is added; delete the key",
    "takeover.barrier_timeout_ms": "removed (issue 16): a promotion claims the sender epoch "
    "until the claim commits or the node stops being master; delete the key",
    "takeover.takeover_horizon_ms": "removed (issue 16): a new master starts past the "
    "journaled mark (+ takeover_floor), whatever the rate, since the fence stops every node "
    "at its committed marks; delete the key",
}


def _section(data: dict[str, Any], section: str) -> Any:
    """Check one [section] against SCHEMA and build its dataclass."""
    cls, checks = SCHEMA[section]
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise _Invalid(f"expected a table [{section}], got {_type_name(table)}", section)
    for key in table:
        if f"{section}.{key}" in REMOVED:
            raise _Invalid(REMOVED[f"{section}.{key}"], f"{section}.{key}")
        if key not in checks:
            known = ", ".join(checks)
            raise _Invalid(f"unknown key (known: {known})", f"{section}.{key}")
    values: dict[str, Any] = {}
    for key, check in checks.items():
        if key in table:
            try:
                values[key] = check(table[key])
            except _Invalid as exc:
                raise _Invalid(exc.reason, f"{section}.{key}{exc.key or ''}") from None
    for f in fields(cls):
        if f.name not in values and f.default is MISSING and f.default_factory is MISSING:
            raise _Invalid("required key missing", f"{section}.{f.name}")
    return cls(**values)


def _witness_sections(data: dict[str, Any]) -> None:
    """A witness runs no charon, VRRP or guard: their sections are refused, not ignored, so
    a gateway's file started as a witness by mistake says so."""
    node = data.get("node")
    if not isinstance(node, dict) or node.get("role") != "witness":
        return
    for section in GATEWAY_ONLY:
        if section in data:
            raise _Invalid("a witness (node.role = \"witness\") has no charon, keepalived, "
                           "takeover, fence or metrics endpoint: remove this section", section)


def _cross_check(config: Config) -> None:
    """Rules between keys: bind not a peer, timers in order, charon's two ends distinct."""
    cluster, charon = config.cluster, config.charon
    if cluster.bind in cluster.peers:
        i = cluster.peers.index(cluster.bind)
        raise _Invalid(f"is this node's own cluster.bind: {cluster.bind}", f"cluster.peers[{i}]")
    if cluster.election_timeout_ms < 3 * cluster.heartbeat_ms:
        raise _Invalid(f"must be at least 3 x cluster.heartbeat_ms ({cluster.heartbeat_ms}), "
                       f"got {cluster.election_timeout_ms}", "cluster.election_timeout_ms")
    if cluster.connection_timeout_ms < cluster.election_timeout_ms * 2.5:
        raise _Invalid(f"must be at least 2.5 x cluster.election_timeout_ms "
                       f"({cluster.election_timeout_ms}): pysyncobj requires it, got "
                       f"{cluster.connection_timeout_ms}", "cluster.connection_timeout_ms")
    # quorum.py: after an election the probe's age peaks near election + limit/4 + 2 commits
    election_max = cluster.election_timeout_ms * 2.5 + 4 * cluster.heartbeat_ms
    if cluster.quorum_timeout_ms < election_max * 4 / 3:
        raise _Invalid(f"must outlast a Raft election and a probe: at least 4/3 x (2.5 x "
                       f"cluster.election_timeout_ms + 4 x cluster.heartbeat_ms) "
                       f"({election_max * 4 / 3:.0f}), got {cluster.quorum_timeout_ms}",
                       "cluster.quorum_timeout_ms")
    if config.takeover.tick_ms * 4 > config.takeover.reserve_horizon_ms:
        raise _Invalid(f"must be at most a quarter of takeover.reserve_horizon_ms "
                       f"({config.takeover.reserve_horizon_ms}), got {config.takeover.tick_ms}",
                       "takeover.tick_ms")
    if charon.ha_remote == charon.ha_local:
        raise _Invalid(f"must differ from charon.ha_local ({charon.ha_local})", "charon.ha_remote")
    if charon.ha_remote.host.version != charon.ha_local.host.version:
        raise _Invalid("must be the same IP version as charon.ha_local", "charon.ha_remote")


def _syntax_error(source: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    """A ConfigError naming the line (and column) of a TOML syntax error."""
    message = str(exc)
    m = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if m:
        where = f"line {m[1]}, column {m[2]}"
        message = message[: m.start()]
    else:
        where = f"line {text.count(chr(10)) + 1}"
        message = message.removesuffix(" (at end of document)") + " at end of file"
    return ConfigError(source, where, f"invalid TOML: {message}")


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text; `source` names it in errors. Pure."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(source, text, exc) from None
    try:
        for section in data:
            if section not in SCHEMA:
                raise _Invalid(f"unknown section (known: {', '.join(SCHEMA)})", section)
        _witness_sections(data)
        config = Config(
            node=_section(data, "node"),
            cluster=_section(data, "cluster"),
            charon=_section(data, "charon"),
            keepalived=_section(data, "keepalived"),
            takeover=_section(data, "takeover"),
            fence=_section(data, "fence"),
            metrics=_section(data, "metrics"),
            source=source,
        )
        _cross_check(config)
    except _Invalid as exc:
        raise ConfigError(source, exc.key, exc.reason) from None
    return config


def load_config(path: str | os.PathLike[str] = DEFAULT_PATH) -> Config:
    """Read and validate the configuration file at `path`."""
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(source, f"line {line}", "not UTF-8") from None
    return parse_config(text, source)
