"""The lab's network: gateways on a public LAN holding a virtual IP, a protected network with a
server behind them, road-warrior clients on the LAN and behind a NAT router.

Rules: `plan()` is pure (names, addresses, MACs); `build()` turns a plan into namespaces, veth
pairs and bridges and is the only function here that touches the system. Every name carries
the plan's prefix so teardown can find everything the lab made. Every interface gets an
explicit MAC (in the VM, veth pairs otherwise come up with identical ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

PUBLIC_VIP = "192.0.2.1"  # the address clients connect to; held by the VRRP master
PUBLIC_VIP6 = "2001:db8:2::1"  # the same over IPv6 (`ipv6_clients`): keepalived's excluded VIP
PRIVATE_VIP = "10.1.0.1"  # the protected network's gateway address; moves with PUBLIC_VIP
PROTECTED = "10.1.0.0/24"
SERVER_IP = "10.1.0.100"
NAT_OUTSIDE = "192.0.2.200"
POOL = "10.3.0.0/22"  # clients' virtual IPs: room for the benchmark's 1000 tunnels
# The gateways route the pool to an upstream router that is not there: without a CHILD_SA,
# traffic for a client's virtual IP goes nowhere. (An on-link route would deliver it in clear
# to the client, whose inbound policy use time then keeps charon's DPD from ever firing.)
UPSTREAM = "192.0.2.254"
# With `ipv6_clients`, the protected network and the pool have IPv6 twins (the IPv6 client's
# inner addresses: it asks for a virtual IP of each family, inner6.py); the gateways route the
# IPv6 pool to an upstream that is not there either.
PROTECTED6 = "fd00:1::/64"
SERVER_IP6 = "fd00:1::100"
PRIVATE_VIP6 = "fd00:1::1"  # moves with the others (keepalived's excluded VIPs)
POOL6 = "fd00:3::/112"  # as deploy/strongswan-ha.conf's rw_pool6
UPSTREAM6 = "2001:db8:2::254"


@dataclass(frozen=True)
class Iface:
    """One interface inside a node: its bridge in the root namespace, MAC and addresses."""

    name: str  # name inside the node's namespace
    bridge: str  # bridge the other end of the veth pair is enslaved to
    mac: str
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class Node:
    """One namespace of the lab."""

    name: str  # e.g. gw1, c1, nat, srv
    role: str  # gateway | client | server | nat
    ifaces: tuple[Iface, ...]
    routes: tuple[str, ...] = ()  # `ip route add` arguments
    forward: bool = False
    behind_nat: bool = False

    @property
    def address(self) -> str:
        """The node's first address without prefix length."""
        return self.ifaces[0].addrs[0].split("/")[0]

    @property
    def address6(self) -> str | None:
        """The node's IPv6 address on its first interface, if it has one."""
        six = [a.split("/")[0] for a in self.ifaces[0].addrs if ":" in a]
        return six[0] if six else None


