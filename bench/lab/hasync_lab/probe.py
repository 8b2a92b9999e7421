# hasync_lab.probe: the lab's traffic probe, sequence-numbered UDP both ways through the tunnels:
# the datagram, the one log format and its analysis, and the server. The one client runtime is
# probeflows.py (a flow per tunnel; the classic lab's client is one flow).
#   python -m hasync_lab.probe server --bind IP:PORT [--name server] --log PATH
#       [--rate 50] [--size 64] [--duration S]
# Datagram, network byte order: b"HSP1", u8 name length, the sender's name (ascii), u32 seq,
# f64 send time (time.monotonic()), then zero padding up to --size bytes.
# Rules:
# - The server remembers each client's latest source address by name (a reconnecting client may
#   get a new one) and sends to every known client, with a seq counter per client.
# - Sending follows an absolute schedule, packet i at t0 + i/rate (rate 0: receive only); a
#   backlog over _MAX_BURST slots (process stalled) is skipped rather than burst out.
# - A failed send (ENETUNREACH, EPERM... while the tunnel is down) is logged as err, never tx,
#   and never fatal; its seq is used up, so the receiver sees the hole.
# - One log format for the server and every client flow: append-only text, one event per line,
#   flushed at least every FLUSH_INTERVAL s, each line headed by the name of the side that
#   logged it (the server's --name, or the client flow's name):
#     <me> tx <peer> <seq> <t_sent> | <me> rx <peer> <seq> <t_sent> <t_recv>
#     <me> err <peer> <errno> <t>
#   with time.monotonic() times at 6 decimals (the lab's processes share one clock). <peer> is
#   the other side's name ("-" for a receive error). The log is opened only after the socket is
#   bound, so a server's log existing means the server is ready. ProbeLogs reads it.
# - SIGTERM, SIGINT and --duration end the probe cleanly, with a final flush.
# - One thread, no busy waiting, light under QEMU TCG: the loop sleeps until the next send or
#   flush (at most FLUSH_INTERVAL) and then drains the socket, taking t_recv from the kernel's
#   receive timestamp (CLOCK_REALTIME, mapped onto time.monotonic() at each drain), or from
#   time.monotonic() at the drain where the kernel gives none.
# - The analysis (ProbeLogs, stream_stats, first_rx_after) is pure; tail_log reads.
#   stream_stats counts packets sent in [start, end) and, by seq, which of them arrived; its
#   longest gap is over the receive times in [start, end], the window's edges included.

import argparse
import contextlib
import ipaddress
import itertools
import math
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

MAGIC = b"HSP1"
DEFAULT_RATE = 50.0
DEFAULT_SIZE = 64
DEFAULT_SERVER_NAME = "server"
FLUSH_INTERVAL = 0.1
_MAX_BURST = 5
_BURST_DATAGRAMS = 64  # a catch-up sends at most this many datagrams (or one round) per drain
_RECV_BATCH = 8192  # per wake: a server of 1000 flows at 50/s gets 2500 per 50 ms
_RECV_BUFFER = 8 << 20  # a small datagram takes about 1 KiB of it (skb truesize)
_DRAIN_CHECK = 32  # a drain looks at the clock every this many datagrams
TAIL = struct.Struct("!Id")
_NAME = re.compile(r"[!-~]{1,255}")
# Linux (asm-generic) values the socket module lacks: SO_TIMESTAMPNS_OLD (cmsg: two longs of
# CLOCK_REALTIME) and SO_RCVBUFFORCE (root may exceed net.core.rmem_max).
SO_TIMESTAMPNS = 35
_SO_RCVBUFFORCE = 33
_SO_MEMINFO = 55  # asm-generic/socket.h: sk_meminfo, 9 u32 (SK_MEMINFO_RMEM_ALLOC first)
STATUS_S = 10.0
EVENT_KINDS = frozenset({"tx", "rx", "err"})
_TIMESPEC = struct.Struct("@qq")

Address = tuple[str, int] | tuple[str, int, int, int]


@dataclass(frozen=True)
class Datagram:
    """A decoded probe datagram."""

    name: str
    seq: int
    t_sent: float


def valid_name(name: str) -> bool:
    """Whether name is a usable peer name: 1-255 printable ascii characters, no spaces."""
    return _NAME.fullmatch(name) is not None


def encode_datagram(name: str, seq: int, t_sent: float, size: int = DEFAULT_SIZE) -> bytes:
    """Build a datagram, padded with zeros up to size bytes."""
    if not valid_name(name):
        raise ValueError(f"bad probe name {name!r}")
    raw = name.encode("ascii")
    body = MAGIC + bytes([len(raw)]) + raw + TAIL.pack(seq & 0xFFFFFFFF, t_sent)
    return body + bytes(max(0, size - len(body)))


