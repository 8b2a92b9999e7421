"""pysyncobj, imported so that it leaves the socket module alone.

Rules: every hasync import of pysyncobj goes through here. pysyncobj 0.3.17
(pysyncobj/win_inet_pton.py, imported by tcp_connection.py) assigns its ctypes Windows
`inet_ntop` to `socket.inet_ntop` on every OS, which breaks `socket.inet_ntop` for the whole
process on Linux ("not_windows() takes 0 positional arguments"); the original is put back.
"""

from __future__ import annotations

import socket

_inet_ntop, _inet_pton = socket.inet_ntop, socket.inet_pton

from pysyncobj import SyncObj, SyncObjConf, replicated  # noqa: E402

socket.inet_ntop, socket.inet_pton = _inet_ntop, _inet_pton

__all__ = ["SyncObj", "SyncObjConf", "replicated"]
