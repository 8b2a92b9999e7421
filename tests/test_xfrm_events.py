"""XFRM SA notices decoded as what they say about the SAs of an earlier read (xfrm/events.py),
and the guard's watch that keeps the account (guard/watch.py, D273)."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hasync.guard.watch import SaWatch
from hasync.xfrm.events import EVERY, GONE, SaEvents, sa_events
from hasync.xfrm.replayrows import parse_replay_rows
from hasync.xfrm.structs import Mark

DATA = Path(__file__).parent / "data" / "xfrm"
HDR = struct.Struct("=IHHII")
NEWSA, DELSA, EXPIRE, UPDSA, FLUSHSA = 0x10, 0x11, 0x18, 0x1A, 0x1C


def _lines(name: str) -> dict[str, bytes]:
    return {line.split()[0]: bytes.fromhex(line.split()[1])
            for line in (DATA / name).read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each netlink message in a datagram."""
    out, off = [], 0
    while off < len(data):
        length, kind = HDR.unpack_from(data, off)[:2]
        out.append((kind, data[off + HDR.size:off + length]))
        off += (length + 3) & ~3
    return out


NOTICES = _lines("vm_kernel_6.1_notices.txt")  # what the VM's kernel sent (see its header)
DUMP = _lines("vm_kernel_6.1_esp.txt")["getsa_dump_esp.0"]
INFOS = [body for kind, body in _messages(DUMP) if kind == NEWSA]  # 4 SAs, the VM kernel's
ROWS = parse_replay_rows(DUMP, 21).rows


def msg(kind: int, body: bytes) -> bytes:
    """One netlink message as the kernel multicasts it (seq 0, pid 0)."""
    pad = b"\0" * (-len(body) % 4)
    return HDR.pack(HDR.size + len(body), kind, 0, 0, 0) + body + pad


def usersa_id(info: bytes) -> bytes:
    """The xfrm_usersa_id of an xfrm_usersa_info: daddr, spi, family, proto (DELSA)."""
    family = struct.unpack_from("=H", info, 212)[0]
    return info[56:72] + info[72:76] + struct.pack("=HBx", family, info[76])


def delsa(info: bytes) -> bytes:
    """A DELSA notice: the id, then the state in XFRMA_SA (xfrm_notify_sa())."""
    attr = struct.pack("=HH", 4 + 224, 6) + info[:224]  # XFRMA_SA = 6
    return msg(DELSA, usersa_id(info) + attr)


def key(row: object) -> tuple[str, int, int]:
    return row.daddr, row.spi, row.proto  # type: ignore[attr-defined]


V4, V6 = "198.51.100.4", "2001:db8::2"


def test_the_kernels_notices_say_what_changed() -> None:
    """Each captured notice, decoded: new instances with their replay state and mark, gone
    ones (a hard expiry sends only EXPIRE), nothing for a soft expiry, EVERY for UPDSA and
    FLUSHSA."""
    def said(name: str) -> object:
        ev = sa_events(NOTICES[name])
        if ev.every:
            return EVERY
        return [(k, None if r is None else (r.esn, r.window, r.oseq, r.seq, r.reqid, r.mark))
                for k, r in ev.sas]
    assert said("newsa_esn.0") == [((V4, 0xC0FFEE01, 50), (True, 128, 0, 0, 1, None))]
    assert said("newsa_natt.0") == [(("192.0.2.1", 0xC0FFEE02, 50), (False, 32, 0, 0, 1, None))]
    assert said("newsa_v6.0") == [((V6, 0xC0FFEE03, 50), (True, 64, 0, 0, 2, None))]
    assert said("newsa_mark.0") == [((V4, 0xC0FFEE05, 50), (False, 32, 0, 0, 5, Mark(16, 255)))]
    assert said("delsa.0") == [((V4, 0xC0FFEE01, 50), GONE)]
    assert said("delsa_mark.0") == [((V4, 0xC0FFEE05, 50), GONE)]
    assert said("expire_soft.0") == []
    assert said("expire_hard.0") == [((V4, 0xC0FFEE07, 50), GONE)]
    assert said("updsa.0") is EVERY and said("flushsa.0") is EVERY
    assert set(NOTICES) == {"newsa_esn.0", "newsa_natt.0", "newsa_v6.0", "newsa_mark.0",
                            "updsa.0", "delsa.0", "delsa_mark.0", "newsa_soft.0",
                            "expire_soft.0", "newsa_hard.0", "expire_hard.0", "flushsa.0"}


def test_every_truncation_of_a_kernel_notice_is_every() -> None:
    for name, data in NOTICES.items():
        for end in range(1, len(data)):
            assert sa_events(data[:end]) is EVERY, (name, end)


