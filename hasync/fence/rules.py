"""The send fence as nftables text: permits as intervals, scripts for `nft -f -`, and the
counters read back from `nft -j` (pure: no IO, no clock).

Rules:
- One table, `inet hasync_fence`, a base chain on the `output` hook (XFRM's ESP packets traverse
  LOCAL_OUT: torvalds/linux net/ipv4/xfrm4_output.c, xfrm_output_resume -> dst_output after
  nf_hook NF_INET_LOCAL_OUT; checked in the VM, ../shared/notes/FACTS.md). Another table's
  `accept` cannot bypass it: every base chain on the hook sees the packet.
- An outbound ESP packet (`meta l4proto esp`, SPI and sequence number at @th,0,32 / @th,32,32,
  RFC 4303 section 2) or ESP-in-UDP (`udp sport <natt_port>`, non-zero marker, SPI and sequence
  number at @th,64,32 / @th,96,32, RFC 3948 section 2.2) passes only if (outer daddr, SPI, low
  32 bits of seq) is in `permit4`/`permit6` (interval sets). Every other such packet is dropped,
  counted by its (daddr, SPI) element in `sa4`/`sa6` (a per-element counter) when this process
  ever granted that SA a permit, else by the named counter `unknown`.
- UDP from the NAT-T port with a zero marker (IKE, RFC 3948 section 2.2) or shorter than the
  marker (a 1-byte NAT keepalive, section 2.3: nft_payload_eval breaks the rule when the load
  runs past the packet, net/netfilter/nft_payload.c) is left alone.
- A permit (lo, hi] becomes inclusive intervals of low-32 sequence numbers: non-ESN one,
  clamped to 1..2^32-1 (RFC 4303 3.3.3: 0 is never sent, 2^32-1 is the last); ESN: the window
  is trimmed to its top 2^31 numbers, then one or two intervals (it may wrap past 2^32-1).
- Only ESP SAs (IPPROTO_ESP) are fenced; a permit for any other protocol is not installed.
- Setup replaces the table whole in one transaction (add, delete, create: idempotent, no
  moment without the rules) and so starts with no permit. A grant deletes exactly the elements
  the book says are installed and adds the new ones, in the same script; after a failed
  script the book is `dirty` and the next grant rebuilds the permit sets whole instead.

nft 1.0.6 (Debian 12) accepts `typeof` with raw payloads in concatenated interval sets, but its
grammar has no `typeof ... : counter` objref map, and a `type` map cannot name a raw 32-bit
payload (it is `integer`, which has no size: `type ipv4_addr . ipv4_addr : counter` is refused
with "datatype mismatch" against `ip daddr . @th,0,32`). So the per-SA counters are per-element
counters of a `typeof ip daddr . @th,0,32; counter;` set instead of named counter objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address

from ..guard.records import SaKey
from .port import FenceCounts, Permit

TABLE = "hasync_fence"
FAMILY = "inet"
IPPROTO_ESP = 50
U32 = 1 << 32
ESN_WIDTH = 1 << 31
NATT_PORT = 4500

Interval = tuple[int, int]  # inclusive low-32 sequence numbers


class FenceParseError(ValueError):
    """`nft -j` output that does not hold the fence's sets and counter."""


def intervals(permit: Permit) -> tuple[Interval, ...]:
    """The low-32 intervals (inclusive) that let exactly (lo, hi] through (ESN: its top 2^31)."""
    lo, hi = max(permit.lo, 0), permit.hi
    if hi <= lo:
        return ()
    if not permit.esn:
        first, last = lo + 1, min(hi, U32 - 1)
        return ((first, last),) if first <= last else ()
    lo = max(lo, hi - ESN_WIDTH)
    first, last = (lo + 1) % U32, hi % U32
    if first <= last:
        return ((first, last),)
    return ((first, U32 - 1), (0, last))


def permitted(permit: Permit, seq: int) -> bool:
    """Whether the fence lets `seq` (its low 32 bits, as on the wire) through under `permit`."""
    low = seq % U32
    return any(a <= low <= b for a, b in intervals(permit))