@dataclass(frozen=True)
class Topology:
    """A whole lab network."""

    prefix: str
    nodes: tuple[Node, ...]
    bridges: tuple[str, ...]
    nat_rules: tuple[tuple[str, ...], ...] = field(default=())  # `nft` argument lists

    def ns(self, node: str) -> str:
        """The network namespace name of `node`."""
        return f"{self.prefix}-{node}"

    def node(self, name: str) -> Node:
        """Return the node called `name`."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def by_role(self, role: str) -> list[Node]:
        """Return the nodes with `role`, in plan order."""
        return [n for n in self.nodes if n.role == role]


def _mac(node_index: int, if_index: int, peer: bool) -> str:
    return f"02:48:{node_index:02x}:{if_index:02x}:{int(peer):02x}:01"


WITNESS_IP = "10.1.0.9"  # the witness: a Raft voter on the protected network, no VPN


def plan(gateways: int, clients: int, nat_clients: int = 1, prefix: str = "hl",
         witness: bool = False, ipv6_clients: int = 0) -> Topology:
    """Plan a lab with `gateways` gateways and `clients` clients, the last `nat_clients` NAT'd;
    with `witness`, a witness node (hasync alone) on the protected network; with
    `ipv6_clients`, the gateways and that many first clients (not NAT'd) also get an IPv6
    address on the public LAN, and those clients reach the VIP over IPv6 (PUBLIC_VIP6); the
    protected network is dual-stack then (PROTECTED6, SERVER_IP6 behind PRIVATE_VIP6) and the
    gateways route POOL6 as they route POOL."""
    if not 0 <= ipv6_clients <= clients - nat_clients:
        raise ValueError(f"ipv6 clients must be 0 to {clients - nat_clients} (not behind NAT)")
    if not 2 <= gateways <= 5:
        raise ValueError(f"gateways must be 2 to 5, not {gateways}")
    if not 1 <= clients <= 20 or not 0 <= nat_clients <= clients:
        raise ValueError(f"clients must be 1 to 20 with 0 to {clients} behind NAT")
    pub, priv, natin = f"{prefix}-pub", f"{prefix}-priv", f"{prefix}-natin"
    nodes: list[Node] = []
    for k in range(1, gateways + 1):
        i = len(nodes)
        nodes.append(Node(f"gw{k}", "gateway", (
            Iface("e0", pub, _mac(i, 0, False), (f"192.0.2.{10 + k}/24",
                                                 *_six(ipv6_clients, 10 + k))),
            Iface("e1", priv, _mac(i, 1, False), (f"10.1.0.{10 + k}/24",
                                                 *_inner6(ipv6_clients, 10 + k))),
        ), routes=(f"{POOL} via {UPSTREAM} dev e0",
                   *((f"{POOL6} via {UPSTREAM6} dev e0",) if ipv6_clients else ())),
            forward=True))
    if witness:
        nodes.append(Node("wit", "witness", (
            Iface("e0", priv, _mac(len(nodes), 0, False), (f"{WITNESS_IP}/24",)),)))
    nodes.append(Node("srv", "server", (
        Iface("e0", priv, _mac(len(nodes), 0, False), (f"{SERVER_IP}/24",
                                                       *_inner6(ipv6_clients, 100))),),
        routes=(f"default via {PRIVATE_VIP}",
                *((f"::/0 via {PRIVATE_VIP6}",) if ipv6_clients else ()))))
    if nat_clients:
        nodes.append(Node("nat", "nat", (
            Iface("e0", pub, _mac(len(nodes), 0, False), (f"{NAT_OUTSIDE}/24",)),
            Iface("e1", natin, _mac(len(nodes), 1, False), ("198.51.100.1/24",)),
        ), forward=True))
    for c in range(1, clients + 1):
        behind = c > clients - nat_clients
        i = len(nodes)
        if behind:
            iface = Iface("e0", natin, _mac(i, 0, False), (f"198.51.100.{1 + c}/24",))
            routes: tuple[str, ...] = ("default via 198.51.100.1",)
        else:
            iface = Iface("e0", pub, _mac(i, 0, False), (f"192.0.2.{100 + c}/24",
                                                         *_six(c <= ipv6_clients, 100 + c)))
            routes = ()
        nodes.append(Node(f"c{c}", "client", (iface,), routes=routes, behind_nat=behind))
    bridges = (pub, priv, natin) if nat_clients else (pub, priv)
    nat_rules = (("add", "table", "ip", "lab_nat"),
                 ("add", "chain", "ip", "lab_nat", "post",
                  "{ type nat hook postrouting priority 100 ; }"),
                 ("add", "rule", "ip", "lab_nat", "post", "oifname", "e0", "masquerade"))
    return Topology(prefix, tuple(nodes), bridges, nat_rules if nat_clients else ())


def _six(on: int | bool, host: int) -> tuple[str, ...]:
    """The public LAN's IPv6 address of `host`, if `on`."""
    return (f"2001:db8:2::{host}/64",) if on else ()


def _inner6(on: int | bool, host: int) -> tuple[str, ...]:
    """The protected network's IPv6 address of `host`, if `on`."""
    return (f"fd00:1::{host}/64",) if on else ()


Runner = Callable[[list[str], str | None], None]  # argv, standard input


def host_ifname(topo: Topology, node: str, j: int) -> str:
    """The root-namespace end (a bridge port) of interface `j` of `node` (as build_steps names
    it)."""
    idx = [n.name for n in topo.nodes].index(node)
    return f"{topo.prefix}{idx}-{j}"


def build_steps(topo: Topology) -> list[tuple[list[str], str | None]]:
    """The commands that build `topo`, batched: every `ip` process costs about a second under
    TCG, so one `ip -batch` makes the links and one per namespace configures it (`netns add`
    stays a command of its own: in a batch it would leave ip inside the new namespace)."""
    host = [f"link add {br} type bridge\nlink set {br} up" for br in topo.bridges]
    steps: list[tuple[list[str], str | None]] = [
        (["ip", "netns", "add", topo.ns(n.name)], None) for n in topo.nodes]
    inside: list[tuple[list[str], str | None]] = []
    for idx, node in enumerate(topo.nodes):
        ns, lines = topo.ns(node.name), ["link set lo up"]
        for j, ifc in enumerate(node.ifaces):
            h = host_ifname(topo, node.name, j)
            host.append(f"link add {h} address {_mac(idx, j, True)} type veth peer name "
                        f"{ifc.name} address {ifc.mac} netns {ns}")
            host.append(f"link set {h} master {ifc.bridge} up")
            # IPv6 without duplicate address detection: a tentative address cannot be used
            lines += [f"addr add {a} dev {ifc.name}" + (" nodad" if ":" in a else "")
                      for a in ifc.addrs]
            lines.append(f"link set {ifc.name} up")
        lines += [f"route add {r}" for r in node.routes]
        if node.role == "gateway":
            # charon's ha plugin talks from 127.0.0.1 to its peer at 127.0.0.2 (hasync)
            lines.append("addr add 127.0.0.2/8 dev lo")
        inside.append((["ip", "-n", ns, "-batch", "-"], "\n".join(lines) + "\n"))
        if node.forward:  # and IPv6 where the node has an IPv6 address
            six = any(":" in a for ifc in node.ifaces for a in ifc.addrs)
            inside.append((["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                            "net.ipv4.ip_forward=1",
                            *(["net.ipv6.conf.all.forwarding=1"] if six else [])], None))
        if node.role == "nat":
            inside.append((["ip", "netns", "exec", ns, "nft", "-f", "-"],
                           "".join(" ".join(rule) + "\n" for rule in topo.nat_rules)))
    return [*steps, (["ip", "-batch", "-"], "\n".join(host) + "\n"), *inside]


def build(topo: Topology, run: Runner) -> None:
    """Create bridges, namespaces and veth pairs of `topo` with `run` (which raises on error)."""
    for argv, stdin in build_steps(topo):
        run(argv, stdin)


def teardown_commands(topo: Topology) -> list[list[str]]:
    """Commands that remove what `build` made (each may fail if it was never made)."""
    cmds = [["ip", "netns", "del", topo.ns(n.name)] for n in topo.nodes]
    cmds += [["ip", "link", "del", br] for br in topo.bridges]
    return cmds
