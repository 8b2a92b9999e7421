"""libreswan road warriors in a failover run (`--client-impl`, issue 18 item 7): the clients a
spec gives to libreswan run pluto (libreswan.py) in place of charon, against the same gateway
connection, and are measured like the strongSwan clients.

Rules: a libreswan client is seen through `as_ike_sa()` (cluster.client_sas() asks it through
the lab's `listers`), so the failover's per-client numbers, the lease checks and the verdicts
read it as they read a charon client; the checks after the failovers (IKE rekey, CHILD rekey,
DPD) are driven with whack and judged from whack's states and pluto's log. Its state
directory (NSS database, control socket) is on the lab's tmpfs; its log is linked into the
run's log/ so the artifacts keep it. The lab never gives a libreswan client the in-flight
exchange, a MOBIKE roam or the lease tunnels (cli.py refuses): those drive charon.
"""

from __future__ import annotations

import time
from typing import Any

from . import libreswan
from . import libreswan_text as text
from .observe import IkeSa
from .procs import Lab
from .topology import PROTECTED, PUBLIC_VIP

IMPLS = ("strongswan", "libreswan")
UP_TIMEOUT_S = 90.0
POLL_S = 0.5


def names(lab: Lab, impls: tuple[str, ...]) -> list[str]:
    """The clients (plan order) that `impls` (one per client, the rest strongSwan) gives to
    libreswan."""
    clients = [n.name for n in lab.topo.by_role("client")]
    return [c for c, impl in zip(clients, impls, strict=False) if impl == "libreswan"]


def start(lab: Lab, which: list[str], creds: dict[str, Any], timers: Any,
          ciphers: dict[str, str]) -> dict[str, libreswan.Client]:
    """Prepare and start pluto on each of `which`; register its listing with the lab."""
    if not which:
        return {}
    install = libreswan.find_install()
    out = {}
    for name in which:
        node = lab.topo.node(name)
        spec = text.spec_for(name, node.address, PUBLIC_VIP, PROTECTED, timers,
                             ciphers.get(name, "aes256gcm"))
        client = libreswan.Client(install, spec, lab.run_dir(name) / "libreswan",
                                  lambda argv, n=name: lab.argv_in(n, argv))
        client.prepare(creds["ca"].cert_pem, creds[name].cert_pem, creds[name].key_pem)
        client.log_path.touch()
        link = lab.log_path(name, "pluto")
        link.unlink(missing_ok=True)
        link.symlink_to(client.log_path)  # copied as a file with the artifacts
        client.start()
        lab.listers[name] = lambda c=client: sas(c)
        out[name] = client
    return out


def up(clients: dict[str, libreswan.Client]) -> None:
    """Initiate every libreswan client's connection and wait until each is established."""
    for c in clients.values():
        c.whack(["--initiate", "--name", text.CONN, "--asynchronous"])
    for c in clients.values():
        c.up(UP_TIMEOUT_S)


def sas(client: libreswan.Client) -> list[IkeSa]:
    """The client's established IKE SA as the lab's IkeSa (none while nothing is up)."""
    sa = text.as_ike_sa(client.status())
    return [sa] if sa.state else []


def checks_after(client: libreswan.Client) -> dict[str, dict[str, object]]:
    """IKE rekey, then CHILD rekey, against the current master (whack's view)."""
    return {"ike_rekey": client.rekey_ike(30), "child_rekey": client.rekey_child(30)}


def dpd_begin(client: libreswan.Client) -> int:
    """Log liveness checks from now on (`whack --debug base`); the log offset to judge from."""
    offset = client.log_offset()
    client.whack(["--debug", "base"])
    return offset


def dpd(client: libreswan.Client, offset: int, delay_s: float,
        timeout: float) -> dict[str, object]:
    """After dpd_begin() and with the traffic towards the client stopped: wait up to `timeout`
    for a liveness check the master answers; ok if one was answered, none was given up, and
    the IKE SA is the one it was. The same keys as aftercheck.dpd()."""
    if timeout <= delay_s:
        raise ValueError(f"timeout {timeout} s leaves no time after the DPD delay {delay_s} s")
    before = client.status().ike_sas
    t0 = time.monotonic()
    deadline = t0 + timeout
    ev = text.events(client.log_text(offset))
    while ev.liveness_answered == 0 and not ev.dpd_failed and time.monotonic() < deadline:
        time.sleep(POLL_S)
        ev = text.events(client.log_text(offset))
    ms = round((time.monotonic() - t0) * 1000, 1)
    client.whack(["--debug", "none"], check=False)
    after = client.status().ike_sas
    error = None
    if ev.liveness_answered == 0:
        error = (f"no liveness check answered within {timeout:g} s "
                 f"(sent {ev.liveness_sent}, retransmits {ev.retransmits})")
    elif ev.dpd_failed or ev.gave_up or ev.ike_sa_inits:
        error = f"the peer was declared dead or the IKE SA started again: {ev}"
    elif not before or before != after:
        error = f"the IKE SA changed: {list(before)} -> {list(after)}"
    return {"ok": error is None, "msgid": None, "retransmits": ev.retransmits,
            "before": list(before), "after": list(after),
            "ms": ms if ev.liveness_answered else None, "error": error,
            "events": ev.__dict__}
