"""Proof of the libreswan client against a strongSwan responder, in namespaces (issue 18,
item 7): IKEv2 with a virtual IP, traffic through the CHILD SA, CHILD and IKE rekeys, DPD
answered, and DPD failing (dpdaction=restart) when the responder goes silent.

Rules: `python -m hasync_lab.libreswan_check OUT [--vm] [--nat]`; natively it needs a kernel
with ESP (with --vm it boots Debian's kernel under QEMU with virtme-ng, as the lab does, and
runs itself inside); with --nat the client sits behind a masquerading router, like the lab's
c3. The responder is one charon without HA, loaded with the lab gateways' own swanctl.conf
(confgen.swanctl_gateway) plus a swanctl pool named like the ha plugin's; the protected
server is an address on the responder's loopback. Every step's result and the raw whack and
log text it judged go to OUT (libreswan-check.json, captures/, logs; never key material);
the namespaces and processes are removed whatever happens.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import confgen, libreswan, pki
from . import libreswan_text as text
from .prereq import LabError

PREFIX = "lswchk"
GW, CLIENT, NAT = f"{PREFIX}-gw", f"{PREFIX}-c", f"{PREFIX}-nat"
GW_ADDR, CLIENT_ADDR, SERVER = "192.0.2.1", "192.0.2.104", "10.1.0.100"
NAT_OUTSIDE, NATTED_ADDR = "192.0.2.200", "10.0.3.2"  # with --nat
PROTECTED = "10.1.0.0/24"
POOL = f"pools {{ {confgen.POOL_NAME} {{ addrs = 10.3.0.0/24 }} }}\n"  # no ha plugin here
DPD_DELAY_S = 3
VM_BUDGET_S = 900
KEY_LINE = re.compile(r"\s*(aead|enc|auth|auth-trunc|comp) ")  # `ip xfrm state` key lines


def sh(argv: list[str], check: bool = True, timeout: float = 60) -> str:
    """Run a command, return its output."""
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                         stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {res.returncode} {res.stderr.strip()[-500:]}")
    return res.stdout + res.stderr


def netns(ns: str, argv: list[str]) -> list[str]:
    """argv inside namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]


