"""The send fence as nftables text: permits as intervals, scripts for `nft -f -`, and the
counters read back from `nft -j` (pure: no IO, no clock).

Rules:
- One table, `inet hasync_fence`, a base chain on the `output` hook (XFRM's ESP packets traverse
  LOCAL_OUT: torvalds/linux net/ipv4/xfrm4_output.c, xfrm_output_resume -> dst_output after
  nf_hook NF_INET_LOCAL_OUT; checked in the VM, ../shared/notes/FACTS.md). Another table's
  `accept` cannot bypass it: every base chain on the hook sees the packet.
- An outbound ESP packet (`meta l4proto esp`, SPI and sequence number at @th,0,32 / @th,32,32,
  RFC 4303 section 2) or ESP-in-UDP (`udp sport <natt_port>`, non-zero marker, SPI and sequence
  number at @th,64,32 / @th,96,32, RFC 3948 section 2.2) of a permitted SA jumps, through a
  hash verdict map keyed (outer daddr, SPI) (`go4`/`go6`, `ugo4`/`ugo6` for UDP), to the SA's
  own chain (`p_<addr>_<spi>`, `u_<addr>_<spi>`), which accepts only the permitted low-32
  sequence numbers (one `@th,32,32 a-b accept` rule per interval). Every other such packet is
  dropped, counted by its (daddr, SPI) element in `sa4`/`sa6` (a per-element counter) when this
  process ever granted that SA a permit, else by its protocol's element (esp, udp) of the set
  `unknown`, then dropped whatever it is. `unknown` is a counter set, not a named counter
  (D278): nft lists a set from a small cache, but any counter object only after loading every
  chain and rule of the table (0.6 s at 10k SAs, each time the counts are read).
- UDP from the NAT-T port with a zero marker (IKE, RFC 3948 section 2.2) or shorter than the
  marker (a 1-byte NAT keepalive, section 2.3: nft_payload_eval breaks the rule when the load
  runs past the packet, net/netfilter/nft_payload.c) is left alone.
- A permit (lo, hi] becomes inclusive intervals of low-32 sequence numbers: non-ESN one,
  clamped to 1..2^32-1 (RFC 4303 3.3.3: 0 is never sent, 2^32-1 is the last); ESN: the window
  is trimmed to its top 2^31 numbers, then one or two intervals (it may wrap past 2^32-1).
- Only ESP SAs (IPPROTO_ESP) are fenced; a permit for any other protocol is not installed.
- Setup replaces the table whole in one transaction (add, delete, create: idempotent, no
  moment without the rules) and so starts with no permit. Grant and forget scripts do not
  depend on the book being right: chains and elements are added before they are flushed or
  deleted (`add` of what exists is no error). The book only lets a grant skip an SA whose
  permit is unchanged and linked; what a failed script touched is dropped from the book.
- A gate stands in front of the verdict maps (D265): both ESP chains first jump to `gate_plain`
  / `gate_udp`, which, shut, drop and count every ESP packet (per SA as above) and, open, are
  empty. Setup and `revoke_all` only shut it: one short transaction whatever the SA count;
  links, chains and counters stay. While the book knows the gate is shut (`FenceBook.opened`
  False), a backup fills and links its standby permits behind it (`plan_prepare`). The grant
  that opens the gate unlinks, in the same transaction, every SA the book has linked or
  doubts (a script about it failed) that it does not permit, rewrites the chains whose
  permit moved and opens the gate: once open, exactly that grant's permits are in force.
- Standby links and the opening grant add no counter elements (a backup's counts would list
  them all); `plan_count` adds those of linked SAs, while the gate is open, in the grant's
  next transaction, or (a promotion's first grant, D266) at the next grant or count.

Why per-SA chains and not one interval set keyed (daddr, SPI, seq) (tried first): nft's
concatenated interval sets (pipapo, net/netfilter/nft_set_pipapo.c) rebuild their lookup
tables per change and per element count, and measured here a grant moving 1000 SAs took 0.94 s
and one moving 20000 did not finish in 120 s of kernel time; packets/s fell to a quarter with
1000 elements. Hash maps and per-SA chains: 20000 moved in 0.83 s.

nft 1.0.6 (Debian 12) accepts `typeof` with raw payloads in sets and verdict maps, but its
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
GATES = {"gate_plain": "@th,0,32", "gate_udp": "@th,64,32"}  # gate chain -> where its SPI is
CHAINS = (("esp_plain", "go"), ("esp_udp", "ugo"))  # ESP chain -> its verdict maps' prefix

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


def chain_names(key: SaKey) -> tuple[str, str]:
    """The SA's two chains: plain ESP (`p_`) and ESP in UDP (`u_`), named by address and SPI."""
    tag = f"{ip_address(key[0]).packed.hex()}_{key[1]:08x}"
    return f"p_{tag}", f"u_{tag}"


