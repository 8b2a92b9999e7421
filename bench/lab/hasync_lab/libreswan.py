"""A libreswan 4.10 road warrior for the lab (issue 18, item 7): a second IKEv2 implementation
as a client of the strongSwan gateways, with its own DPD and retransmission timers.

Rules: Debian 12's libreswan conflicts with strongswan-charon, so it is unpacked apart
(`make setup`: `apt-get download libreswan` and `dpkg-deb -x` into LIBRESWAN_ROOT) and run
from there; nothing here uses the package's `ipsec` script, /etc/ipsec.* or /run/pluto. Each
client has one private state directory (mode 0700): ipsec.conf, ipsec.secrets, the NSS
database holding the lab CA and the client's certificate and key, pluto's control socket, pid
file and log. Configuration text and the parsers of whack's output are pure
(libreswan_text.py); this module runs the processes. pluto runs in the client's network
namespace through `wrap` (argv -> argv, e.g. procs.Lab.argv_in) and in a private mount
namespace whose /usr/libexec is the package's (pluto runs /usr/libexec/ipsec/addconn, a path
built in); whack talks to pluto's control socket by path and needs no namespace. The state
directory must be on a local filesystem (a unix socket cannot live on the VM's 9p share):
the lab's tmpfs. Like pki.py's PEM keys, the NSS database holds the key without a password:
lab only.

Interface (the lab calls nothing else):
  find_install(root=None) -> Install          raises LabError naming what to install
  Client(install, spec, state_dir, wrap)      one client; spec: libreswan_text.ClientSpec
    .prepare(ca_pem, cert_pem, key_pem)       write the config and the NSS database
    .start(timeout)                           pluto --nofork, wait for its control socket
    .up(timeout) -> Status                    whack --initiate the connection, wait for it
    .status() -> Status                       whack --showstates and --trafficstatus, parsed
    .rekey_child(timeout) / .rekey_ike(timeout) -> dict   new SPIs, old ones gone
    .log_offset() / .log_text(offset=0)       pluto's log, for libreswan_text.events()
    .whack(args, check=True) -> (rc, output)  any other whack command (e.g. --debug base)
    .wait_for(ok, timeout) -> Status | None   poll status() until ok(status)
    .proc                                     pluto's Popen (its own session), for teardown
    .stop()                                   whack --shutdown, then SIGKILL if needed
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from . import libreswan_text as text
from .libreswan_text import ClientSpec, Status
from .prereq import LabError, Need, describe_missing, missing

LIBRESWAN_ROOT = "/opt/hasync-lab/libreswan"  # where `make setup` unpacks the package
ROOT_ENV = "HASYNC_LAB_LIBRESWAN"  # overrides LIBRESWAN_ROOT
EXEC_DIR = "usr/libexec/ipsec"  # inside the package: pluto, whack, addconn, _updown.xfrm
POLL_S = 0.2
Wrap = Callable[[list[str]], list[str]]
_PRIVATE_LIBEXEC = 'mount --bind "$1" /usr/libexec && shift && exec "$@"'


@dataclass(frozen=True)
class Install:
    """Where the unpacked libreswan and the NSS tools are."""

    root: Path

    def tool(self, name: str) -> str:
        """The path of one of libreswan's programs (pluto, whack, addconn, _updown.xfrm)."""
        return str(self.root / EXEC_DIR / name)


def find_install(root: str | None = None) -> Install:
    """Find the unpacked libreswan (`root`, $HASYNC_LAB_LIBRESWAN or LIBRESWAN_ROOT) and the
    NSS tools; raise LabError naming what to install when something is missing."""
    base = Path(root or os.environ.get(ROOT_ENV) or LIBRESWAN_ROOT)
    needs = (Need("certutil", "libnss3-tools"), Need("pk12util", "libnss3-tools"))
    lacking = missing(needs)
    absent = [n for n in ("pluto", "whack", "addconn", "_updown.xfrm")
              if not os.access(base / EXEC_DIR / n, os.X_OK)]
    if absent:
        raise LabError(f"libreswan is not unpacked in {base} (missing {', '.join(absent)}): "
                       "run `make setup`, or as root: apt-get download libreswan && "
                       f"dpkg-deb -x libreswan_*.deb {base} && apt-get install "
                       f"{' '.join(text.LIBRARY_PACKAGES)}"
                       + ("\n" + describe_missing(lacking) if lacking else ""))
    if lacking:
        raise LabError(describe_missing(lacking))
    return Install(base)