def family(key: SaKey) -> int:
    """4 or 6: the outer address family of the SA's destination."""
    return 6 if isinstance(ip_address(key[0]), IPv6Address) else 4


def _addr(key: SaKey) -> str:
    """The SA's destination as nft writes it."""
    return str(ip_address(key[0]))


def _table_block(natt_port: int) -> str:
    """The whole table: sets, the `unknown` counter and the chains (see the module rules)."""
    t = "@th,0,32 . @th,32,32"
    u = "@th,64,32 . @th,96,32"
    return f"""table {FAMILY} {TABLE} {{
  counter unknown {{ }}
  set permit4 {{ typeof ip daddr . {t}; flags interval; }}
  set permit6 {{ typeof ip6 daddr . {t}; flags interval; }}
  set sa4 {{ typeof ip daddr . @th,0,32; counter; }}
  set sa6 {{ typeof ip6 daddr . @th,0,32; counter; }}
  chain out {{
    type filter hook output priority filter; policy accept;
    meta l4proto esp jump esp_plain
    meta l4proto udp udp sport {natt_port} @th,64,32 != 0 jump esp_udp
  }}
  chain esp_plain {{
    ip daddr . {t} @permit4 accept
    ip6 daddr . {t} @permit6 accept
    ip daddr . @th,0,32 @sa4 drop
    ip6 daddr . @th,0,32 @sa6 drop
    counter name unknown drop
  }}
  chain esp_udp {{
    ip daddr . {u} @permit4 accept
    ip6 daddr . {u} @permit6 accept
    ip daddr . @th,64,32 @sa4 drop
    ip6 daddr . @th,64,32 @sa6 drop
    counter name unknown drop
  }}
}}
"""


def setup_script(natt_port: int = NATT_PORT) -> str:
    """Replace the fence table whole: the rules, empty permit sets, zeroed counters."""
    if not 0 < natt_port < 65536:
        raise ValueError(f"natt_port {natt_port} is not a UDP port")
    return (f"add table {FAMILY} {TABLE}\n"
            f"delete table {FAMILY} {TABLE}\n" + _table_block(natt_port))


def revoke_script() -> str:
    """Flush both permit sets (the counters stay)."""
    return "".join(f"flush set {FAMILY} {TABLE} permit{f}\n" for f in (4, 6))


def _elements(verb: str, name: str, items: list[str]) -> str:
    """One `add/delete element` line for `items`, or nothing."""
    if not items:
        return ""
    return f"{verb} element {FAMILY} {TABLE} {name} {{ {', '.join(items)} }}\n"


def _permit_items(key: SaKey, ivs: Iterable[Interval]) -> list[str]:
    """The permit set elements of one SA."""
    return [f"{_addr(key)} . {key[1]} . {a}-{b}" for a, b in ivs]


@dataclass
class FenceBook:
    """What this process has installed: permit intervals per SA and the SAs with a counter."""

    installed: dict[SaKey, tuple[Interval, ...]] = field(default_factory=dict)
    counted: set[SaKey] = field(default_factory=set)
    dirty: bool = False


@dataclass(frozen=True)
class Plan:
    """A script and the book as it will be once the kernel has taken the script."""

    script: str
    book: FenceBook