def test_a_newsa_notice_gives_its_new_instance_as_a_dump_row_would() -> None:
    data = b"".join(msg(NEWSA, info) for info in INFOS)
    ev = sa_events(data)
    assert not ev.every
    rows = {k: r for k, r in ev.sas if r is not None}
    assert {k for k, _ in ev.sas} == {key(r) for r in ROWS}
    for r in ROWS:
        assert rows[key(r)] == r


def test_a_delsa_and_a_hard_expire_say_gone_a_soft_expire_nothing() -> None:
    info = INFOS[0]
    (row,) = [r for r in ROWS if key(r) == sa_events(msg(NEWSA, info)).sas[0][0]]
    assert sa_events(delsa(info)) == SaEvents(sas=((key(row), GONE),))
    assert sa_events(msg(EXPIRE, info[:224] + b"\x01" + b"\0" * 7)) == SaEvents(
        sas=((key(row), GONE),))
    assert sa_events(msg(EXPIRE, info[:224] + b"\x00" + b"\0" * 7)) == SaEvents()


def test_notices_that_may_touch_sas_they_do_not_name_say_every() -> None:
    assert sa_events(msg(FLUSHSA, b"\x32\0\0\0")) is EVERY
    assert sa_events(msg(UPDSA, INFOS[0])) is EVERY
    assert sa_events(msg(0x21, b"\0" * 64)) is EVERY  # MIGRATE
    assert sa_events(msg(NEWSA, INFOS[0]) + msg(FLUSHSA, b"\x32\0\0\0")) is EVERY


def test_every_truncation_is_every_or_the_notices_before_the_cut() -> None:
    whole = b"".join([msg(NEWSA, INFOS[0]), delsa(INFOS[1]), msg(NEWSA, INFOS[2])])
    full = sa_events(whole)
    for end in range(len(whole)):
        ev = sa_events(whole[:end])
        assert ev is EVERY or full.sas[:len(ev.sas)] == ev.sas, end


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 3), st.data())
def test_no_datagram_raises(junk: bytes, at: int, data: st.DataObject) -> None:
    base = msg(NEWSA, INFOS[at])
    i = data.draw(st.integers(0, len(base)))
    for candidate in (junk, base[:i] + junk, base[:i] + junk + base[i:]):
        ev = sa_events(candidate)
        assert isinstance(ev, SaEvents)


class FakeSocket:
    """A notice socket: queued datagrams, or errors, read until BlockingIOError."""

    def __init__(self) -> None:
        self.queue: list[bytes | OSError] = []
        self.closed = False

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise BlockingIOError
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def watch() -> tuple[SaWatch, FakeSocket]:
    sock = FakeSocket()
    return SaWatch(lambda: sock), sock  # type: ignore[arg-type, return-value]


def test_the_watch_accounts_for_notices_since_the_last_good_read_began() -> None:
    w, sock = watch()
    assert w.changes() is None  # no read yet
    sock.queue.append(msg(NEWSA, INFOS[0]))
    w.begin()  # queued before the read: the read sees it
    assert w.changes() == {}
    sock.queue.append(delsa(INFOS[0]))  # during the read: counted
    w.end(True)
    k = key(ROWS[[key(r) for r in ROWS].index(sa_events(msg(NEWSA, INFOS[0])).sas[0][0])])
    assert w.changes() == {k: GONE}
    sock.queue.append(msg(NEWSA, INFOS[0]))  # the last notice of a key wins
    assert w.changes()[k] is not GONE  # type: ignore[index]


def test_a_failed_read_keeps_the_account_from_before_it() -> None:
    w, sock = watch()
    w.begin()
    w.end(True)
    sock.queue.append(delsa(INFOS[1]))
    w.begin()
    sock.queue.append(delsa(INFOS[2]))
    w.end(False)
    assert len(w.changes() or {}) == 2


def test_lost_or_unplaced_notices_make_the_account_unknown_until_the_next_read() -> None:
    w, sock = watch()
    w.begin()
    w.end(True)
    sock.queue += [OSError(errno.ENOBUFS, "overflow"), msg(NEWSA, INFOS[0])]
    assert w.changes() is None and w.counters["unknown:overflow"] == 1
    w.begin()
    w.end(True)
    assert w.changes() == {}
    sock.queue.append(msg(FLUSHSA, b"\x32\0\0\0"))
    assert w.changes() is None and w.counters["unknown:every"] == 1
    w.begin()
    sock.queue.append(OSError(errno.ENOBUFS, "overflow"))  # during the read
    w.end(True)
    assert w.changes() is None


def test_a_watch_that_cannot_open_its_socket_knows_nothing() -> None:
    def fail() -> FakeSocket:
        raise PermissionError(errno.EPERM, "no")
    w = SaWatch(fail)  # type: ignore[arg-type]
    w.begin()
    w.end(True)
    assert w.changes() is None and w.counters["open_failed"] == 1