def decode_datagram(data: bytes) -> Datagram | None:
    """Parse a datagram; None if it is not a well-formed probe datagram."""
    if len(data) < 5 or data[:4] != MAGIC:
        return None
    end = 5 + data[4]
    if len(data) < end + TAIL.size:
        return None
    name = data[5:end].decode("ascii", "replace")
    if not valid_name(name):
        return None
    seq, t_sent = TAIL.unpack_from(data, end)
    return Datagram(name, seq, t_sent)


def parse_endpoint(text: str) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """Parse IP:PORT or [IPv6]:PORT into an address family and a socket address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected IP:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ip = ipaddress.ip_address(host)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, (str(ip), int(port))


# ---- analysis (pure) ----


@dataclass
class PeerLog:
    """One peer's events in a probe log."""

    sent: list[tuple[int, float]] = field(default_factory=list)
    received: list[tuple[int, float, float]] = field(default_factory=list)
    errors: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class ProbeLog:
    """A probe log by peer name; lines that do not parse are counted in bad_lines."""

    peers: dict[str, PeerLog] = field(default_factory=dict)
    bad_lines: int = 0

    def peer(self, name: str) -> PeerLog:
        """The events of one peer (empty if it never appears)."""
        return self.peers.get(name) or PeerLog()

    def add_event(self, parts: list[str]) -> bool:
        """Add one split line without its head (`tx peer seq t`...); False if it is malformed."""
        kind, n = parts[0], len(parts)
        try:
            if kind == "tx" and n == 4:
                sent = (int(parts[2]), float(parts[3]))
                self.peers.setdefault(parts[1], PeerLog()).sent.append(sent)
            elif kind == "rx" and n == 5:
                received = (int(parts[2]), float(parts[3]), float(parts[4]))
                self.peers.setdefault(parts[1], PeerLog()).received.append(received)
            elif kind == "err" and n == 4:
                error = (int(parts[2]), float(parts[3]))
                self.peers.setdefault(parts[1], PeerLog()).errors.append(error)
            else:
                return False
        except ValueError:
            return False
        return True


@dataclass
class ProbeLogs:
    """A probe log (the server's or a client's) as one ProbeLog per name that logged; a line
    without a head and an event kind is counted in bad_lines, a bad event in its ProbeLog's."""

    logs: dict[str, ProbeLog] = field(default_factory=dict)
    bad_lines: int = 0

    def of(self, name: str) -> ProbeLog:
        """The events `name` logged (empty if it never appears)."""
        return self.logs.get(name) or ProbeLog()

    def add_lines(self, lines: Iterable[str]) -> "ProbeLogs":
        """Add log lines (e.g. the complete lines from tail_log); return self."""
        logs = self.logs
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2 or parts[1] not in EVENT_KINDS:
                self.bad_lines += 1
                continue
            log = logs.get(parts[0])
            if log is None:
                log = logs[parts[0]] = ProbeLog()
            if not log.add_event(parts[1:]):
                log.bad_lines += 1
        return self


def parse_logs(lines: Iterable[str]) -> dict[str, ProbeLog]:
    """Name that logged -> its events."""
    return ProbeLogs().add_lines(lines).logs


@dataclass(frozen=True)
class StreamStats:
    """Delivery of one direction of one stream over a time window."""

    sent: int
    received: int
    lost: int
    longest_gap_ms: float
    resumed_at: float | None
    last_before: float | None


def stream_stats(
    sent: Sequence[tuple[int, float]],
    received: Sequence[tuple[int, float, float]],
    start: float,
    end: float,
    tail_grace_s: float = 0.0,
) -> StreamStats:
    """Loss and the longest receive gap of a stream over [start, end]. The silence from the
    last packet to `end` is a gap only past `tail_grace_s`: the lab's VM stalls every process
    for a few hundred ms now and then, and a window ending in one made a stream that never
    stopped look as if it had not resumed (its trailing 0.15 s longer than any 50 ms gap)."""
    if end < start:
        raise ValueError(f"window ends ({end}) before it starts ({start})")
    window = {seq for seq, t_sent in sent if start <= t_sent < end}
    got = {seq for seq, _t_sent, _t_recv in received if seq in window}
    times = sorted(t_recv for _seq, _t_sent, t_recv in received if start <= t_recv <= end)
    gap, last_before, resumed_at = _longest_gap(times, start, end, tail_grace_s)
    lost = len(window) - len(got)
    return StreamStats(len(window), len(got), lost, gap * 1000.0, resumed_at, last_before)


def _longest_gap(
    times: list[float], start: float, end: float, tail_grace_s: float = 0.0
) -> tuple[float, float | None, float | None]:
    """Return (length, time before, time after) of the longest gap; the first one on ties; the
    trailing silence counts only past `tail_grace_s`."""
    if not times:
        return end - start, None, None
    best: tuple[float, float | None, float | None] = (times[0] - start, None, times[0])
    for before, after in itertools.pairwise(times):
        if after - before > best[0]:
            best = (after - before, before, after)
    if end - times[-1] > max(best[0], tail_grace_s):
        best = (end - times[-1], times[-1], None)
    return best