def _table_block(natt_port: int) -> str:
    """The whole table: maps, counter sets (`unknown` among them) and the chains."""
    lines = [f"table {FAMILY} {TABLE} {{",
             "  set unknown { type inet_proto; counter; elements = { esp, udp }; }"]
    for f, ip in ((4, "ip"), (6, "ip6")):
        lines += [f"  map go{f} {{ typeof {ip} daddr . @th,0,32 : verdict; }}",
                  f"  map ugo{f} {{ typeof {ip} daddr . @th,64,32 : verdict; }}",
                  f"  set sa{f} {{ typeof {ip} daddr . @th,0,32; counter; }}"]
    lines += ["  chain out {",
              "    type filter hook output priority filter; policy accept;",
              "    meta l4proto esp jump esp_plain",
              f"    meta l4proto udp udp sport {natt_port} @th,64,32 != 0 jump esp_udp",
              "  }"]
    for gate, spi in GATES.items():
        lines += [f"  chain {gate} {{", *(f"    {rule}" for rule in _drops(spi)), "  }"]
    for (chain, go), (gate, spi) in zip(CHAINS, GATES.items(), strict=True):
        lines += [f"  chain {chain} {{",
                  f"    jump {gate}",
                  f"    ip daddr . {spi} vmap @{go}4",
                  f"    ip6 daddr . {spi} vmap @{go}6",
                  *(f"    {rule}" for rule in _drops(spi)),
                  "  }"]
    return "\n".join([*lines, "}", ""])


def _drops(spi: str) -> list[str]:
    """Drop an ESP packet, counted by its SA's element if it has one, else in `unknown` by its
    protocol (the chains see only ESP and UDP); the last rule drops whatever is left."""
    return [f"ip daddr . {spi} @sa4 drop", f"ip6 daddr . {spi} @sa6 drop",
            "meta l4proto @unknown drop", "drop"]


def gate_lines(shut: bool) -> list[str]:
    """Commands that shut the gate (every ESP packet dropped before the maps) or open it."""
    t = f"{FAMILY} {TABLE}"
    out = [f"flush chain {t} {gate}" for gate in GATES]
    if shut:
        out += [f"add rule {t} {gate} {rule}" for gate, spi in GATES.items()
                for rule in _drops(spi)]
    return out


def setup_script(natt_port: int = NATT_PORT) -> str:
    """Replace the fence table whole: the rules, no permits, zeroed counters."""
    if not 0 < natt_port < 65536:
        raise ValueError(f"natt_port {natt_port} is not a UDP port")
    return (f"add table {FAMILY} {TABLE}\n"
            f"delete table {FAMILY} {TABLE}\n" + _table_block(natt_port))


def revoke_script() -> str:
    """Shut the gate: no SA reaches its chain (links, chains and counters stay)."""
    return "\n".join(gate_lines(shut=True)) + "\n"


def _sa_elements(key: SaKey) -> list[tuple[str, str]]:
    """(set or map, element) of one SA: its two links and its counter."""
    f, item = family(key), f"{_addr(key)} . {key[1]}"
    p, u = chain_names(key)
    return [(f"go{f}", f"{item} : jump {p}"), (f"ugo{f}", f"{item} : jump {u}"), (f"sa{f}", item)]


def _chains(key: SaKey, ivs: tuple[Interval, ...]) -> list[str]:
    """Create-if-missing, flush and refill the SA's chains (unreachable until linked)."""
    t = f"{FAMILY} {TABLE}"
    p, u = chain_names(key)
    out = [f"add chain {t} {p}", f"add chain {t} {u}", f"flush chain {t} {p}",
           f"flush chain {t} {u}"]
    for a, b in ivs:
        out += [f"add rule {t} {p} @th,32,32 {a}-{b} accept",
                f"add rule {t} {u} @th,96,32 {a}-{b} accept"]
    return out


def _grouped(verb: str, elements: Iterable[tuple[str, str]]) -> list[str]:
    """One `verb element` command per map or set (nft parses one long element list far faster
    than a command per element)."""
    t = f"{FAMILY} {TABLE}"
    by_set: dict[str, list[str]] = {}
    for name, item in elements:
        by_set.setdefault(name, []).append(item)
    return [f"{verb} element {t} {name} {{ {', '.join(items)} }}"
            for name, items in by_set.items()]


