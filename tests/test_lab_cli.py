"""`hasync lab` refuses clearly when it cannot run: not root, a package missing, bad input.

These run the real command; they need no VM, and they check that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hasync_lab import cli, prereq, runner
from hasync_lab.session import spec_dict

HASYNC = [sys.executable, "-m", "hasync"]


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _run(argv: list[str], env: dict[str, str] | None = None,
         pre: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(pre or []), *HASYNC, *argv], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)


def test_missing_lists_packages() -> None:
    needs = prereq.COMMON + prereq.VM
    gone = prereq.missing(needs, which=lambda n: None if n == "keepalived" else "/x",
                          exists=lambda p: "ha.so" not in p)
    assert [n.what for n in gone] == ["keepalived", "/usr/lib/ipsec/plugins/libstrongswan-ha.so"]
    msg = prereq.describe_missing(gone)
    assert "apt-get install keepalived libcharon-extra-plugins" in msg


def test_describe_missing_names_pypi_packages() -> None:
    msg = prereq.describe_missing([prereq.Need("vng", "virtme-ng", "pypi")])
    assert "pip install virtme-ng" in msg


def test_an_unknown_fault_is_refused() -> None:
    res = _run(["lab", "failover", "--fault", "meteor"])
    assert res.returncode == 2 and "charon" in res.stderr  # argparse lists the faults
    assert "Traceback" not in res.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to drop to an unprivileged user")
def test_not_root_says_so_and_leaves_nothing() -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {**os.environ, "HOME": "/tmp"}
    probe = subprocess.run([*nobody, sys.executable, "-c", "import hasync"], env=env,
                           capture_output=True, cwd=Path(__file__).resolve().parent.parent)
    if probe.returncode != 0:  # a checkout in a directory only root may enter
        pytest.skip("an unprivileged user cannot read this checkout or its interpreter")
    before = _netns()
    res = _run(["lab", "failover", "--baseline"], pre=nobody, env=env)
    assert res.returncode == 2, res.stderr
    assert "needs root" in res.stderr and "Traceback" not in res.stderr
    assert _netns() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes before the package check")
def test_missing_package_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    # a PATH holding every tool the lab needs but keepalived
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for need in prereq.COMMON + prereq.VM:
        found = shutil.which(need.what) if need.kind == "command" else None
        if found and need.what != "keepalived":
            (bindir / need.what).symlink_to(found)
    before = _netns()
    res = _run(["lab", "failover", "--baseline"], env={**os.environ, "PATH": str(bindir)})
    assert res.returncode == 2, res.stderr
    assert "keepalived: from Debian package keepalived" in res.stderr
    assert "apt-get install keepalived" in res.stderr
    assert _netns() == before


def test_bad_sizes_are_refused() -> None:
    res = _run(["lab", "failover", "--baseline", "--gateways", "9"])
    assert res.returncode == 2 and "gateways must be 2 to 5" in res.stderr


@pytest.mark.parametrize(("argv", "out"), [
    (["failover"], "out/lab"), (["mirror"], "out/mirror"), (["xfrm-check"], "out/xfrm"),
    (["capture-ha", "--json", "v.json"], "out/capture"),
])
def test_every_lab_run_takes_runner_json_and_out(argv: list[str], out: str) -> None:
    a = cli.parser().parse_args([*argv, "--runner", "native"])
    assert a.runner == "native" and a.out == Path(out)
    assert a.json == (Path("v.json") if argv[0] == "capture-ha" else None)


def test_hasync_lab_alone_names_itself_in_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["failover", "--baseline", "--gateways", "9"]) == 2
    assert capsys.readouterr().err.startswith("hasync-lab: gateways must be 2 to 5")


def test_proposals_and_leases_make_a_spec_and_bad_ones_are_refused() -> None:
    a = cli.parser().parse_args(["failover", "--proposals", "aes128gcm, chacha20,aes256cbc",
                                 "--leases"])
    spec = cli.spec_of(a)
    assert spec.proposals == ("aes128gcm", "chacha20", "aes256cbc") and spec.leases
    assert [spec.cipher_of(i) for i in range(4)] == ["aes128gcm", "chacha20", "aes256cbc",
                                                     "aes256gcm"]
    for argv, msg in ((["--proposals", "des"], "--proposals"),
                      (["--proposals", "aes128gcm,aes128gcm,aes128gcm,aes128gcm"], "per client"),
                      (["--leases", "--tunnels", "4"], "--leases")):
        with pytest.raises(cli.LabError, match=msg):
            cli.spec_of(cli.parser().parse_args(["failover", *argv]))


def test_a_spec_with_proposals_survives_its_trip_to_the_vm() -> None:
    spec = cli.spec_of(cli.parser().parse_args(["failover", "--proposals", "chacha20"]))
    back = runner.spec_from_dict(json.loads(json.dumps(spec_dict(spec))))
    assert back == spec and back.proposals == ("chacha20",)


def test_client_impl_makes_a_spec_and_a_libreswan_client_never_drives_charon_s_roles() -> None:
    spec = cli.spec_of(cli.parser().parse_args(["failover", "--client-impl", ",,libreswan"]))
    assert spec.client_impl == ("strongswan", "strongswan", "libreswan")
    back = runner.spec_from_dict(json.loads(json.dumps(spec_dict(spec))))
    assert back == spec
    for argv, msg in ((["--client-impl", "racoon"], "--client-impl takes"),
                      (["--client-impl", "strongswan,strongswan,strongswan,libreswan"],
                       "per client"),
                      (["--client-impl", "libreswan", "--inflight", "child-rekey"], "c1 is"),
                      (["--client-impl", "libreswan", "--ipv6"], "c1 is"),
                      (["--client-impl", ",libreswan", "--mobike", "c2"], "c2 is a --mobike"),
                      (["--client-impl", ",libreswan", "--leases"], "c2 is --leases"),
                      (["--client-impl", ",,libreswan", "--tunnels", "6"], "--tunnels")):
        with pytest.raises(cli.LabError, match=msg):
            cli.spec_of(cli.parser().parse_args(["failover", *argv]))


def test_matrix_stands_for_the_matrix_options_and_given_ones_win() -> None:
    spec = cli.spec_of(cli.parser().parse_args(cli.with_matrix(["failover", "--matrix"])))
    assert (spec.clients, spec.failovers, spec.faults, spec.inflight, spec.route_based) == (
        4, 3, ("kill", "kill", "charon"), "child-rekey", "xfrmi")
    assert spec.proposals == ("aes128gcm", "aes256cbc", "chacha20", "aes256gcm")
    assert spec.mobike == ("c2",) and spec.ipv6 and spec.leases and spec.lease_client == "c3"
    assert spec.client_impl == ("strongswan",) * 3 + ("libreswan",) and spec.nat_clients == 1
    argv = cli.with_matrix(["failover", "--route-based", "vti", "--matrix", "--mobike", "",
                            "--lease-client", "c2"])
    with pytest.raises(cli.LabError, match="--ipv6"):  # the matrix's --ipv6 needs xfrmi
        cli.spec_of(cli.parser().parse_args(argv))
    argv = cli.with_matrix(["failover", "--matrix", "--mobike", "", "--lease-client", "c2"])
    spec = cli.spec_of(cli.parser().parse_args(argv))
    assert spec.lease_client == "c2" and spec.mobike == () and spec.failovers == 3
    assert cli.with_matrix(["failover", "--leases"]) == ["failover", "--leases"]
    with pytest.raises(cli.LabError, match="c2 carries"):  # the lease client cannot roam
        cli.spec_of(cli.parser().parse_args(["failover", "--leases", "--mobike", "c2"]))
    with pytest.raises(cli.LabError, match="--lease-client"):
        cli.spec_of(cli.parser().parse_args(["failover", "--leases", "--lease-client", "c9"]))
