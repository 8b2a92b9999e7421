"""Entry point inside the lab VM: load the modules, run the scenario, write the result.

Rules: run as `python -m hasync_lab.inside SPEC RESULT`; always writes RESULT (the result,
or {"error": ...}) and powers the VM off, so the host never waits for a hung guest.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import traceback
from pathlib import Path

from .runner import run_native, spec_from_dict

MODULES = ["esp4", "esp6", "xfrm_user", "xfrm_algo", "gcm", "chacha20poly1305", "veth", "bridge",
           "nf_tables", "nft_nat", "nft_masq", "nft_chain_nat"]
# Every namespace of the lab shares this kernel's per-CPU receive backlog, which a network of
# separate hosts never does: 1000 flows sending in step overflowed the default 1000 packets.
SYSCTLS = {"net.core.netdev_max_backlog": "100000"}


def main(argv: list[str]) -> int:
    """Run the lab inside the VM."""
    logging.basicConfig(level=logging.INFO, format="[vm %(relativeCreated)7.0f ms] %(message)s",
                        stream=sys.stdout)
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    rc = 1
    try:
        subprocess.run(["modprobe", "-a", *MODULES], check=False)
        for key, value in SYSCTLS.items():  # the VM is ours alone: never the host's sysctls
            Path("/proc/sys", *key.split(".")).write_text(value)
        job = json.loads(spec_path.read_text())
        result = run_native(job["task"], spec_from_dict(job["spec"]), result_path.parent)
        result["runner"] = "vm"
        rc = 0
    except BaseException as e:  # the host must always learn why
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    result_path.write_text(json.dumps(result, indent=1))
    sys.stdout.flush()
    subprocess.run(["poweroff", "-f"], check=False)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