def _links(keys: Iterable[SaKey], counts: bool = False) -> list[str]:
    """Link the SAs' chains in the verdict maps (with `counts`: their counter elements only)."""
    return _grouped("add", [(n, i) for key in keys for n, i in _sa_elements(key)
                            if n.startswith("sa") == counts])


def _unlinks(keys: Iterable[SaKey], sure: bool) -> list[str]:
    """Delete the SAs' links; those not `sure`ly linked are added first (with their chains),
    so that the delete cannot fail on a missing element."""
    keys = list(keys)
    links = [(n, i) for key in keys for n, i in _sa_elements(key) if not n.startswith("sa")]
    t = f"{FAMILY} {TABLE}"
    out = [] if sure else [f"add chain {t} {c}" for key in keys for c in chain_names(key)]
    out += [] if sure else _grouped("add", links)
    return out + _grouped("delete", [(n, i.split(" : ")[0]) for n, i in links])


def _esp(permits: Iterable[Permit]) -> dict[SaKey, tuple[Interval, ...]]:
    """The intervals of each ESP SA's permit (other protocols are not fenced): `intervals`,
    its common case inline (a promotion's grant passes over every SA, D278)."""
    out = {}
    for p in permits:
        key, lo, hi, esn = p
        if key[2] != IPPROTO_ESP:
            continue
        if esn or lo < 0 or hi >= U32:
            out[key] = intervals(p)
        else:  # non-ESN within 32 bits: (lo, hi] is the one interval lo+1..hi, or none
            out[key] = ((lo + 1, hi),) if lo < hi else ()
    return out


