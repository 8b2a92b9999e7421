"""Lab test of issue 17, finding 3: a backup's charon restarted as a package upgrade would
(SIGTERM, deploy/'s `ip xfrm` flush, a new charon, its connections loaded seconds later), then
the master killed, so the failover lands on that backup. hasync must notice the restart, wait
for the connections, replay the journal into the new charon, and the failover must keep every
client's tunnel with 0 reused (SPI, seq). Real charon, keepalived and kernel XFRM in the VM.

In `make test-lab-extended` since issue 18's matrix needed the time in `make test`; the matrix
still fails over onto a gateway whose charon was started anew and refilled from the journal
(gw1, restored after the first kill)."""

from __future__ import annotations

from typing import Any

from labrun import LAB_EXTENDED, lab_fixture

pytestmark = LAB_EXTENDED


run = lab_fixture("upgrade", ["failover", "--failovers", "1", "--fault", "upgrade"], 3600)


def test_finding3_hasync_refills_a_backups_charon_restarted_as_an_upgrade_would(
        run: dict[str, Any]) -> None:
    (fo,) = run["failovers"]
    up = fo["upgrade"]
    assert up["node"] == fo["to"] == "gw2", up
    assert up["charon_restarts_seen"] == 1 and up["replays"] >= 1, up
    assert up["refilled"] and up["charon_ikes"] == up["tunnels"], up
    assert up["kernel_sas"] >= 2 * up["tunnels"], up


def test_finding3_the_failover_onto_the_upgraded_backup_keeps_every_tunnel(
        run: dict[str, Any]) -> None:
    (fo,) = run["failovers"]
    assert fo["vip_moved"]
    for c in fo["clients"]:
        assert c["reestablished"] is False and c["ike_sa_init"] == 0, c["name"]
        assert c["ike_spi_after"] == c["ike_spi_before"], c["name"]
        assert c["resumed"] and c["esp_to_client"] > 0, c["name"]
        assert c["seq_reuse"] == 0, c["name"]
