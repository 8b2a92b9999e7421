"""pysyncobj's TCP transport with the Raft port's limits (hasync/raftport.py): the transport
class `ClusterJournal` hands to `SyncObj(transportClass=...)`.

Rules:
- `GuardedTransport` is pysyncobj 0.3.17's TCPTransport (pysyncobj/transport.py) with its own
  listener and connections; the Raft logic above it is untouched. Everything runs on
  pysyncobj's tick thread (the poller's callbacks and the transport's on-tick callback).
- Its connections are `GuardedConnection`s (hasync/raftconn.py): bounded reads, counted
  failures, outgoing connections from this node's own Raft address.
- `GuardedListener` listens on this node's Raft address only (pysyncobj binds 0.0.0.0 unless
  `bindAddress` is set: transport.py, _createServer) and survives accept errors: on EMFILE or
  ENFILE it sheds the oldest connection still in its handshake, else accepts and closes the new
  one with a spare descriptor, else pauses accepting for `PAUSE_S`; pysyncobj closes its
  listening socket for good (tcp_server.py, TcpServer.__onNewConnection calls unbind, and
  TCPTransport never binds again because `_ready` stays True).
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

from .raftconn import EV_ERROR, EV_READ, GuardedConnection, family
from .raftport import (
    HANDSHAKE_S,
    MAX_MESSAGE,
    PER_PEER,
    PortCounters,
    PortPolicy,
    member_ips,
    normalise_ip,
)

LISTEN_BACKLOG = 128  # pysyncobj listens with 5: a burst of connects would drop members' SYNs
ACCEPT_BATCH = 64  # accepts per poll event, so a flood drains without starving the tick
PAUSE_S = 0.5  # no descriptor could be freed: stop accepting this long
_FULL = (errno.EMFILE, errno.ENFILE)
_TRANSIENT = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR, errno.ENETDOWN,
              errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
              errno.EOPNOTSUPP, errno.ENETUNREACH)


class GuardedListener:
    """The Raft port's listening socket: admits through `on_accept`, never gives up."""

    def __init__(self, poller: Any, host: str, port: int, counters: PortCounters, *,
                 on_accept: Callable[[socket.socket, Any], None],
                 on_full: Callable[[], bool], send_size: int, recv_size: int) -> None:
        self._poller, self._counters = poller, counters
        self.host, self.port = host, port
        self._on_accept, self._on_full = on_accept, on_full
        self._send_size, self._recv_size = send_size, recv_size
        self._sock: socket.socket | None = None
        self._wanted = False  # bound once: keep it bound
        self._resume_at: float | None = None

    @property
    def bound(self) -> bool:
        """The listening socket is open."""
        return self._sock is not None

    def bind(self) -> None:
        """Open, bind and listen (pysyncobj TcpServer.bind's options, a larger backlog)."""
        sock = socket.socket(family(self.host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_size)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((self.host, self.port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self._sock, self._wanted, self._resume_at = sock, True, None
        self._poller.subscribe(sock.fileno(), self._on_event, EV_READ | EV_ERROR)

    def unbind(self) -> None:
        """Close the listening socket for good (destroy)."""
        self._wanted = False
        self._close()

    def accept_and_close(self) -> bool:
        """Take the next pending connection off the queue and close it; True if there was
        one (needs one free descriptor)."""
        if self._sock is None:
            return False
        try:
            sock, _ = self._sock.accept()
        except OSError:
            return False
        sock.close()
        return True

    def pause(self, until: float) -> None:
        """Stop watching the socket until `until` (it stays open and keeps its queue)."""
        if self._sock is not None:
            self._poller.unsubscribe(self._sock.fileno())
            self._resume_at = until

    def tick(self, now: float) -> None:
        """Resume after a pause; bind again if the socket was lost."""
        if self._sock is not None and self._resume_at is not None and now >= self._resume_at:
            self._resume_at = None
            self._poller.subscribe(self._sock.fileno(), self._on_event, EV_READ | EV_ERROR)
        if self._sock is None and self._wanted:
            try:
                self.bind()
                self._counters.tally("rebound")
            except OSError as exc:
                self._counters.count("rebind_error", exc)

    def _close(self) -> None:
        if self._sock is not None:
            self._poller.unsubscribe(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _on_event(self, fd: int, event: int) -> None:
        """Poller callback: accept a batch, admitting each through `on_accept`."""
        if self._sock is None or fd != self._sock.fileno():
            return
        if event & EV_ERROR:
            self._counters.count("listen_error", f"poll event {event}")
            self._close()  # bound again at the next tick
            return
        for _ in range(ACCEPT_BATCH):
            if self._sock is None or self._resume_at is not None:
                return
            try:
                sock, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _FULL:
                    self._counters.count("accept_no_fd", exc)
                    if not self._on_full():
                        return
                    continue
                self._counters.count(f"accept_error:{errno.errorcode.get(exc.errno or 0)}", exc)
                if exc.errno in _TRANSIENT:
                    continue
                return
            self._admit(sock, addr)

    def _admit(self, sock: socket.socket, addr: Any) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_size)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
        except OSError as exc:  # the peer already reset it
            sock.close()
            self._counters.count("accept_setup_error", exc)
            return
        self._on_accept(sock, addr)


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class GuardedTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCPTransport with the Raft port's limits (see the module header)."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any, *,
                 counters: PortCounters, per_peer: int = PER_PEER,
                 handshake_s: float = HANDSHAKE_S, limit: int = MAX_MESSAGE) -> None:
        others = list(otherNodes)
        self._port = counters
        self._limit = limit
        addresses = [n.address for n in others] + ([selfNode.address] if selfNode else [])
        self._policy = PortPolicy(member_ips(addresses), per_peer, handshake_s)
        own = sorted(member_ips([selfNode.address])) if selfNode else []
        self._source_ip = own[0] if len(own) == 1 else None
        self._by_node: dict[Any, GuardedConnection] = {}  # incoming, authenticated
        self._spare = _open_spare()
        super().__init__(syncObj, selfNode, others)

    @property
    def members(self) -> frozenset[str]:
        """The IPs allowed to connect."""
        return frozenset(self._policy.members)

    # ---- pysyncobj's TCPTransport hooks (pysyncobj/transport.py) ----
    def _createServer(self) -> None:
        """TCPTransport._createServer: listen on this node's own address only."""
        conf = self._syncObj.conf
        host, port = (conf.bindAddress or self._selfNode.address).rsplit(":", 1)
        self._server = GuardedListener(
            self._syncObj._poller, host.strip("[]"), int(port), self._port,
            on_accept=self._on_accept, on_full=self._on_full,
            send_size=conf.sendBufferSize, recv_size=conf.recvBufferSize)

    def addNode(self, node: Any) -> None:
        """TCPTransport.addNode, with a GuardedConnection for the nodes this one dials."""
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node):
            conn = self._connection(None)
            conn.encryptor = self._syncObj.encryptor
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        """TCPTransport's handshake; a connection it files under a node is authenticated,
        and replaces that node's previous incoming connection."""
        super()._onIncomingMessageReceived(conn, message)
        if conn.state != CONNECTION_STATE.CONNECTED or conn in self._unknownConnections:
            return
        node = self._connToNode(conn)
        self._policy.authenticated(conn)
        self._port.tally("authenticated")
        old = self._by_node.get(node)
        self._by_node[node] = conn
        if old is not None and old is not conn:
            self._port.tally("replaced")
            old.disconnect()

    def _onDisconnected(self, conn: Any) -> None:
        """TCPTransport._onDisconnected, after forgetting the connection."""
        self._policy.closed(conn)
        for node, held in list(self._by_node.items()):
            if held is conn:
                del self._by_node[node]
        super()._onDisconnected(conn)

    def _onTick(self) -> None:
        """TCPTransport._onTick, then the handshake deadline, the listener, the spare fd."""
        super()._onTick()
        now = time.monotonic()
        for conn in self._policy.expired(now):
            self._port.count("handshake_timeout", "no handshake within the deadline")
            conn.disconnect()
        if isinstance(self._server, GuardedListener):
            self._server.tick(now)
        if self._spare is None:
            self._spare = _open_spare()

    def destroy(self) -> None:
        """TCPTransport.destroy, then the spare descriptor."""
        super().destroy()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    # ---- admission ----
    def _connection(self, sock: socket.socket | None) -> GuardedConnection:
        conf = self._syncObj.conf
        return GuardedConnection(
            self._syncObj._poller, self._port, sock=sock, timeout=conf.connectionTimeout,
            send_size=conf.sendBufferSize, recv_size=conf.recvBufferSize,
            keepalive=conf.tcp_keepalive if sock is None else None,
            source_ip=self._source_ip, limit=self._limit)

    def _on_accept(self, sock: socket.socket, addr: Any) -> None:
        """Members only, `per_peer` each; an admitted connection starts its handshake."""
        try:
            ip = normalise_ip(str(addr[0]))
        except (ValueError, IndexError, TypeError):
            ip = "?"
        conn = self._connection(sock)
        reason, evict = self._policy.admit(conn, ip, time.monotonic())
        if reason is not None:
            self._port.count(reason, ip)
            conn.disconnect()
            return
        self._port.tally("accepted")
        for old in evict:
            self._port.count("evicted_peer_cap", ip)
            old.disconnect()
        conn.start()
        self._onNewIncomingConnection(conn)

    def _on_full(self) -> bool:
        """Out of descriptors: free one; False (and pause accepting) if none can be freed."""
        victim = self._policy.oldest_pending()
        if victim is not None:
            self._port.count("shed_for_fd", "closed the oldest connection in its handshake")
            victim.disconnect()  # type: ignore[attr-defined]
            return True
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            shed = isinstance(self._server, GuardedListener) and self._server.accept_and_close()
            self._spare = _open_spare()
            if shed:
                self._port.count("shed_new_for_fd", "closed a new connection: no fd")
                return True
        self._port.count("accept_paused", "no descriptor to free")
        if isinstance(self._server, GuardedListener):
            self._server.pause(time.monotonic() + PAUSE_S)
        return False


def guarded_transport(counters: PortCounters) -> Callable[..., GuardedTransport]:
    """The `transportClass` for SyncObj (pysyncobj/syncobj.py, SyncObj.__init__ calls
    `transportClass(self, selfNode, otherNodes)`), counting into `counters`."""
    return functools.partial(GuardedTransport, counters=counters)
