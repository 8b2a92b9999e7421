# hasync_lab.probeflows: the lab's one probe client: the tunnels of one client machine, in one
# process (the classic lab's one tunnel per client is one flow bound to 0.0.0.0, so the kernel
# picks its source: the tunnel's virtual IP, whichever it is now).
#   python -m hasync_lab.probeflows client --server IP:PORT [--server-name server]
#       (--flow NAME@SRC_IP [--flow ...] | --flows-file PATH) --log PATH
#       [--rate 50] [--size 64] [--duration S]
# A flow is one UDP socket bound to (SRC_IP, 0), so that its packets leave from its tunnel's
# virtual IP, sending hasync_lab.probe datagrams under the flow's NAME. To the probe.py server a
# flow is just a client: it learns each name's latest address and sends to each name, with a seq
# counter per name. Flow names must therefore be unique across all clients of one server.
# Rules:
# - --flows-file: one NAME@SRC_IP per line; blank lines and lines starting with # are skipped.
#   NAME is a probe name (probe.valid_name), unique; SRC_IP an address of the server's family.
# - All flows share one absolute schedule (probe.Schedule): a round sends one datagram from each
#   bound flow, R rounds per second, a stall's backlog cut as in probe.py.
# - A flow whose bind fails (EADDRNOTAVAIL: its virtual IP is not there yet) logs one err per
#   attempt, sends nothing meanwhile (no seq is used) and retries at most once per _BIND_RETRY s.
#   A failed send is logged as err and uses its seq up, as in probe.py. Neither is fatal.
# - One log for all flows, in probe.py's one format, each line headed by its flow's name:
#     <flow> tx <peer> <seq> <t_sent> | <flow> rx <peer> <seq> <t_sent> <t_recv>
#     <flow> err <peer> <errno> <t>
#   <peer> is the server's name for bind and send errors, "-" for receive errors. The log is
#   buffered and written on a FLUSH_INTERVAL grid from the start, which lines up with the send
#   rounds at rates such as 10, 20 or 50/s, so flushing adds no wakeups there. It is opened after
#   the first bind attempt of every flow.
# - One thread that wakes only on the send and flush schedules, never per packet. After each sleep
#   one epoll over all the sockets is polled, one datagram read from each ready socket per pass,
#   until none is ready (at most _MAX_PASSES passes, and no second one once the next send round
#   is due: a starved CPU must not hold the sends back behind a backlog; the rest waits for the
#   next wake). t_recv is the kernel's receive timestamp, as in probe.py.
# - SIGHUP re-reads --flows-file: a flow whose SRC_IP changed (its tunnel was re-established with
#   another virtual IP) closes its socket and binds anew, keeping its seq counter; new names are
#   added, names no longer listed are closed. A file that does not parse leaves the flows as they
#   are, and says so on stderr.
# - SIGTERM, SIGINT and --duration end it cleanly, with a final flush and a one-line summary on
#   stderr. The RLIMIT_NOFILE soft limit is raised to the hard limit at start. Bad arguments exit
#   2, the message naming the argument.
# - probe.ProbeLogs reads the log (it is pure; add_lines takes the complete lines that
#   probe.tail_log returns, so a log can be read while it grows).

import argparse
import contextlib
import ipaddress
import math
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hasync_lab.probe import (
    DEFAULT_RATE,
    DEFAULT_SERVER_NAME,
    DEFAULT_SIZE,
    FLUSH_INTERVAL,
    TAIL,
    Schedule,
    decode_datagram,
    encode_datagram,
    kernel_time,
    name_arg,
    parse_endpoint,
    run_and_report,
    setup_socket,
    stop_on_signals,
    valid_name,
)

_BIND_RETRY = 1.0
_MAX_PASSES = 32
_RECV_SIZE = 2048  # a probe datagram's header fits in 272 bytes; the zero padding may be cut
_FD_RESERVE = 64  # descriptors kept for the log, the epoll and the interpreter


@dataclass(frozen=True)
class FlowSpec:
    """One flow: its probe name and the source address its socket binds to."""

    name: str
    source: str


