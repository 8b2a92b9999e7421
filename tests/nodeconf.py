"""A minimal hasync.toml for tests that start the CLI or a fake daemon on loopback."""

from __future__ import annotations

from pathlib import Path


def write_config(tmp: Path, key: Path | None = None, extra: str = "") -> Path:
    """Write node gw1's config under `tmp` (state, control socket, key there) plus `extra`."""
    cfg = tmp / "hasync.toml"
    cfg.write_text(f"""[node]
name = "gw1"
state_dir = "{tmp / 'state'}"
control_socket = "{tmp / 'run' / 'control.sock'}"
[cluster]
key_file = "{key or tmp / 'cluster.key'}"
bind = "127.0.0.1:47011"
peers = ["127.0.0.1:47012"]
{extra}
""")
    return cfg
