"""A recording HA peer for golden vectors: bind where charon's ha plugin sends (its `remote`),
write every datagram as `<monotonic time> <hex>` to a log, answer nothing.

Rules: run as `python -m hasync_lab.harecord BIND_IP PORT LOG`; lab use only (it keeps the
datagrams, secrets included, in clear); exits on SIGTERM after a final flush.
"""

from __future__ import annotations

import signal
import socket
import sys
import time


def main(argv: list[str]) -> int:
    """Record datagrams until SIGTERM."""
    ip, port, path = argv[0], int(argv[1]), argv[2]
    stop = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    sock.settimeout(0.2)
    with open(path, "w") as log:
        while not stop:
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                continue
            log.write(f"{time.monotonic():.6f} {data.hex()}\n")
            log.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
