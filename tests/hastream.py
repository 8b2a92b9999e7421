"""Recorded HA streams for tests: the charon-captured tunnel of tests/data/ha/v3_smoke.txt,
cloned into many tunnels with their own SPIs and their own random nonces and DH secrets.

Rules: test helper only; every cloned datagram is built with the codec from a real charon's
datagram, changing only SPIs and secrets, so the stream has charon's exact shape.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from pathlib import Path

from hasync.ha import Attribute, HaMessage, IkeSaId, decode, encode

GOLDEN = Path(__file__).parent / "data" / "ha" / "v3_smoke.txt"
TUNNEL = ("ike_add", "ike_mid_responder", "ike_update", "child_add")


def golden() -> dict[str, bytes]:
    """The golden datagrams by name."""
    out = {}
    for line in GOLDEN.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, hexdata = line.split()
            out[name] = bytes.fromhex(hexdata)
    return out


@dataclass(frozen=True)
class Stream:
    """Datagrams in send order, the secrets they carry, and the tunnels they make."""

    datagrams: list[bytes]
    secrets: list[bytes]  # nonces and DH secrets, each unique to this stream
    ike_spis: set[tuple[int, int]]
    child_spis: set[int]  # inbound_spi wire values


def _swap(msg: HaMessage, values: dict[str, object]) -> HaMessage:
    attrs = tuple(Attribute(a.name, values[a.name]) if a.name in values else a
                  for a in msg.attributes)
    return dataclasses.replace(msg, attributes=attrs)


def tunnels(n: int, seed: int = 1) -> Stream:
    """A stream of `n` tunnels, each IKE_ADD, IKE_MID_RESPONDER, IKE_UPDATE, CHILD_ADD."""
    rng = random.Random(seed)
    g = {k: decode(v) for k, v in golden().items()}
    out, secrets, ikes, kids = [], [], set(), set()
    for _ in range(n):
        spi_i, spi_r = rng.getrandbits(64) | 1, rng.getrandbits(64) | 1
        ike_id = IkeSaId(2, spi_i, spi_r, False)
        ni, nr, dh = os.urandom(32), os.urandom(32), os.urandom(32)
        spi_in, spi_out = rng.getrandbits(32) | 1, rng.getrandbits(32) | 1
        common: dict[str, object] = {"ike_id": ike_id, "nonce_i": ni, "nonce_r": nr}
        for name in TUNNEL:
            extra: dict[str, object] = {"secret": dh} if name == "ike_add" else {}
            if name == "child_add":
                extra = {"inbound_spi": spi_in, "outbound_spi": spi_out}
            out.append(encode(_swap(g[name], {**common, **extra})))
        secrets += [ni, nr, dh]
        ikes.add((spi_i, spi_r))
        kids.add(spi_in)
    return Stream(out, secrets, ikes, kids)