def parse_flow_spec(text: str) -> FlowSpec:
    """Parse NAME@SRC_IP; ValueError says what is wrong."""
    name, sep, source = text.strip().rpartition("@")
    if not sep:
        raise ValueError(f"expected NAME@SRC_IP, got {text!r}")
    if not valid_name(name):
        raise ValueError(f"bad flow name {name!r} in {text!r}: 1-255 ascii, no spaces")
    try:
        ip = ipaddress.ip_address(source)
    except ValueError:
        raise ValueError(f"bad source address {source!r} in {text!r}") from None
    return FlowSpec(name, str(ip))


def parse_flow_specs(lines: Iterable[str]) -> list[FlowSpec]:
    """Parse a flows file's lines, skipping blank and # lines; ValueError names the line."""
    specs = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text and not text.startswith("#"):
            try:
                specs.append(parse_flow_spec(text))
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from None
    return specs


# ---- runtime ----


class _Flow:
    """One flow's seq counter, and its datagram bytes and log line heads made once."""

    __slots__ = ("err_head", "name", "padding", "prefix", "rx_head", "seq", "source", "tx_head")

    def __init__(self, spec: FlowSpec, server_name: str, size: int) -> None:
        self.name, self.source = spec.name, spec.source
        self.seq = 0
        self.prefix = encode_datagram(spec.name, 0, 0.0, 0)[: -TAIL.size]
        self.padding = bytes(max(0, size - len(self.prefix) - TAIL.size))
        self.tx_head = f"{spec.name} tx {server_name} "
        self.rx_head = f"{spec.name} rx {server_name} "
        self.err_head = f"{spec.name} err {server_name} "