def first_rx_after(received: Iterable[tuple[int, float, float]], t: float) -> float | None:
    """The earliest receive time strictly after t, or None."""
    return min((t_recv for _seq, _t_sent, t_recv in received if t_recv > t), default=None)


def tail_log(path: str | Path, offset: int) -> tuple[list[str], int]:
    """Read the complete lines appended to a log since offset; return them and the new offset."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) < offset:  # the file was replaced: start over
                offset = 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return data[:end].decode("ascii", "replace").splitlines(), offset + end


# ---- runtime ----


class Schedule:
    """Absolute send schedule: slot i is due at t0 + i / rate."""

    def __init__(self, rate: float, t0: float) -> None:
        self._period = 1.0 / rate if rate > 0 else None
        self._t0 = t0
        self._slot = 0

    def next_at(self) -> float:
        """When the next slot is due (never with rate 0)."""
        if self._period is None:
            return math.inf
        return self._t0 + self._slot * self._period

    def take_due(self, now: float) -> int:
        """Consume the slots due by now; return how many to send (a stall's backlog is cut)."""
        if self._period is None or now < self.next_at():
            return 0
        due = int((now - self._t0) / self._period + 1e-9) + 1
        count, self._slot = due - self._slot, max(due, self._slot + 1)
        return max(1, min(count, _MAX_BURST))


class _Server:
    """The probe server: one socket, a send round to every client it heard, receives, a
    buffered log."""

    def __init__(self, sock: socket.socket, log_path: str, name: str, size: int) -> None:
        self.sock = sock
        self._log = open(log_path, "a", encoding="ascii")  # noqa: SIM115 - closed by close()
        self._lines: list[str] = []
        self.next_flush = time.monotonic() + FLUSH_INTERVAL
        self.peers: dict[str, Address] = {}  # the known clients, at their latest addresses
        self._me = name
        self._seqs: dict[str, int] = {}
        self._prefix = encode_datagram(name, 0, 0.0, 0)[: -TAIL.size]
        self._padding = bytes(max(0, size - len(self._prefix) - TAIL.size))
        self.stats = {"tx": 0, "rx": 0, "err": 0, "bad": 0}

    def send_round(self) -> None:
        """Send the next datagram to each peer; a failure is logged and counted."""
        for peer, addr in self.peers.items():
            seq = self._seqs.get(peer, 0)
            self._seqs[peer] = seq + 1
            t = time.monotonic()
            data = self._prefix + TAIL.pack(seq & 0xFFFFFFFF, t) + self._padding
            try:
                self.sock.sendto(data, addr)
            except OSError as exc:
                self._lines.append(f"{self._me} err {peer} {exc.errno or 0} {t:.6f}\n")
                self.stats["err"] += 1
            else:
                self._lines.append(f"{self._me} tx {peer} {seq} {t:.6f}\n")
                self.stats["tx"] += 1

    def drain(self, until: float = math.inf) -> None:
        """Receive what waits on the socket: at most _RECV_BATCH datagrams, and no later than
        `until` (the next send) once a round's worth (one per peer) is in: a starved CPU must
        not hold the sends back behind a backlog, nor starve the receives behind the sends."""
        now = time.monotonic()
        realtime_offset = time.time() - now
        least = max(_DRAIN_CHECK, len(self.peers))  # a round's worth of answers at least
        for k in range(_RECV_BATCH):
            if k >= least and k % _DRAIN_CHECK == 0 and time.monotonic() >= until:
                return
            try:
                data, ancillary, _flags, addr = self.sock.recvmsg(65535, 64)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lines.append(f"{self._me} err - {exc.errno or 0} {time.monotonic():.6f}\n")
                self.stats["err"] += 1
                return
            t_recv = kernel_time(ancillary, realtime_offset) or now
            datagram = decode_datagram(data)
            if datagram is None:
                self.stats["bad"] += 1
                continue
            name, seq, t_sent = datagram.name, datagram.seq, datagram.t_sent
            self._lines.append(f"{self._me} rx {name} {seq} {t_sent:.6f} {t_recv:.6f}\n")
            self.stats["rx"] += 1
            self.peers[name] = addr

    def flush(self, now: float) -> None:
        """Append the buffered lines to the log file."""
        if self._lines:
            self._log.write("".join(self._lines))
            self._log.flush()
            self._lines.clear()
        self.next_flush = now + FLUSH_INTERVAL

    def close(self) -> None:
        """Final flush, then close the log."""
        self.flush(time.monotonic())
        self._log.close()


def kernel_time(ancillary: list[tuple[int, int, bytes]], realtime_offset: float) -> float:
    """The kernel's receive timestamp as a time.monotonic() value, or 0.0 if there is none."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(payload)
            return (sec - realtime_offset) + nsec * 1e-9
    return 0.0


def setup_socket(sock: socket.socket) -> None:
    """Non-blocking, kernel receive timestamps, and room for a stall's backlog (best effort)."""
    sock.setblocking(False)
    with contextlib.suppress(OSError):  # without: t_recv is time.monotonic() at the drain
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RECV_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)


