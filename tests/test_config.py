"""Tests of hasync.config: the sample file, defaults, and that every error names file and key."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path

import pytest

from hasync.config import (
    MINIMUMS,
    SCHEMA,
    Address,
    CharonConfig,
    ClusterConfig,
    Config,
    ConfigError,
    KeepalivedConfig,
    NodeConfig,
    load_config,
    parse_address,
    parse_config,
)

SAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "hasync.toml"
SRC = "/etc/hasync/hasync.toml"
MINIMAL = """
[node]
name = "gw1"
[cluster]
bind = "192.0.2.11:4520"
peers = ["192.0.2.12:4520"]
"""


def _error(text: str) -> str:
    """The message of the ConfigError that parsing `text` raises."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, SRC)
    return str(info.value)


def _with(section: str, line: str) -> str:
    """MINIMAL with `line` added to [section] (the section is created if absent)."""
    head = f"[{section}]\n"
    if head in MINIMAL:
        return MINIMAL.replace(head, head + line + "\n")
    return MINIMAL + head + line + "\n"


def test_sample_file_loads_and_spells_out_every_default() -> None:
    config = load_config(SAMPLE)
    assert config.source == str(SAMPLE)
    assert config.node.name == "gw1"
    assert str(config.cluster.bind) == "192.0.2.11:4520"
    assert [str(p) for p in config.cluster.peers] == ["192.0.2.12:4520", "192.0.2.13:4520"]
    defaults = parse_config(MINIMAL, SRC)
    for section in ("node", "cluster", "charon", "keepalived", "fence"):
        for f in dataclasses.fields(getattr(config, section)):
            if f.name not in ("name", "bind", "peers"):
                assert getattr(getattr(config, section), f.name) == \
                    getattr(getattr(defaults, section), f.name), f"{section}.{f.name}"


def test_defaults() -> None:
    config = parse_config(MINIMAL, SRC)
    assert config == Config(
        node=NodeConfig(name="gw1"),
        cluster=ClusterConfig(bind=parse_address("192.0.2.11:4520"),
                              peers=(parse_address("192.0.2.12:4520"),)),
        charon=CharonConfig(),
        keepalived=KeepalivedConfig(),
        source=SRC,
    )
    assert config.node.state_dir == Path("/var/lib/hasync")
    assert config.node.control_socket == Path("/run/hasync/control.sock")
    assert config.cluster.name == "hasync"
    assert config.cluster.key_file == Path("/etc/hasync/cluster.key")
    assert (config.cluster.batch_max_messages, config.cluster.batch_max_delay_ms) == (256, 5)
    assert str(config.charon.ha_local) == "127.0.0.1:4510"
    assert config.charon.ha_remote.sockaddr == ("127.0.0.2", 4510)
    assert config.charon.vici_socket == Path("/var/run/charon.vici")
    assert config.charon.control_fifo == Path("/var/run/charon.ha")
    assert (config.charon.segments, config.charon.protocol_version) == (1, 3)
    assert config.keepalived.instance == "VI_1"
    assert config.keepalived.notify_fifo == Path("/run/hasync/vrrp.fifo")
    assert config.keepalived.fault_within_ms == 10_000


def test_config_is_frozen() -> None:
    config = parse_config(MINIMAL, SRC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("text", "host", "port"), [
    ("10.0.0.1:1", "10.0.0.1", 1),
    ("[2001:db8::1]:65535", "2001:db8::1", 65535),
    ("[::ffff:10.0.0.1]:4520", "::ffff:10.0.0.1", 4520),
])
def test_addresses(text: str, host: str, port: int) -> None:
    addr = parse_address(text)
    assert addr == Address(ipaddress.ip_address(host), port)
    assert parse_address(str(addr)) == addr


def test_ipv6_cluster() -> None:
    text = MINIMAL.replace('"192.0.2.11:4520"', '"[2001:db8::11]:4520"')
    config = parse_config(text, SRC)
    assert str(config.cluster.bind) == "[2001:db8::11]:4520"
    assert config.cluster.bind.sockaddr == ("2001:db8::11", 4520)


