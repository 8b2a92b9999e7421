"""hasync_lab.confgen: the keepalived configuration the lab writes, and its health check that
deploy/keepalived-hasync.conf must repeat."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hasync.config import parse_config
from hasync_lab import confgen

ROOT = Path(__file__).resolve().parent.parent


DEPLOY_CMD = "/usr/local/libexec/hasync-health-check /run/hasync/health"


def _keepalived(health_cmd: str | None) -> str:
    return confgen.keepalived_conf("gw1", 200, 0.5, "/r/f", [("192.0.2.1/24", "e0")], "e0",
                                   "/run/hasync/vrrp.fifo", health_cmd=health_cmd)


def test_track_script_only_with_a_health_command() -> None:
    plain = _keepalived(None)
    assert "vrrp_script" not in plain and "track_script" not in plain
    cmd = f"{sys.executable} -m hasync health --config /lab/etc/gw1/hasync.toml"
    text = _keepalived(cmd)
    script = text[text.index("vrrp_script chk_hasync {"):text.index("vrrp_instance")]
    assert f'  script "{cmd}"\n' in script
    i, t, f, r = confgen.LAB_HEALTH_TIMING
    for line in (f"interval {i}", f"timeout {t}", f"fall {f}", f"rise {r}"):
        assert f"  {line}\n" in script
    assert "weight" not in text  # unweighted: a failure is FAULT
    instance = text[text.index("vrrp_instance VI_1 {"):]
    assert "  track_script {\n    chk_hasync\n  }\n}\n" in instance
    assert text.replace(script, "").replace("  track_script {\n    chk_hasync\n  }\n", "") \
        == plain


@pytest.mark.parametrize("cmd", ["hasync health", 'x/"y"', "/bin/true\nvrrp_instance X {"])
def test_a_health_command_keepalived_cannot_run_is_refused(cmd: str) -> None:
    with pytest.raises(ValueError, match="health_cmd"):
        _keepalived(cmd)


def test_deploy_config_tracks_the_same_check() -> None:
    deploy = (ROOT / "deploy" / "keepalived-hasync.conf").read_text()
    script, track = confgen.health_check(DEPLOY_CMD)
    assert script in deploy and track in deploy
    assert deploy.index(script) < deploy.index("vrrp_instance VI_1")


def test_the_lab_gateways_hasync_toml_is_one_the_daemon_accepts() -> None:
    text = confgen.hasync_toml("gw1", "10.0.0.1:4520", ["10.0.0.2:4520", "10.0.0.3:4520"],
                               "/var/lib/hasync", "/etc/hasync/cluster.key",
                               "/run/hasync/control.sock", "/run/hasync/vrrp.fifo",
                               "/run/charon.vici")
    cfg = parse_config(text, "lab gw1")
    assert cfg.cluster.quorum_timeout_ms == confgen.LAB_QUORUM_MS
    assert cfg.node.role == "gateway"


@pytest.mark.parametrize(("cipher", "want"), [
    ("aes256gcm", "aes256gcm16-ecp256"), ("aes128gcm", "aes128gcm16-ecp256"),
    ("aes256cbc", "aes256-sha256-ecp256"), ("chacha20", "chacha20poly1305-ecp256")])
def test_each_client_cipher_is_one_the_gateways_accept(cipher: str, want: str) -> None:
    assert confgen.client_esp("c1", cipher) == want
    assert confgen.client_esp("c2", cipher) == want + "-esn"  # c2 asks for ESN
    offered = want.split("-")[:-1]  # the algorithms without the DH group
    accepted = [p.strip().split("-") for p in confgen.GATEWAY_ESP.split(",")]
    assert any(set(offered) <= set(p) and "ecp256" in p and {"esn", "noesn"} <= set(p)
               for p in accepted)
    text = confgen.swanctl_client("c1", "192.0.2.1", "10.1.0.0/24", confgen.LabTimers(),
                                  cipher=cipher)
    assert f"esp_proposals = {want}\n" in text


def test_an_unknown_cipher_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown ESP cipher"):
        confgen.client_esp("c1", "des")