def plan_grant(book: FenceBook, permits: Iterable[Permit]) -> Plan:
    """Replace each permitted SA's elements; a dirty book rebuilds the permit sets whole."""
    wanted = {p.key: intervals(p) for p in permits if p.key[2] == IPPROTO_ESP}
    installed = dict(book.installed)
    installed.update(wanted)
    installed = {k: v for k, v in installed.items() if v}
    counted = book.counted | set(wanted)
    dels: dict[int, list[str]] = {4: [], 6: []}
    adds: dict[int, list[str]] = {4: [], 6: []}
    new_counters: dict[int, list[str]] = {4: [], 6: []}
    if book.dirty:
        script = revoke_script()
        for key, ivs in installed.items():
            adds[family(key)] += _permit_items(key, ivs)
        fresh = counted
    else:
        script = ""
        for key, ivs in wanted.items():
            old = book.installed.get(key, ())
            if old == ivs:
                continue
            dels[family(key)] += _permit_items(key, old)
            adds[family(key)] += _permit_items(key, ivs)
        fresh = counted - book.counted
    for key in sorted(fresh):
        new_counters[family(key)].append(f"{_addr(key)} . {key[1]}")
    for f in (4, 6):
        script += _elements("delete", f"permit{f}", dels[f])
        script += _elements("add", f"permit{f}", adds[f])
        script += _elements("add", f"sa{f}", new_counters[f])
    return Plan(script, FenceBook(installed, counted))


def plan_revoke(book: FenceBook) -> Plan:
    """Flush the permits; the SAs keep their counters."""
    return Plan(revoke_script(), FenceBook({}, set(book.counted)))


def plan_forget(book: FenceBook, keys: Iterable[SaKey]) -> Plan:
    """Delete the SAs' permits and counter elements (a dirty book: counters only).

    A counter element is added before it is deleted, so the delete cannot fail on an element
    the kernel no longer holds (`add` of an existing element is no error, `create` would be)."""
    gone = set(keys)
    dels: dict[str, list[str]] = {n: [] for n in ("permit4", "permit6", "sa4", "sa6")}
    for key in sorted(gone & set(book.installed)):
        if not book.dirty:
            dels[f"permit{family(key)}"] += _permit_items(key, book.installed[key])
    for key in sorted(gone & book.counted):
        dels[f"sa{family(key)}"].append(f"{_addr(key)} . {key[1]}")
    script = "".join(_elements("add", n, dels[n]) for n in ("sa4", "sa6"))
    script += "".join(_elements("delete", n, items) for n, items in dels.items())
    installed = {k: v for k, v in book.installed.items() if k not in gone}
    return Plan(script, FenceBook(installed, book.counted - gone, book.dirty))


def counts_from_json(docs: Iterable[str], known: Mapping[tuple[str, int], SaKey]) -> FenceCounts:
    """FenceCounts from `nft -j list set` (sa4, sa6) and `nft -j list counter` (unknown) output.

    `known` maps (canonical address, SPI) to the key the guard uses; others get a key built
    from nft's address and IPPROTO_ESP."""
    per_sa: dict[SaKey, int] = {}
    unknown: int | None = None
    for doc in docs:
        try:
            items = json.loads(doc)["nftables"]
        except (ValueError, KeyError, TypeError) as e:
            raise FenceParseError(f"nft -j output is not nftables JSON: {e}") from e
        for item in items:
            if not isinstance(item, dict):
                raise FenceParseError(f"nft -j item is not an object: {item!r}")
            if "counter" in item and item["counter"].get("name") == "unknown":
                unknown = _int(item["counter"].get("packets"))
            elif "set" in item and item["set"].get("name") in ("sa4", "sa6"):
                for elem in item["set"].get("elem", []):
                    addr, spi, packets = _set_counter(elem)
                    canon = (str(ip_address(addr)), spi)
                    per_sa[known.get(canon, (canon[0], spi, IPPROTO_ESP))] = packets
    if unknown is None:
        raise FenceParseError("nft -j output has no counter 'unknown'")
    return FenceCounts(per_sa, unknown)


def _set_counter(elem: object) -> tuple[str, int, int]:
    """(address, SPI, packets) of one `sa4`/`sa6` element."""
    try:
        body = elem["elem"]  # type: ignore[index]
        addr, spi = body["val"]["concat"]
        return str(addr), _int(spi), _int(body["counter"]["packets"])
    except (KeyError, TypeError, ValueError) as e:
        raise FenceParseError(f"nft -j set element not understood: {elem!r}") from e


def _int(value: object) -> int:
    """A non-negative integer from nft JSON."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FenceParseError(f"nft -j value is not a count: {value!r}")
    return value