@pytest.mark.parametrize(("text", "expected"), [
    (_with("node", "colour = 'red'"), f"{SRC}: node.colour: unknown key"),
    (_with("cluster", "timeout = 3"), f"{SRC}: cluster.timeout: unknown key"),
    # removed in issue 15 (parsed, never used): a config still setting it is refused by name
    (_with("cluster", "connection_retry_ms = 1000"),
     f"{SRC}: cluster.connection_retry_ms: no longer used"),
    (_with("node", "[node.extra]"), f"{SRC}: node.extra: unknown key"),
    (MINIMAL + "[raft]\n", f"{SRC}: raft: unknown section"),
    ("debug = true\n" + MINIMAL, f"{SRC}: debug: unknown section"),
])
def test_unknown_keys(text: str, expected: str) -> None:
    assert _error(text).startswith(expected)


@pytest.mark.parametrize(("key", "why"), [
    ("no_quorum_reserve = 4194304", "a node without a Raft majority does not promote"),
    ("barrier_timeout_ms = 10000", "a promotion claims the sender epoch"),
    ("takeover_horizon_ms = 1000", "a new master starts past the journaled mark"),
])
def test_keys_removed_by_issue_16_are_refused_naming_file_key_and_why(key: str,
                                                                       why: str) -> None:
    name = key.split(" ")[0]
    err = _error(_with("takeover", key))
    assert err.startswith(f"{SRC}: takeover.{name}: removed (issue 16): ") and why in err
    assert err.endswith("delete the key")


def test_the_fence_section() -> None:
    assert parse_config(MINIMAL, SRC).fence.natt_port == 4500
    assert parse_config(_with("fence", "natt_port = 14500"), SRC).fence.natt_port == 14500
    assert _error(_with("fence", "natt_port = 0")).startswith(f"{SRC}: fence.natt_port:")


@pytest.mark.parametrize(("section", "line", "expected"), [
    ("cluster", "batch_max_messages = '64'",
     "cluster.batch_max_messages: expected an integer, got string '64'"),
    ("cluster", "batch_max_delay_ms = 5.0",
     "cluster.batch_max_delay_ms: expected an integer, got float 5.0"),
    ("charon", "segments = true", "charon.segments: expected an integer, got boolean True"),
    ("charon", "ha_local = 4510", "charon.ha_local: expected a string, got integer 4510"),
    ("node", "state_dir = ['/var']", "node.state_dir: expected a string, got array"),
    ("keepalived", "instance = 1979-05-27",
     "keepalived.instance: expected a string, got date/time"),
])
def test_wrong_types(section: str, line: str, expected: str) -> None:
    message = _error(_with(section, line))
    assert message.startswith(f"{SRC}: {expected}"), message


def test_wrong_type_for_a_section_or_peers() -> None:
    text = "charon = 3\n" + MINIMAL
    assert _error(text).startswith(f"{SRC}: charon: expected a table [charon], got integer")
    text = MINIMAL.replace('peers = ["192.0.2.12:4520"]', 'peers = "192.0.2.12:4520"')
    assert _error(text).startswith(f"{SRC}: cluster.peers: expected an array")


@pytest.mark.parametrize(("value", "reason"), [
    ("x", "not host:port: 'x'"),
    ("10.0.0.1", "not host:port: '10.0.0.1'"),
    ("gw2.example:4520", "not an IP address: 'gw2.example'"),
    ("10.0.0.300:4520", "not an IP address"),
    ("10.0.0.2:0", "port must be 1 to 65535"),
    ("10.0.0.2:65536", "port must be 1 to 65535"),
    ("10.0.0.2:45x", "port must be 1 to 65535"),
    ("10.0.0.2:", "port must be 1 to 65535"),
    ("2001:db8::2:4520", "IPv6 needs [brackets]"),
    ("[2001:db8::2]", "not [ipv6]:port"),
    ("[10.0.0.2]:4520", "brackets are for IPv6 only"),
])
def test_bad_addresses(value: str, reason: str) -> None:
    text = MINIMAL.replace('"192.0.2.12:4520"]', f'"192.0.2.13:4520", "{value}"]')
    message = _error(text)
    assert message.startswith(f"{SRC}: cluster.peers[1]: "), message
    assert reason in message
    assert reason in _error(_with("charon", f'ha_remote = "{value}"'))
    assert _error(MINIMAL.replace('"192.0.2.11:4520"', f'"{value}"')).startswith(
        f"{SRC}: cluster.bind: ")