def _script(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


@dataclass
class FenceBook:
    """What this process knows the kernel holds: intervals per SA chain, SAs linked in the
    verdict maps, SAs with a counter element, SAs a failed script touched (`doubt`: maybe
    linked, chains unknown) and whether the gate is open (None: unknown). A key missing from
    `installed` or `linked` is unknown, and a grant rewrites it."""

    installed: dict[SaKey, tuple[Interval, ...]] = field(default_factory=dict)
    linked: set[SaKey] = field(default_factory=set)
    counted: set[SaKey] = field(default_factory=set)
    doubt: set[SaKey] = field(default_factory=set)
    opened: bool | None = False

    def unsure(self, keys: Iterable[SaKey], gate: bool = False) -> None:
        """A script about `keys` (and the gate, if `gate`) failed or timed out: forget what the
        book says of them."""
        for key in keys:
            self.installed.pop(key, None)
            self.linked.discard(key)
            self.doubt.add(key)
        if gate:
            self.opened = None

    def copy(self) -> FenceBook:
        return FenceBook(dict(self.installed), set(self.linked), set(self.counted),
                         set(self.doubt), self.opened)


@dataclass(frozen=True)
class Plan:
    """A script, the SAs it touches, whether it touches the gate, and the book as it will be
    once the kernel took it."""

    script: str
    book: FenceBook
    keys: frozenset[SaKey] = frozenset()
    gate: bool = False


def _fill(book: FenceBook, wanted: dict[SaKey, tuple[Interval, ...]]
          ) -> tuple[list[str], list[SaKey]]:
    """Lines rewriting the chains whose permit moved or is unknown, and the SAs to link: those
    and the SAs not surely linked (every SA the lines touch)."""
    installed, linked = book.installed, book.linked
    rewrite = {k: v for k, v in wanted.items() if installed.get(k) != v}
    link = [k for k in wanted if k in rewrite or k not in linked]
    return [line for k, v in rewrite.items() for line in _chains(k, v)], link


def plan_grant(book: FenceBook, permits: Iterable[Permit]) -> Plan:
    """Rewrite the chains of each permitted SA whose permit changed and link those not linked.
    With the gate not surely open, this grant opens it, in the same transaction unlinking
    every other SA linked or in doubt: then exactly these permits are in force (D265)."""
    wanted = _esp(permits)
    keys = wanted.keys()  # a set view: no copy of the keys per use
    lines, link = _fill(book, wanted)
    new = book.copy()
    new.installed.update(wanted)
    new.doubt.difference_update(keys)
    if book.opened is True:
        new.linked.update(keys)
        return Plan(_script(lines + _links(link)), new, frozenset(link))
    sure = sorted(book.linked - keys)
    doubted = sorted(book.doubt - keys - book.linked)
    lines = [*_unlinks(sure, True), *_unlinks(doubted, False), *lines, *_links(link),
             *gate_lines(shut=False)]
    new.linked, new.doubt, new.opened = set(keys), set(), True
    return Plan(_script(lines), new, frozenset({*link, *sure, *doubted}), gate=True)


def plan_count(book: FenceBook) -> Plan:
    """Add the counter elements of linked SAs that have none, while the gate is open (after a
    grant, D265; a backup's standby links get none)."""
    missing = sorted(book.linked - book.counted) if book.opened is True else []
    new = book.copy()
    new.counted |= set(missing)
    return Plan(_script(_links(missing, counts=True)), new)


def plan_prepare(book: FenceBook, permits: Iterable[Permit]) -> Plan:
    """Behind the gate the book knows is shut, fill and link the SAs' chains with the permits
    given: what a backup would be granted if it claimed now (D262), so that grant only opens
    the gate. Nothing while the gate is open or unknown."""
    if book.opened is not False:
        return Plan("", book.copy())
    wanted = _esp(permits)
    lines, link = _fill(book, wanted)
    new = book.copy()
    new.installed.update(wanted)
    new.linked |= set(wanted)
    new.doubt -= set(wanted)
    return Plan(_script(lines + _links(link)), new, frozenset(link))


def plan_revoke(book: FenceBook) -> Plan:
    """Shut the gate; links, chains, counters and the book's intervals stay."""
    new = book.copy()
    new.opened = False
    return Plan(revoke_script(), new, gate=True)


def plan_forget(book: FenceBook, keys: Iterable[SaKey]) -> Plan:
    """Delete the SAs' links, counter elements and chains (whatever the book says of them)."""
    gone = sorted({k for k in keys if k[2] == IPPROTO_ESP})
    t = f"{FAMILY} {TABLE}"
    out: list[str] = []
    for key in gone:
        p, u = chain_names(key)
        elems = _sa_elements(key)
        out += [f"add chain {t} {p}", f"add chain {t} {u}"]
        out += [f"add element {t} {name} {{ {item} }}" for name, item in elems]
        out += [f"delete element {t} {name} {{ {item.split(' : ')[0]} }}" for name, item in elems]
        out += [f"flush chain {t} {p}", f"flush chain {t} {u}",
                f"delete chain {t} {p}", f"delete chain {t} {u}"]
    drop = set(gone)
    new = FenceBook({k: v for k, v in book.installed.items() if k not in drop},
                    book.linked - drop, book.counted - drop, book.doubt - drop, book.opened)
    return Plan(_script(out), new, frozenset(drop))


def counts_from_json(docs: Iterable[str], known: Mapping[tuple[str, int], SaKey]) -> FenceCounts:
    """FenceCounts from `nft -j list set` output (sa4, sa6 and unknown, whose elements add up).

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
            if "set" in item and item["set"].get("name") == "unknown":
                unknown = (unknown or 0) + sum(_elem_packets(e) for e in
                                               item["set"].get("elem", []))
            elif "set" in item and item["set"].get("name") in ("sa4", "sa6"):
                for elem in item["set"].get("elem", []):
                    addr, spi, packets = _set_counter(elem)
                    canon = (str(ip_address(addr)), spi)
                    per_sa[known.get(canon, (canon[0], spi, IPPROTO_ESP))] = packets
    if unknown is None:
        raise FenceParseError("nft -j output has no set 'unknown'")
    return FenceCounts(per_sa, unknown)


def _set_counter(elem: object) -> tuple[str, int, int]:
    """(address, SPI, packets) of one `sa4`/`sa6` element."""
    try:
        body = elem["elem"]  # type: ignore[index]
        addr, spi = body["val"]["concat"]
        return str(addr), _int(spi), _int(body["counter"]["packets"])
    except (KeyError, TypeError, ValueError) as e:
        raise FenceParseError(f"nft -j set element not understood: {elem!r}") from e


def _elem_packets(elem: object) -> int:
    """The packets of one `unknown` element."""
    try:
        return _int(elem["elem"]["counter"]["packets"])  # type: ignore[index]
    except (KeyError, TypeError) as e:
        raise FenceParseError(f"nft -j set element not understood: {elem!r}") from e


def _int(value: object) -> int:
    """A non-negative integer from nft JSON."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FenceParseError(f"nft -j value is not a count: {value!r}")
    return value
