"""hasync.raftconn: what the socket did not take goes out on the poller's write event, not
with the next message; a token's timestamp is read once it is authenticated."""

from __future__ import annotations

import socket
import time
from typing import Any

from cryptography.fernet import Fernet
from pysyncobj.poller import PollPoller

from hasync.raftconn import GuardedConnection, token_timestamp
from hasync.raftport import PortCounters


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection, non-blocking, with small buffers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.setblocking(False)
    return a, b


def test_a_message_larger_than_the_socket_buffers_goes_out_without_another_send() -> None:
    """A snapshot chunk the socket could not take at once used to wait for the next send
    (a heartbeat later: a 55 MB snapshot crossed in 11 s); now the write event sends it."""
    a, b = _tcp_pair()
    pa, pb = PollPoller(), PollPoller()
    sender = GuardedConnection(pa, PortCounters(), sock=a)
    receiver = GuardedConnection(pb, PortCounters(), sock=b)
    got: list[Any] = []
    receiver.setOnMessageReceivedCallback(got.append)
    sender.start()
    receiver.start()
    pa.poll(0.01)  # the first write event finds nothing to send: the sender stops watching
    pb.poll(0.01)
    big = b"\x5a" * (2 * 1024 * 1024)
    sender.send(big)
    assert sender.getSendBufferSize() > 0  # the socket took only part of it
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        pa.poll(0.01)
        pb.poll(0.01)
    sender.disconnect()
    receiver.disconnect()
    assert got == [big]


def test_a_tokens_timestamp_is_the_one_fernet_put_in() -> None:
    f = Fernet(Fernet.generate_key())
    for stamp in (0, 1, 1_700_000_000, 2 ** 40 + 5):
        token = f.encrypt_at_time(b"x" * 100, stamp)
        assert token_timestamp(token) == stamp == f.extract_timestamp(token)