class Client:
    """One libreswan road warrior: its state directory, its pluto, and whack against it."""

    def __init__(self, install: Install, spec: ClientSpec, state_dir: Path, wrap: Wrap) -> None:
        self.install, self.spec, self.dir, self.wrap = install, spec, state_dir, wrap
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ctl(self) -> Path:
        """pluto's control socket (whack's --ctlsocket)."""
        return self.dir / "run" / "pluto.ctl"

    @property
    def log_path(self) -> Path:
        """pluto's log file."""
        return self.dir / "pluto.log"

    @property
    def nss_dir(self) -> Path:
        """The NSS database (sql:) holding the CA and the client's certificate and key."""
        return self.dir / "nss"

    def prepare(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        """Write ipsec.conf and ipsec.secrets, and build the NSS database."""
        for d in (self.dir, self.dir / "run", self.nss_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        (self.dir / "ipsec.conf").write_text(text.ipsec_conf(
            self.spec, str(self.log_path), self.install.tool("_updown.xfrm")))
        (self.dir / "ipsec.secrets").write_text(text.SECRETS)
        self._nss(ca_pem, cert_pem, key_pem)

    def _nss(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        """A fresh NSS database: the CA trusted for peers, the client's key and certificate
        imported as PKCS#12 under the nickname spec.name (ipsec.conf's leftcert)."""
        db = f"sql:{self.nss_dir}"
        for f in self.nss_dir.iterdir():
            f.unlink()
        _run(["certutil", "-N", "-d", db, "--empty-password"])
        ca = self.dir / "ca.pem"
        ca.write_bytes(ca_pem)
        _run(["certutil", "-A", "-d", db, "-n", text.CA_NICKNAME, "-t", "CT,,", "-a",
              "-i", str(ca)])
        key = serialization.load_pem_private_key(key_pem, None)
        cert = x509.load_pem_x509_certificate(cert_pem)
        password = os.urandom(16).hex()
        blob = pkcs12.serialize_key_and_certificates(
            self.spec.name.encode(), key, cert, None,  # type: ignore[arg-type]
            serialization.BestAvailableEncryption(password.encode()))
        # the PKCS#12 file is encrypted, lives only while pk12util reads it, and its password
        # goes through a file in the 0700 directory, never the command line
        with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            p12, pw = Path(tmp) / "own.p12", Path(tmp) / "pw"
            p12.write_bytes(blob)
            pw.write_text(password)
            _run(["pk12util", "-i", str(p12), "-d", db, "-w", str(pw)])

    def start(self, timeout: float = 60) -> None:
        """Start pluto (no fork, its own log) and wait until its control socket answers."""
        self.ctl.unlink(missing_ok=True)
        (self.dir / "run" / "pluto.pid").unlink(missing_ok=True)
        argv = [self.install.tool("pluto"), "--nofork", "--config", str(self.dir / "ipsec.conf"),
                "--rundir", str(self.dir / "run"), "--nssdir", str(self.nss_dir),
                "--ipsecdir", str(self.dir), "--secretsfile", str(self.dir / "ipsec.secrets"),
                "--dumpdir", str(self.dir / "run"), "--logfile", str(self.log_path),
                "--no-dnssec"]
        # pluto runs /usr/libexec/ipsec/addconn itself (a path built in): it gets a private
        # mount namespace whose /usr/libexec is the unpacked package's
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _PRIVATE_LIBEXEC,
                "sh", str(self.install.root / "usr" / "libexec"), *argv]
        out = open(self.dir / "pluto.stderr", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.wrap(argv), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"pluto for {self.spec.name} exited ({self.proc.returncode}); "
                               f"see {self.log_path} and {self.dir / 'pluto.stderr'}")
            if self.ctl.exists() and self.whack(["--globalstatus"], check=False)[0] == 0:
                break
            time.sleep(POLL_S)
        else:
            raise LabError(f"pluto for {self.spec.name} did not answer on {self.ctl} within "
                           f"{timeout:.0f} s; see {self.log_path}")
        self._run_wrapped([self.install.tool("addconn"), "--ctlsocket", str(self.ctl),
                           "--config", str(self.dir / "ipsec.conf"), text.CONN])

    def whack(self, args: list[str], check: bool = True,
               timeout: float = 60) -> tuple[int, str]:
        """Run whack against this pluto; return (exit status, output)."""
        argv = [self.install.tool("whack"), "--ctlsocket", str(self.ctl), *args]
        res = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL,
                             timeout=timeout, check=False)
        out = (res.stdout + res.stderr).decode(errors="replace")
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed ({res.returncode}): {out.strip()[-800:]}")
        return res.returncode, out

    def _run_wrapped(self, argv: list[str]) -> str:
        """Run a libreswan tool in the client's namespace."""
        return _run(self.wrap(argv))

    def status(self) -> Status:
        """The connection's IKE SA and CHILD SA as whack shows them."""
        _, states = self.whack(["--showstates"])
        _, traffic = self.whack(["--trafficstatus"])
        return text.status(states, traffic, text.CONN)

    def wait_for(self, ok: Callable[[Status], bool], timeout: float) -> Status | None:
        """Poll status() until ok(status) or timeout; the last status, or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if ok(st):
                return st
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)

    def up(self, timeout: float = 60) -> Status:
        """Initiate the connection and wait until its IKE SA and CHILD SA are established."""
        self.whack(["--initiate", "--name", text.CONN, "--asynchronous"])
        st = self.wait_for(lambda s: s.established, timeout)
        if st is None:
            raise LabError(f"libreswan client {self.spec.name}: {text.CONN} not established "
                           f"within {timeout:.0f} s; see {self.log_path}")
        return st

    def _rekey(self, flag: str, view: Callable[[Status], tuple[object, ...]],
               timeout: float) -> dict[str, object]:
        """whack --rekey-ike/--rekey-ipsec; ok when view() is new and holds nothing old."""
        before = view(self.status())
        t0 = time.monotonic()
        result: dict[str, object] = {"ok": False, "before": list(before), "after": list(before),
                                     "ms": None, "error": None}
        if not before:
            return {**result, "error": f"no established {text.CONN} on {self.spec.name}"}
        rc, out = self.whack([flag, "--name", text.CONN, "--asynchronous"], check=False)
        if rc != 0:
            return {**result, "error": f"whack {flag} failed ({rc}): {out.strip()[-300:]}"}
        st = self.wait_for(lambda s: bool(view(s)) and not set(view(s)) & set(before), timeout)
        if st is None:
            return {**result, "after": list(view(self.status())),
                    "error": f"not replaced within {timeout:g} s"}
        return {**result, "ok": True, "after": list(view(st)),
                "ms": round((time.monotonic() - t0) * 1000, 1)}

    def rekey_ike(self, timeout: float = 30) -> dict[str, object]:
        """Rekey the IKE SA (CREATE_CHILD_SA); {"ok", "before", "after" (IKE SA serials), ...}."""
        return self._rekey("--rekey-ike", lambda s: s.ike_sas, timeout)

    def rekey_child(self, timeout: float = 30) -> dict[str, object]:
        """Rekey the CHILD SA; {"ok", "before", "after" (ESP SPI pairs), "ms", "error"}."""
        return self._rekey("--rekey-ipsec", lambda s: s.esp_spis, timeout)

    def log_text(self, offset: int = 0) -> str:
        """pluto's log from byte `offset` (libreswan_text.events() reads it)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_offset(self) -> int:
        """The log's current size, to read only what comes after."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def stop(self, grace: float = 5.0) -> None:
        """Shut pluto down (deleting its SAs), killing it if it does not end in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(LabError, OSError, subprocess.SubprocessError):
                self.whack(["--shutdown"], check=False, timeout=grace)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None


def _run(argv: list[str], timeout: float = 60) -> str:
    """Run a command; raise LabError with its output when it fails."""
    res = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout,
                         check=False)
    if res.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({res.returncode}): "
                       f"{(res.stdout + res.stderr).decode(errors='replace').strip()[-800:]}")
    return res.stdout.decode(errors="replace")