class _Client:
    """All flows: binds and their retries, send rounds, one epoll for receiving, one log."""

    def __init__(
        self,
        server: tuple[socket.AddressFamily, tuple[str, int]],
        server_name: str,
        specs: Sequence[FlowSpec],
        size: int,
        log_path: str,
    ) -> None:
        self._family, self._server = server
        self._server_prefix = encode_datagram(server_name, 0, 0.0, 0)[: -TAIL.size]
        self._pending = [_Flow(spec, server_name, size) for spec in specs]
        self._bound: list[tuple[_Flow, socket.socket]] = []
        self._by_fd: dict[int, tuple[_Flow, socket.socket]] = {}
        self._epoll = select.epoll()
        self._lines: list[str] = []
        self.stats = {"flows": len(specs), "bound": 0, "tx": 0, "rx": 0, "err": 0, "bad": 0}
        self.next_bind = 0.0
        self.bind_pending(time.monotonic())
        self._log = open(log_path, "a", encoding="ascii")  # noqa: SIM115 - closed by close()

    @property
    def pending(self) -> bool:
        """Whether some flow still waits for its bind."""
        return bool(self._pending)

    def bind_pending(self, now: float) -> None:
        """Try to bind every unbound flow; each failure is logged and retried later."""
        waiting = []
        for flow in self._pending:
            try:
                sock = self._open(flow.source)
            except OSError as exc:
                self._lines.append(f"{flow.err_head}{exc.errno or 0} {time.monotonic():.6f}\n")
                self.stats["err"] += 1
                waiting.append(flow)
                continue
            self._bound.append((flow, sock))
            self._by_fd[sock.fileno()] = (flow, sock)
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._pending = waiting
        self.stats["bound"] = len(self._bound)
        self.next_bind = now + _BIND_RETRY

    def _open(self, source: str) -> socket.socket:
        """A socket set up as probe.py's and bound to (source, 0)."""
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            setup_socket(sock)
            sock.bind((source, 0))
        except OSError:
            sock.close()
            raise
        return sock

    def reload(self, specs: Sequence[FlowSpec], size: int, server_name: str) -> None:
        """Take a new flow list: rebind moved flows, add new ones, close those not listed."""
        want = {spec.name: spec.source for spec in specs}
        keep: list[tuple[_Flow, socket.socket]] = []
        for flow, sock in self._bound:
            if want.get(flow.name) == flow.source:
                keep.append((flow, sock))
                continue
            self._epoll.unregister(sock.fileno())
            del self._by_fd[sock.fileno()]
            sock.close()
            if flow.name in want:
                flow.source = want[flow.name]
                self._pending.append(flow)
        for flow in self._pending:
            flow.source = want.get(flow.name, flow.source)
        self._pending = [f for f in self._pending if f.name in want]
        known = {f.name for f, _ in keep} | {f.name for f in self._pending}
        self._pending += [_Flow(spec, server_name, size) for spec in specs
                          if spec.name not in known]
        self._bound = keep
        self.stats["flows"], self.stats["bound"] = len(want), len(keep)
        self.next_bind = 0.0

    def send_round(self) -> None:
        """Send the next datagram of every bound flow; a failure is logged and counted."""
        pack, server, monotonic = TAIL.pack, self._server, time.monotonic
        append = self._lines.append
        errors = 0
        for flow, sock in self._bound:
            seq = flow.seq
            flow.seq = seq + 1
            t = monotonic()
            try:
                sock.sendto(flow.prefix + pack(seq & 0xFFFFFFFF, t) + flow.padding, server)
            except OSError as exc:
                append(f"{flow.err_head}{exc.errno or 0} {t:.6f}\n")
                errors += 1
            else:
                append(f"{flow.tx_head}{seq} {t:.6f}\n")
        self.stats["tx"] += len(self._bound) - errors
        self.stats["err"] += errors

    def drain(self, until: float = math.inf) -> None:
        """Read the waiting datagrams: passes over the ready sockets, one datagram each, until
        none is ready, _MAX_PASSES passes, or (after the first) `until`, the next send round."""
        now = time.monotonic()
        realtime_offset = time.time() - now
        by_fd, append, unpack = self._by_fd, self._lines.append, TAIL.unpack_from
        prefix = self._server_prefix
        start, end = len(prefix), len(prefix) + TAIL.size
        received = 0
        for k in range(_MAX_PASSES):
            if k and time.monotonic() >= until:
                break
            ready = self._epoll.poll(0, max(1, len(by_fd)))
            if not ready:
                break
            for fd, _events in ready:
                flow, sock = by_fd[fd]
                try:
                    data, ancillary, _flags, _addr = sock.recvmsg(_RECV_SIZE, 64)
                except OSError as exc:
                    self._receive_error(flow, exc)
                    continue
                t_recv = kernel_time(ancillary, realtime_offset) or now
                if data.startswith(prefix) and len(data) >= end:  # the server's: the fast path
                    seq, t_sent = unpack(data, start)
                    append(f"{flow.rx_head}{seq} {t_sent:.6f} {t_recv:.6f}\n")
                    received += 1
                else:
                    received += self._receive_other(flow, data, t_recv)
        self.stats["rx"] += received

    def _receive_error(self, flow: _Flow, exc: OSError) -> None:
        """Log a receive error (a spurious wakeup's EAGAIN is none)."""
        if not isinstance(exc, BlockingIOError):
            self._lines.append(f"{flow.name} err - {exc.errno or 0} {time.monotonic():.6f}\n")
            self.stats["err"] += 1

    def _receive_other(self, flow: _Flow, data: bytes, t_recv: float) -> int:
        """Log a datagram not from the expected server name; return 1 if it is a probe's."""
        datagram = decode_datagram(data)
        if datagram is None:
            self.stats["bad"] += 1
            return 0
        name, seq, t_sent = datagram.name, datagram.seq, datagram.t_sent
        self._lines.append(f"{flow.name} rx {name} {seq} {t_sent:.6f} {t_recv:.6f}\n")
        return 1

    def flush(self) -> None:
        """Write the buffered lines out to the log file."""
        lines = self._lines
        if lines:
            self._log.write("".join(lines))
            lines.clear()
            self._log.flush()

    def close(self) -> None:
        """Final flush, then close the log, the sockets and the epoll."""
        self.flush()
        self._log.close()
        for _flow, sock in self._bound:
            sock.close()
        self._epoll.close()


def _run(client: _Client, rate: float, duration: float | None, caught: list[int],
         reload: Callable[[], None] | None = None, hups: list[int] | None = None) -> None:
    """Send rounds, flush on the grid, retry binds, drain after each sleep, until stopped."""
    start = time.monotonic()
    end = math.inf if duration is None else start + duration
    rounds, flushes = Schedule(rate, start), Schedule(1.0 / FLUSH_INTERVAL, start)
    now = start
    while not caught and now < end:
        if hups and reload is not None:
            hups.clear()
            reload()
        if client.pending and now >= client.next_bind:
            client.bind_pending(now)
        for _ in range(rounds.take_due(now)):
            client.send_round()
        if flushes.take_due(now):
            client.flush()
        wake = min(rounds.next_at(), flushes.next_at(), end)
        time.sleep(max(0.0, wake - time.monotonic()))
        client.drain(rounds.next_at())
        now = time.monotonic()