def test_brief_example_message() -> None:
    text = MINIMAL.replace('"192.0.2.12:4520"]', '"192.0.2.13:4520", "x"]')
    assert _error(text) == f"{SRC}: cluster.peers[1]: not host:port: 'x'"


def test_peers_rules() -> None:
    dup = MINIMAL.replace('"192.0.2.12:4520"]', '"192.0.2.12:4520", "192.0.2.12:4520"]')
    assert _error(dup) == f"{SRC}: cluster.peers[1]: duplicate of peers[0]: 192.0.2.12:4520"
    v6 = MINIMAL.replace('["192.0.2.12:4520"]', '["[2001:db8::2]:1", "[2001:0db8:0::2]:1"]')
    assert _error(v6).startswith(f"{SRC}: cluster.peers[1]: duplicate of peers[0]")
    own = MINIMAL.replace('"192.0.2.12:4520"]', '"192.0.2.12:4520", "192.0.2.11:4520"]')
    assert _error(own) == f"{SRC}: cluster.peers[1]: is this node's own cluster.bind: " \
                          "192.0.2.11:4520"
    empty = MINIMAL.replace('["192.0.2.12:4520"]', "[]")
    assert _error(empty).startswith(f"{SRC}: cluster.peers: must list 1 to 6 peers")
    seven = ", ".join(f'"192.0.2.{20 + i}:4520"' for i in range(7))
    assert _error(MINIMAL.replace('"192.0.2.12:4520"', seven)).startswith(
        f"{SRC}: cluster.peers: must list 1 to 6 peers (2 to 7 nodes), got 7")
    six = ", ".join(f'"192.0.2.{20 + i}:4520"' for i in range(6))
    assert len(parse_config(MINIMAL.replace('"192.0.2.12:4520"', six), SRC).cluster.peers) == 6


@pytest.mark.parametrize("name", ["", "gw 1", "gw.1", "g" * 33, "gw1\n", "ŋw", "gw1/.."])
def test_bad_names(name: str) -> None:
    quoted = json.dumps(name)  # a JSON string is a valid TOML basic string
    message = _error(MINIMAL.replace('"gw1"', quoted))
    assert message.startswith(f"{SRC}: node.name: must be 1 to 32 of"), message
    message = _error(_with("cluster", f"name = {quoted}"))
    assert message.startswith(f"{SRC}: cluster.name: must be 1 to 32 of"), message


def test_good_names() -> None:
    for name in ("a", "gw-1_B", "x" * 32):
        assert parse_config(MINIMAL.replace("gw1", name), SRC).node.name == name


def test_missing_required_keys() -> None:
    assert _error("") == f"{SRC}: node.name: required key missing"
    assert _error('[node]\nname = "gw1"\n') == f"{SRC}: cluster.bind: required key missing"
    text = MINIMAL.replace('peers = ["192.0.2.12:4520"]\n', "")
    assert _error(text) == f"{SRC}: cluster.peers: required key missing"


@pytest.mark.parametrize("version", [0, 2, 6, -3])
def test_bad_protocol_version(version: int) -> None:
    message = _error(_with("charon", f"protocol_version = {version}"))
    assert message == f"{SRC}: charon.protocol_version: must be 3 (strongSwan 5.9.x), " \
                      f"4 (6.0.1) or 5 (6.0.2 on), got {version}"


@pytest.mark.parametrize("version", [3, 4, 5])
def test_protocol_versions(version: int) -> None:
    config = parse_config(_with("charon", f"protocol_version = {version}"), SRC)
    assert config.charon.protocol_version == version