def build_net(nat: bool) -> str:
    """The responder and the client joined by a veth pair (with `nat`, through a NAT router
    that masquerades the client as NAT_OUTSIDE, like the lab's c3); the server address on the
    responder's lo. Returns the client's own address."""
    for ns in (GW, CLIENT, *((NAT,) if nat else ())):
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    near = NAT if nat else CLIENT  # the namespace on the responder's link
    veth(GW, "lswchk0", f"{GW_ADDR}/24", near, "lswchk2" if nat else "lswchk1",
         f"{NAT_OUTSIDE if nat else CLIENT_ADDR}/24")
    sh(["ip", "-n", GW, "addr", "add", f"{SERVER}/32", "dev", "lo"])
    # replies to the pool leave through the veth (charon's policies encrypt them)
    sh(["ip", "-n", GW, "route", "add", "10.3.0.0/24", "dev", "lswchk0"])
    if not nat:
        return CLIENT_ADDR
    veth(NAT, "lswchk3", "10.0.3.1/24", CLIENT, "lswchk1", f"{NATTED_ADDR}/24")
    sh(["ip", "-n", CLIENT, "route", "add", "default", "via", "10.0.3.1"])
    sh(netns(NAT, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
    nft(NAT, "table ip lswchk_nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
             "  oifname lswchk2 masquerade\n }\n}\n")
    return NATTED_ADDR


def nft(ns: str, rules: str) -> None:
    """Load an nft script into namespace `ns`; LabError with nft's message if it fails."""
    res = subprocess.run(netns(ns, ["nft", "-f", "-"]), input=rules, text=True, check=False,
                         capture_output=True)
    if res.returncode != 0:
        raise LabError(f"nft: {res.stderr.strip()}")


def veth(ns_a: str, dev_a: str, addr_a: str, ns_b: str, dev_b: str, addr_b: str) -> None:
    """A veth pair between two namespaces, addressed and up."""
    sh(["ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b,
        "netns", ns_b])
    for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
        sh(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
        sh(["ip", "-n", ns, "link", "set", dev, "up"])


def start_responder(base: Path, creds: dict[str, pki.Credential]) -> subprocess.Popen[bytes]:
    """charon in the responder namespace with the lab gateways' connections."""
    gw = base / "gw"
    (gw / "run").mkdir(parents=True, exist_ok=True)
    (gw / "strongswan.conf").write_text(confgen.strongswan_conf(
        str(gw / "charon.log"), str(gw / "run" / "charon.vici"), confgen.LabTimers(), ha=False))
    pki.install_swanctl_dir(gw / "swanctl", creds["ca"], creds["gateway"])
    (gw / "swanctl" / "swanctl.conf").write_text(
        confgen.swanctl_gateway(GW_ADDR, PROTECTED) + POOL)
    (gw / "swanctl-tool.conf").write_text("swanctl { load = pem pkcs1 pkcs8 x509 openssl }\n")
    private_run = 'mount --bind "$1" /run && shift && exec "$@"'
    proc = subprocess.Popen(
        netns(GW, ["unshare", "--mount", "--propagation", "private", "sh", "-c", private_run,
                   "sh", str(gw / "run"), "/usr/lib/ipsec/charon"]),
        env={**os.environ, "STRONGSWAN_CONF": str(gw / "strongswan.conf")},
        stdout=open(gw / "charon.out", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (gw / "run" / "charon.vici").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise LabError(f"charon did not start; see {gw}/charon.log")
        time.sleep(0.3)
    time.sleep(0.5)
    subprocess.run(
        ["swanctl", "--load-all", "--noprompt", "--uri", f"unix://{gw}/run/charon.vici"],
        env={**os.environ, "SWANCTL_DIR": str(gw / "swanctl"),
             "STRONGSWAN_CONF": str(gw / "swanctl-tool.conf")}, check=True, timeout=120,
        capture_output=True)
    return proc


def capture(base: Path, name: str, client: libreswan.Client) -> None:
    """Save whack's views of the client now, for the parsers' tests."""
    d = base / "captures"
    d.mkdir(exist_ok=True)
    for what in ("showstates", "trafficstatus", "status"):
        _, out = client.whack([f"--{what}"], check=False)
        (d / f"{name}-{what}.txt").write_text(out)


def ping(count: int = 3) -> dict[str, object]:
    """Ping the server from the client's namespace (through the tunnel, from the VIP)."""
    res = subprocess.run(netns(CLIENT, ["ping", "-c", str(count), "-W", "5", SERVER]),
                         capture_output=True, text=True, timeout=60, check=False)
    return {"ok": res.returncode == 0, "out": res.stdout.strip().splitlines()[-2:]}


def dpd_answered(client: libreswan.Client, gw_log: Path) -> dict[str, object]:
    """Stay idle past dpddelay: the client sends liveness checks the responder answers, and
    keeps its IKE SA."""
    before = client.status().ike_sas
    offset, gw_offset = client.log_offset(), gw_log.stat().st_size
    client.whack(["--debug", "base"])
    time.sleep(DPD_DELAY_S * 4)
    client.whack(["--debug", "none"])
    after = client.status().ike_sas
    log = client.log_text(offset)
    gw_text = gw_log.read_bytes()[gw_offset:].decode(errors="replace")
    ev = text.events(log)
    return {"ok": bool(before) and before == after and ev.liveness_answered > 0
            and ev.ike_sa_inits == 0, "before": list(before), "after": list(after),
            "events": ev.__dict__,
            "gateway_info_requests": gw_text.count("parsed INFORMATIONAL request"),
            "log": log[-4000:]}


def dpd_dead(client: libreswan.Client) -> dict[str, object]:
    """Drop everything the responder receives: liveness fails, dpdaction=restart
    re-initiates; let packets through again: a new IKE SA comes up."""
    before = client.status().ike_sas
    offset = client.log_offset()
    nft(GW, "table inet lswchk {\n chain in {\n  type filter hook input priority 0;\n"
            "  udp dport { 500, 4500 } drop\n }\n}\n")
    t0 = time.monotonic()
    deadline = t0 + DPD_DELAY_S + 7 + 30
    restarted = None
    while time.monotonic() < deadline:
        ev = text.events(client.log_text(offset))
        if ev.dpd_failed:
            restarted = round(time.monotonic() - t0, 1)
            break
        time.sleep(0.5)
    sh(netns(GW, ["nft", "delete", "table", "inet", "lswchk"]))
    st = client.wait_for(lambda s: s.established and not set(s.ike_sas) & set(before), 90)
    return {"ok": restarted is not None and st is not None, "restart_after_s": restarted,
            "before": list(before), "after": list(st.ike_sas) if st else None,
            "events": text.events(client.log_text(offset)).__dict__,
            "log": client.log_text(offset)[-4000:]}


def keep(base: Path, out: Path) -> None:
    """Copy the logs, configuration and captures of a run from `base` to `out`."""
    for rel in ("captures", "c4/pluto.log", "c4/pluto.stderr", "c4/ipsec.conf",
                "gw/charon.log", "gw/swanctl/swanctl.conf", "gw/strongswan.conf"):
        src = base / rel
        if src.is_dir():
            shutil.copytree(src, out / rel, dirs_exist_ok=True)
        elif src.exists():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, out / rel)


def run(base: Path, res: dict[str, object], nat: bool = False) -> None:
    """Every step, in order, each one's result into `res` as it ends."""
    base.mkdir(parents=True, exist_ok=True)
    install = libreswan.find_install()
    creds = pki.make_lab_pki(["c4"], datetime.datetime.now(datetime.UTC))
    local = build_net(nat)
    charon = start_responder(base, creds)
    spec = text.ClientSpec("c4", local, GW_ADDR, PROTECTED, dpd_delay_s=DPD_DELAY_S)
    client = libreswan.Client(install, spec, base / "c4", lambda a: netns(CLIENT, a))
    try:
        client.prepare(creds["ca"].cert_pem, creds["c4"].cert_pem, creds["c4"].key_pem)
        client.start()
        st = client.up(90)
        res["up"] = {"ike_sas": st.ike_sas, "esp_spis": st.esp_spis, "vip": st.vip,
                     "encap": st.encap, "nat": nat}
        capture(base, "up", client)
        res["ping"] = ping()
        res["after_ping"] = client.status().__dict__ | {"states": None}
        capture(base, "ping", client)
        offset = client.log_offset()
        res["rekey_child"] = client.rekey_child(60)
        capture(base, "rekey-child", client)
        res["rekey_ike"] = client.rekey_ike(60)
        capture(base, "rekey-ike", client)
        res["rekey_events"] = text.events(client.log_text(offset)).__dict__
        res["ping_after_rekeys"] = ping()
        res["dpd_answered"] = dpd_answered(client, base / "gw" / "charon.log")
        res["dpd_dead"] = dpd_dead(client)
        capture(base, "after-dpd", client)
        res["ping_after_dpd"] = ping()
        states = sh(netns(CLIENT, ["ip", "xfrm", "state"]), check=False).splitlines()
        res["xfrm_state"] = [ln for ln in states if not KEY_LINE.match(ln)]  # no keys kept
    finally:
        client.stop()
        charon.terminate()
        charon.wait(10)


def teardown() -> None:
    """Remove the namespaces (their processes are stopped by run())."""
    for ns in (GW, CLIENT, NAT):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def in_vm(out: Path, nat: bool) -> int:
    """Boot the lab's VM and run this module inside it, writing into `out`."""
    from .prereq import kernel_image, venv_which
    from .runner import VM_CPUS, VM_MEMORY, python_path
    out.mkdir(parents=True, exist_ok=True)
    inner = (f"cd / && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={shlex.quote(python_path())} "
             f"{sys.executable} -m hasync_lab.libreswan_check {out} --inside"
             + (" --nat" if nat else ""))
    argv = [venv_which("vng") or "vng", "--run", kernel_image(), "--disable-kvm", "--memory",
            VM_MEMORY, "--cpus", str(VM_CPUS), "--rwdir", str(out), "--exec", inner]
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]}
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, env=env, timeout=VM_BUDGET_S,
                         check=False)
    return res.returncode


def main(argv: list[str]) -> int:
    """Entry point: OUT [--vm | --inside] [--nat]."""
    out = Path(argv[0]).resolve()
    if "--vm" in argv:
        rc = in_vm(out, "--nat" in argv)
        print((out / "libreswan-check.json").read_text())
        return rc
    if "--inside" in argv:
        from .inside import MODULES
        subprocess.run(["modprobe", "-a", *MODULES], check=False)
    # sockets cannot live on the VM's 9p share (OUT): work in a local directory, keep copies
    base = Path(tempfile.mkdtemp(prefix="lswchk-"))
    result: dict[str, object] = {}
    try:
        run(base, result, "--nat" in argv)
    except BaseException as e:  # the host must learn why
        result |= {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    finally:
        teardown()
        keep(base, out)
        shutil.rmtree(base, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "libreswan-check.json").write_text(json.dumps(result, indent=1, default=str))
    if "--inside" in argv:
        sys.stdout.flush()
        subprocess.run(["poweroff", "-f"], check=False)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
