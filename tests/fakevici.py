"""A stand-in for charon's vici socket in unit and process tests (never in the lab): answers
`version`, `stats` (a settable incarnation and IKE_SA count) and `list-conns` (settable names),
as vici's protocol frames them (strongswan src/libcharon/plugins/vici/README.md); or never
answers ("mute"), stalls after a byte ("stall"), or answers bytes that are not vici
("garbage")."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from vici.protocol import Message, Packet


class FakeCharon:
    """A vici socket at `path`; `since`, `ikes` and `conns` may be changed while it runs."""

    def __init__(self, path: Path, mode: str = "answer", since: str = "Dec 05 10:00:00 2026",
                 ikes: int = 0, conns: tuple[str, ...] = ()) -> None:
        self.path, self.mode, self.since, self.ikes, self.conns = path, mode, since, ikes, conns
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.clients: list[socket.socket] = []
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(conn)
            if self.mode == "answer":
                threading.Thread(target=self._session, args=(conn,), daemon=True).start()
            elif self.mode == "stall":
                conn.sendall(b"\0")
            elif self.mode == "garbage":  # a framed answer that is not a vici response
                conn.recv(4096)
                conn.sendall(struct.pack("!I", 3) + b"\x63\xff\xfe")

    def _session(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, struct.error):
            while True:
                head = conn.recv(4, socket.MSG_WAITALL)
                if len(head) < 4:
                    return
                packet = conn.recv(struct.unpack("!I", head)[0], socket.MSG_WAITALL)
                kind, name = packet[0], packet[2:2 + packet[1]].decode()
                if kind in (Packet.EVENT_REGISTER, Packet.EVENT_UNREGISTER):
                    self._send(conn, bytes([Packet.EVENT_CONFIRM]))
                    continue
                self.requests.append(name)
                for event in self._events(name):
                    self._send(conn, bytes([Packet.EVENT, len(b"list-conn")]) + b"list-conn"
                               + Message.serialize(event))
                self._send(conn, bytes([Packet.CMD_RESPONSE]) + Message.serialize(
                    self._answer(name)))

    def _events(self, name: str) -> list[dict[str, Any]]:
        return [{c: {"local_addrs": ["%any"]}} for c in self.conns] if name == "list-conns" \
            else []

    def _answer(self, name: str) -> dict[str, Any]:
        if name == "stats":
            return {"uptime": {"running": "1 minute", "since": self.since},
                    "ikesas": {"total": str(self.ikes), "half-open": "0"}}
        if name == "version":
            return {"daemon": "charon", "version": "5.9.8"}
        return {}

    @staticmethod
    def _send(conn: socket.socket, body: bytes) -> None:
        conn.sendall(struct.pack("!I", len(body)) + body)

    def stop(self) -> None:
        """Close the listening socket and every connection."""
        self.sock.close()
        for conn in self.clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
