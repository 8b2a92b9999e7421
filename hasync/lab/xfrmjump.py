"""Lab tool, run inside a gateway's network namespace: read every outbound ESP SA's replay
state over XFRM netlink (GETAE) and move its outbound sequence number forward by JUMP
(NEWAE + NLM_F_REPLACE), printing before and after as JSON.

Rules: `python -m hasync.lab.xfrmjump SRC JUMP`; touches only SAs whose source is SRC; the
whole replay state is written back as read, with only oseq changed (xfrm_new_ae() copies
all of it); it prints no key material (hasync.xfrm keeps none).
"""

from __future__ import annotations

import dataclasses
import json
import sys

from ..xfrm.socket import XfrmSocket


def jump_all(src: str, jump: int) -> list[dict[str, object]]:
    """Jump every SA from `src`; return what GETAE said before and after."""
    out: list[dict[str, object]] = []
    with XfrmSocket() as xs:
        for sa in xs.dump_sas():
            if str(sa.saddr) != src:
                continue
            dst, spi = sa.id.daddr, sa.id.spi
            before = xs.get_replay(dst, spi)
            if before.replay_esn is not None:
                st = before.replay_esn
                new = st.oseq64 + jump
                xs.set_replay_esn(dst, spi, state=dataclasses.replace(
                    st, oseq=new & 0xFFFFFFFF, oseq_hi=new >> 32))
                old = st.oseq64
            else:
                assert before.replay is not None
                r = before.replay
                xs.set_replay(dst, spi, seq=r.seq, oseq=r.oseq + jump, bitmap=r.bitmap)
                old = r.oseq
            after = xs.get_replay(dst, spi)
            now = after.replay_esn.oseq64 if after.replay_esn else after.replay.oseq  # type: ignore[union-attr]
            out.append({"spi": f"{spi:08x}", "dst": str(dst), "esn": before.replay_esn is not None,
                        "encap": sa.encap is not None, "oseq_before": old, "oseq_after": now})
    return out


def main(argv: list[str]) -> int:
    """Print the jumps as JSON."""
    print(json.dumps(jump_all(argv[0], int(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