def raise_nofile_limit() -> int:
    """Raise the RLIMIT_NOFILE soft limit to the hard limit (best effort); return the soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _endpoint_arg(text: str) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """argparse type for IP:PORT."""
    try:
        return parse_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _flow_arg(text: str) -> FlowSpec:
    """argparse type for NAME@SRC_IP."""
    try:
        return parse_flow_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class FlowsFile:
    """A flows file given on the command line: its path and the flows it held."""

    path: str
    specs: tuple[FlowSpec, ...]


def _flows_file_arg(path: str) -> FlowsFile:
    """argparse type for a flows file: its path and flows."""
    try:
        specs = parse_flow_specs(Path(path).read_text(encoding="ascii").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{path} {exc}") from None
    if not specs:
        raise argparse.ArgumentTypeError(f"{path} holds no flow")
    return FlowsFile(path, tuple(specs))


def _non_negative(convert: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type for a finite number >= 0, read by convert (int or float)."""

    def check(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value >= 0 or math.isinf(value):
            raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
        return value

    return check


def _parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m hasync_lab.probeflows")
    roles = parser.add_subparsers(dest="role", required=True)
    client = roles.add_parser("client", help="drive the probe stream through many flows")
    client.add_argument("--server", type=_endpoint_arg, required=True, metavar="IP:PORT")
    client.add_argument("--server-name", type=name_arg, default=DEFAULT_SERVER_NAME)
    flows = client.add_mutually_exclusive_group(required=True)
    flows.add_argument("--flow", type=_flow_arg, action="append", metavar="NAME@SRC_IP")
    flows.add_argument("--flows-file", type=_flows_file_arg, metavar="PATH",
                       help="one NAME@SRC_IP per line")
    number, count = _non_negative(float), _non_negative(int)
    client.add_argument("--rate", type=number, default=DEFAULT_RATE, help="packets/s per flow")
    client.add_argument("--size", type=count, default=DEFAULT_SIZE, help="datagram bytes")
    client.add_argument("--duration", type=number, default=None, help="seconds, then exit")
    client.add_argument("--log", required=True, help="append-only event log of all flows")
    return parser


def _checked_flows(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[FlowSpec]:
    """The flows, unique by name and of the server's address family (else exit 2)."""
    specs: list[FlowSpec] = args.flow or list(args.flows_file.specs)
    option = "--flow" if args.flow else "--flows-file"
    family = args.server[0]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            parser.error(f"argument {option}: flow name {spec.name!r} appears twice")
        seen.add(spec.name)
        version = ipaddress.ip_address(spec.source).version
        if (socket.AF_INET6 if version == 6 else socket.AF_INET) != family:
            parser.error(f"argument {option}: flow {spec.name}@{spec.source} is not of the "
                         f"address family of --server")
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    """Run a multi-flow probe client until a signal or --duration."""
    parser = _parser()
    args = parser.parse_args(argv)
    specs = _checked_flows(parser, args)
    limit = raise_nofile_limit()
    if len(specs) + _FD_RESERVE > limit:
        parser.error(f"{len(specs)} flows need more than the RLIMIT_NOFILE limit of {limit}")
    caught = stop_on_signals()
    hups: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, _frame: hups.append(signum))
    client = _Client(args.server, args.server_name, specs, args.size, args.log)

    def reload() -> None:
        try:
            new = parse_flow_specs(Path(args.flows_file.path).read_text().splitlines())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            print(f"probeflows client: {args.flows_file.path} not reloaded: {exc}",
                  file=sys.stderr)
            return
        client.reload(new, args.size, args.server_name)

    return run_and_report(client, "probeflows client", lambda: _run(
        client, args.rate, args.duration, caught, reload if args.flows_file else None, hups))


if __name__ == "__main__":
    sys.exit(main())