def stop_on_signals() -> list[int]:
    """Make SIGTERM and SIGINT append to the returned list; the loop stops when it is not empty."""
    caught: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: caught.append(signum))
    return caught


def stats_text(stats: dict[str, int]) -> str:
    """A runtime's counters as one line: "tx 120 rx 118 ..."."""
    return " ".join(f"{key} {value}" for key, value in stats.items())


class Runtime(Protocol):
    """A probe runtime as a main() drives it: counters, and a close that flushes its log."""

    stats: dict[str, int]

    def close(self) -> None:
        """Final flush, then release what it holds."""


def run_and_report(runtime: Runtime, who: str, loop: Callable[[], None]) -> int:
    """Run `loop`, close `runtime` whatever happens, then print `who: ` and its counters on
    stderr (its totals, for the process's log); the exit status, 0."""
    try:
        loop()
    finally:
        runtime.close()
    print(f"{who}: {stats_text(runtime.stats)}", file=sys.stderr)
    return 0


def socket_memory(sock: socket.socket) -> str:
    """The socket's receive memory, buffer and drops (SO_MEMINFO, linux/sock_diag.h), or ""."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 4 * 9)
    except OSError:
        return ""
    rmem, rcvbuf, *_, drops = struct.unpack_from("9I", raw)
    return f"rmem {rmem} rcvbuf {rcvbuf} drops {drops}"


def _run(probe: _Server, rate: float, duration: float | None, caught: list[int]) -> None:
    """The main loop: send on schedule, receive, flush, until stopped; every STATUS_S a line on
    stderr says what it did and what its socket holds."""
    t0 = time.monotonic()
    deadline = t0 + duration if duration is not None else math.inf
    schedule = Schedule(rate, t0)
    status_at = t0 + STATUS_S
    while not caught:  # a signal's handler returns into the sleep, which is short
        now = time.monotonic()
        if now >= deadline:
            return
        if now >= status_at:
            status_at = now + STATUS_S
            counts = stats_text(probe.stats)
            print(f"{now:.1f} {counts} peers {len(probe.peers)} {socket_memory(probe.sock)}",
                  file=sys.stderr, flush=True)
        rounds = schedule.take_due(now)  # a late loop catches up, but a round to hundreds
        #                                   of peers at a time, each followed by a drain
        for _ in range(min(rounds, max(1, _BURST_DATAGRAMS // max(1, len(probe.peers))))):
            probe.send_round()
        if now >= probe.next_flush:
            probe.flush(now)
        wake = min(schedule.next_at(), probe.next_flush, deadline)
        time.sleep(min(max(0.0, wake - time.monotonic()), FLUSH_INTERVAL))
        probe.drain(schedule.next_at())


def name_arg(text: str) -> str:
    """argparse type for a peer name."""
    if not valid_name(text):
        raise argparse.ArgumentTypeError(f"bad name {text!r}: 1-255 ascii, no spaces")
    return text


def _parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m hasync_lab.probe")
    roles = parser.add_subparsers(dest="role", required=True)
    server = roles.add_parser("server", help="receive from clients and send to each "
                              "(the client is python -m hasync_lab.probeflows client)")
    server.add_argument("--bind", type=parse_endpoint, required=True, metavar="IP:PORT")
    server.add_argument("--name", type=name_arg, default=DEFAULT_SERVER_NAME)
    server.add_argument("--rate", type=float, default=DEFAULT_RATE, help="packets/s per peer")
    server.add_argument("--size", type=int, default=DEFAULT_SIZE, help="datagram bytes")
    server.add_argument("--duration", type=float, default=None, help="seconds, then exit")
    server.add_argument("--log", required=True, help="append-only event log")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe server until a signal or --duration."""
    args = _parser().parse_args(argv)
    if args.rate < 0 or args.size < 0:
        print("probe: --rate and --size must not be negative", file=sys.stderr)
        return 2
    caught = stop_on_signals()
    family, addr = args.bind
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind(addr)
        setup_socket(sock)
        probe = _Server(sock, args.log, args.name, args.size)
        return run_and_report(probe, f"probe {args.role} {args.name}",
                              lambda: _run(probe, args.rate, args.duration, caught))


if __name__ == "__main__":
    sys.exit(main())