@pytest.mark.parametrize(("section", "line", "expected"), [
    ("charon", "segments = 0", "charon.segments: must be between 1 and 16, got 0"),
    ("charon", "segments = 17", "charon.segments: must be between 1 and 16, got 17"),
    ("cluster", "batch_max_messages = 0", "cluster.batch_max_messages: must be between"),
    ("cluster", "heartbeat_ms = 500", "cluster.election_timeout_ms: must be at least 3 x"),
    ("node", "state_dir = 'var/lib/hasync'", "node.state_dir: must be an absolute path"),
    ("node", "control_socket = '/run/" + "x" * 120 + "'",
     "node.control_socket: unix socket path longer than 107 bytes"),
    ("keepalived", "notify_fifo = 'fifo'", "keepalived.notify_fifo: must be an absolute path"),
    ("keepalived", 'instance = "VI 1"', "keepalived.instance: must be 1 to 64 printable"),
    ("keepalived", "instance = 'VI\"1'", "keepalived.instance: must be 1 to 64 printable"),
    ("keepalived", "fault_within_ms = 999",
     "keepalived.fault_within_ms: must be between 1000 and 600000, got 999"),
    ("cluster", 'key_file = "/etc/\\u0000key"', "cluster.key_file: path contains a NUL"),
    ("charon", 'ha_remote = "127.0.0.1:4510"', "charon.ha_remote: must differ from"),
    ("charon", 'ha_remote = "[::1]:4510"', "charon.ha_remote: must be the same IP version"),
])
def test_bad_values(section: str, line: str, expected: str) -> None:
    message = _error(_with(section, line))
    assert message.startswith(f"{SRC}: {expected}"), message


@pytest.mark.parametrize(("text", "where"), [
    ('[node]\nname = "gw1"\nstate_dir = \n', "line 3, column 13"),
    ('[node]\nname = "gw1"\n[cluster\n', "line 3, column 9"),
    ('[node]\nname = "gw1"\n[node]\n', "line 3, column 6"),
    ('[node]\nname = "gw1\n', "line 2, column"),
    ('[node]\nname = "gw1', "line 2: invalid TOML: Unterminated string at end of file"),
])
def test_toml_syntax_errors_name_file_and_line(text: str, where: str) -> None:
    message = _error(text)
    assert message.startswith(f"{SRC}: {where}"), message
    assert "invalid TOML" in message


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read: No such file"):
        load_config(missing)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(MINIMAL.encode() + b"# \xff\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: line 7: not UTF-8"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(_with("charon", "segments = 'two'"))
    with pytest.raises(ConfigError, match=rf"^{wrong}: charon\.segments: expected an integer"):
        load_config(wrong)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read"):
        load_config(tmp_path)


def test_config_error_is_a_value_error_with_parts() -> None:
    with pytest.raises(ValueError) as info:
        parse_config(_with("charon", "segments = 0"), SRC)
    exc = info.value
    assert isinstance(exc, ConfigError)
    assert (exc.source, exc.where) == (SRC, "charon.segments")
    assert exc.reason.startswith("must be between")


def test_schema_covers_every_field() -> None:
    for section, (cls, checks) in SCHEMA.items():
        assert set(checks) == {f.name for f in dataclasses.fields(cls)}, section


def test_role_and_quorum_timeout() -> None:
    cfg = parse_config(MINIMAL, SRC)
    assert (cfg.node.role, cfg.cluster.quorum_timeout_ms) == ("gateway", 4000)
    cfg = parse_config(_with("node", 'role = "witness"'), SRC)
    assert cfg.node.role == "witness"
    assert _error(_with("node", 'role = "arbiter"')) == (
        f"{SRC}: node.role: must be one of gateway, witness, got 'arbiter'")
    assert _error(_with("cluster", "quorum_timeout_ms = 50")).startswith(
        f"{SRC}: cluster.quorum_timeout_ms: ")


@pytest.mark.parametrize("section", ["charon", "keepalived", "takeover", "fence", "metrics"])
def test_a_witness_refuses_gateway_sections(section: str) -> None:
    text = _with("node", 'role = "witness"') + f"[{section}]\n"
    assert _error(text) == (f'{SRC}: {section}: a witness (node.role = "witness") has no '
                            "charon, keepalived, takeover, fence or metrics endpoint: remove "
                            "this section")


def test_metrics_are_off_by_default_and_listen_where_the_config_says() -> None:
    assert parse_config(_with("node", ""), SRC).metrics.listen is None
    cfg = parse_config(_with("metrics", 'listen = "[fd00::1]:9812"'), SRC)
    assert str(cfg.metrics.listen) == "[fd00::1]:9812"
    assert _error(_with("metrics", 'listen = "9812"')).startswith(f"{SRC}: metrics.listen: ")


def test_the_quorum_timeout_must_outlast_an_election() -> None:
    assert _error(_with("cluster", "quorum_timeout_ms = 3800")) == (
        f"{SRC}: cluster.quorum_timeout_ms: must outlast a Raft election and a probe: at least "
        "4/3 x (2.5 x cluster.election_timeout_ms + 4 x cluster.heartbeat_ms) (3867), got 3800")


# --- issue 17 finding 8 ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ha_local", "ha_remote"])
@pytest.mark.parametrize("value", ["192.0.2.1:4510", "0.0.0.0:4510", "[2001:db8::1]:4510",
                                   "[::]:4510", "[::ffff:127.0.0.1]:4510", "10.0.0.1:4510"])
def test_finding8_ha_addresses_must_be_loopback(key: str, value: str) -> None:
    message = _error(_with("charon", f'{key} = "{value}"'))
    assert message.startswith(f"{SRC}: charon.{key}: must be a loopback address"), message


def test_finding8_loopback_ha_addresses_load() -> None:
    cfg = parse_config(_with("charon", 'ha_local = "127.0.0.5:4510"\nha_remote = "127.1.2.3:4511"'),
                       SRC)
    assert (str(cfg.charon.ha_local), str(cfg.charon.ha_remote)) == (
        "127.0.0.5:4510", "127.1.2.3:4511")
    cfg = parse_config(_with("charon", 'ha_local = "[::1]:4510"\nha_remote = "[::1]:4511"'), SRC)
    assert cfg.charon.ha_remote.host.version == 6


FLOORS = ("heartbeat_ms = 50\nelection_timeout_ms = 300\nconnection_timeout_ms = 750\n"
          "quorum_timeout_ms = 1300\n")
TAKEOVER_FLOORS = "reserve_horizon_ms = 200\ntick_ms = 50\nha_timeout_ms = 2000\n"


@pytest.mark.parametrize("dotted", sorted(MINIMUMS))
def test_finding8_a_timing_key_below_its_floor_is_refused(dotted: str) -> None:
    key = dotted.split(".")[1]
    low, why = MINIMUMS[dotted]
    text = MINIMAL.replace("[cluster]\n", "[cluster]\n" + FLOORS.replace(
        f"{key} = {low}\n", f"{key} = {low - 1}\n")) + "[takeover]\n" + TAKEOVER_FLOORS.replace(
        f"{key} = {low}\n", f"{key} = {low - 1}\n")
    assert _error(text) == f"{SRC}: {dotted}: must be at least {low} ({why}), got {low - 1}"


def test_finding8_every_timing_key_at_its_floor_loads() -> None:
    text = MINIMAL.replace("[cluster]\n", "[cluster]\n" + FLOORS) + "[takeover]\n" + (
        TAKEOVER_FLOORS)
    cfg = parse_config(text, SRC)
    got = {f"cluster.{k}": getattr(cfg.cluster, k) for k in (
        "heartbeat_ms", "election_timeout_ms", "connection_timeout_ms", "quorum_timeout_ms")}
    got |= {f"takeover.{k}": getattr(cfg.takeover, k) for k in (
        "reserve_horizon_ms", "tick_ms", "ha_timeout_ms")}
    assert got == {key: low for key, (low, _) in MINIMUMS.items()}


@pytest.mark.parametrize("name", ["hasync.toml", "witness.toml"])
def test_finding8_shipped_configs_still_load(name: str) -> None:
    cfg = parse_config((SAMPLE.parent / name).read_text(), name)
    assert cfg.charon.ha_local.host.is_loopback and cfg.charon.ha_remote.host.is_loopback
