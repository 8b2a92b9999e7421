"""After a failover: does the new master carry on a client's IKE_SA? IKE rekey, CHILD_SA rekey
and DPD, each driven from the client and judged by the client's charon.

Rules: the judging is pure (IkeSa lists and log text in, values out); the drivers run swanctl
on the client (connection "home", CHILD_SA "net"), poll its vici and read its charon file log.
A check that fails or times out is a result ({"ok": False, "error": ...}), never an exception.
Elapsed times are time.monotonic(), from just before the command to the poll that saw the
outcome (so they include swanctl's start-up and up to POLL_S of polling).

The log lines matched are strongSwan 5.9.8's (ike_sa.c, message.c, task_manager_v2.c), as the
file logger writes them: `<time> <thread>[<GROUP>] [<name|id> ]<message>`:
  [IKE] sending DPD request
  [ENC] generating INFORMATIONAL request <msgid> [ ]      (IKEv2 DPD: an empty INFORMATIONAL)
  [ENC] parsed INFORMATIONAL response <msgid> [ ... ]
  [IKE] retransmit <n> of request with message ID <msgid>
  [IKE] giving up after <n> retransmits
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TypeVar

from . import cluster
from .observe import IkeSa
from .prereq import LabError
from .procs import Lab

CONNECTION = "home"  # the clients' connection (confgen.swanctl_client)
CHILD = "net"  # and its CHILD_SA
POLL_S = 0.2
LIST_S = 15.0  # how long a listing may take to show the ESTABLISHED IKE_SA (busy charon)
T = TypeVar("T")

_LINE = re.compile(r"\d+\[[A-Z]+\] (?:<[^>]*> )?(.*)$")
_DPD = re.compile(r"sending DPD request$")
_GEN_EMPTY_INFO = re.compile(r"generating INFORMATIONAL request (\d+) \[ \]$")
_PARSED_INFO_RESP = re.compile(r"parsed INFORMATIONAL response (\d+) \[.*\]$")
_RETRANSMIT = re.compile(r"retransmit (\d+) of request with message ID (\d+)$")
_GIVE_UP = re.compile(r"giving up after (\d+) retransmits$")


@dataclass(frozen=True)
class DpdExchange:
    """One DPD the client's charon started, as its log tells it."""

    msgid: int | None  # None while its INFORMATIONAL request has not been generated
    answered: bool  # the peer's INFORMATIONAL response with that message ID was parsed
    retransmits: int
    gave_up: bool


@dataclass
class _Dpd:
    """A DPD exchange while the log is read."""

    msgid: int | None = None
    answered: bool = False
    retransmits: int = 0
    gave_up: bool = False


# ---- judging (pure) ----


def ike_spis(sas: Sequence[IkeSa], conn: str = CONNECTION) -> tuple[str, ...]:
    """SPIs ('i_r' hex) of the ESTABLISHED IKE_SAs of connection `conn`."""
    return tuple(s.spis for s in sas if s.name == conn and s.state == "ESTABLISHED")


def any_ike_spis(sas: Sequence[IkeSa], conn: str = CONNECTION) -> tuple[str, ...]:
    """SPIs of every IKE_SA of `conn`, whatever its state (REKEYED, DELETING...)."""
    return tuple(s.spis for s in sas if s.name == conn)


def child_pairs(sas: Sequence[IkeSa], conn: str = CONNECTION) -> tuple[tuple[str, str], ...]:
    """(spi-in, spi-out) of every INSTALLED CHILD_SA under `conn`'s IKE_SAs."""
    return tuple(p for s in sas if s.name == conn for p in s.child_spis)


def replaced(before: Sequence[T], now: Sequence[T], present: Sequence[T]) -> bool:
    """Whether `now` holds something not in `before` and nothing of `before` is `present`."""
    return (bool(before) and any(x not in before for x in now)
            and not any(x in present for x in before))


def log_lines(text: str) -> list[str]:
    """The messages of charon file-log lines (time, thread, group and IKE_SA name cut off)."""
    out = []
    for line in text.splitlines():
        m = _LINE.search(line)
        if m:
            out.append(m.group(1).rstrip())
    return out


def dpd_exchanges(text: str) -> list[DpdExchange]:
    """The DPD exchanges a client's charon log shows, in order.

    A `sending DPD request` claims the next empty INFORMATIONAL request's message ID; a
    response or retransmit names its message ID; `giving up` (which names none) goes to the
    latest unanswered exchange. Meant for one IKE_SA's log (a client with one connection).
    """
    found: list[_Dpd] = []
    for msg in log_lines(text):
        if _DPD.match(msg):
            found.append(_Dpd())
        elif m := _GEN_EMPTY_INFO.match(msg):
            pending = [e for e in found if e.msgid is None]
            if pending:
                pending[0].msgid = int(m.group(1))
        elif m := _PARSED_INFO_RESP.match(msg):
            for e in found:
                e.answered = e.answered or e.msgid == int(m.group(1))
        elif m := _RETRANSMIT.match(msg):
            for e in found:
                if e.msgid == int(m.group(2)) and not e.answered:
                    e.retransmits = int(m.group(1))
        elif _GIVE_UP.match(msg):
            open_ = [e for e in found if e.msgid is not None and not e.answered]
            if open_:
                open_[-1].gave_up = True
    return [DpdExchange(*astuple(e)) for e in found]


def dpd_verdict(exchanges: Sequence[DpdExchange]) -> DpdExchange | None:
    """The first DPD exchange that ended (answered or given up); None while all are open."""
    return next((e for e in exchanges if e.answered or e.gave_up), None)


def dpd_error(exchanges: Sequence[DpdExchange], before: Sequence[str],
              after: Sequence[str]) -> str | None:
    """Why a DPD check failed (None: it passed), from the exchanges and IKE SPIs around it."""
    done = dpd_verdict(exchanges)
    if not before:
        return f"no ESTABLISHED IKE_SA {CONNECTION} before the DPD"
    if done is None:
        return "DPD sent, never answered" if exchanges else "no DPD sent"
    if not done.answered:
        return f"DPD given up after {done.retransmits} retransmits"
    if tuple(after) != tuple(before):
        return f"IKE_SA changed: {list(before)} -> {list(after)}"
    return None


def complete_text(data: bytes) -> str:
    """The complete lines of a log chunk (a line still being written is left out)."""
    return data[: data.rfind(b"\n") + 1].decode(errors="replace")


# ---- driving the lab ----


def charon_log(lab: Lab, client: str) -> Path:
    """The client charon's file log (cluster.write_configs: its `filelog`)."""
    return lab.log_path(client, "charon-file")


def log_offset(lab: Lab, client: str) -> int:
    """The client charon log's current size: pass it to dpd() to see only what follows."""
    try:
        return charon_log(lab, client).stat().st_size
    except FileNotFoundError:
        return 0


def read_log(lab: Lab, client: str, offset: int) -> str:
    """The complete lines the client's charon logged after `offset`."""
    try:
        with charon_log(lab, client).open("rb") as f:
            f.seek(offset)
            return complete_text(f.read())
    except FileNotFoundError:
        return ""


def _sas(lab: Lab, client: str) -> list[IkeSa]:
    """The client's IKE_SAs; none while its vici does not answer."""
    try:
        return cluster.client_sas(lab, client)
    except OSError:
        return []


def _established(lab: Lab, client: str) -> tuple[str, ...]:
    """ike_spis() of the client, asked again while its vici does not answer (a busy charon
    under emulation) or lists none ESTABLISHED, for up to LIST_S; () if it never does."""
    return _poll(lambda: ike_spis(_sas(lab, client)) or None, LIST_S) or ()


def _poll(probe: Callable[[], T | None], timeout: float) -> T | None:
    """Call `probe` every POLL_S until it returns something other than None, or time out."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None or time.monotonic() >= deadline:
            return got
        time.sleep(POLL_S)


def _rekey(lab: Lab, client: str, args: list[str], timeout: float,
           view: Callable[[list[IkeSa]], tuple[tuple[object, ...], tuple[object, ...]]],
           ) -> dict[str, object]:
    """Run `swanctl --rekey ARGS` and wait until view()'s (current, present) replaced before."""
    before, _ = view(_sas(lab, client))
    t0 = time.monotonic()
    result: dict[str, object] = {"ok": False, "before": list(before), "after": list(before),
                                 "ms": None, "error": None}
    if not before:
        return {**result, "error": f"no ESTABLISHED IKE_SA {CONNECTION} on {client}"}
    try:
        cluster.swanctl(lab, client, ["--rekey", *args], timeout=timeout)
    except (LabError, OSError, subprocess.SubprocessError) as e:
        return {**result, "error": str(e).splitlines()[0][:300] if str(e) else repr(e)}

    def probe() -> tuple[object, ...] | None:
        now, present = view(_sas(lab, client))
        return now if replaced(before, now, present) else None

    after = _poll(probe, max(0.0, timeout - (time.monotonic() - t0)))
    if after is None:
        now, _ = view(_sas(lab, client))
        return {**result, "after": list(now), "error": f"not replaced within {timeout:g} s"}
    return {**result, "ok": True, "after": list(after),
            "ms": round((time.monotonic() - t0) * 1000, 1)}


def ike_rekey(lab: Lab, client: str, timeout: float = 30) -> dict[str, object]:
    """Rekey the client's IKE_SA (CREATE_CHILD_SA, not reauth); wait for new SPIs, old gone.

    Returns {"ok", "before", "after" (IKE SPIs 'i_r'), "ms", "error"}.
    """
    return _rekey(lab, client, ["--ike", CONNECTION], timeout,
                  lambda sas: (ike_spis(sas), any_ike_spis(sas)))


def child_rekey(lab: Lab, client: str, timeout: float = 30) -> dict[str, object]:
    """Rekey the client's CHILD_SA; wait for a new INSTALLED SPI pair and the old one gone.

    Returns {"ok", "before", "after" ((spi-in, spi-out) pairs), "ms", "error"}.
    """
    return _rekey(lab, client, ["--child", CHILD], timeout,
                  lambda sas: (child_pairs(sas), child_pairs(sas)))


def dpd(lab: Lab, client: str, delay_s: float, timeout: float, *,
        offset: int | None = None) -> dict[str, object]:
    """Wait up to `timeout` s for a DPD the client sends and the new master answers.

    The caller stops the traffic towards the client first (DPD starts only after `delay_s`
    without inbound packets), and takes `offset` = log_offset() then (default: now). ok: a
    DPD logged after `offset` was answered, and the client's ESTABLISHED IKE_SAs are the same
    as when dpd() was called. Returns {"ok", "msgid", "retransmits", "before", "after", "ms",
    "error"}; "ms" runs from the call to the poll that saw the answer.
    """
    if timeout <= delay_s:
        raise ValueError(f"timeout {timeout} s leaves no time after the DPD delay {delay_s} s")
    start = log_offset(lab, client) if offset is None else offset
    before = _established(lab, client)
    t0 = time.monotonic()
    _poll(lambda: dpd_verdict(dpd_exchanges(read_log(lab, client, start))), timeout)
    ms = round((time.monotonic() - t0) * 1000, 1)
    seen = dpd_exchanges(read_log(lab, client, start))
    after = _established(lab, client)
    done = dpd_verdict(seen)
    error = dpd_error(seen, before, after)
    if error and done is None:
        error += f" within {timeout:g} s"
    return {"ok": error is None, "msgid": done.msgid if done else None,
            "retransmits": done.retransmits if done else 0, "before": list(before),
            "after": list(after), "ms": ms if done and done.answered else None,
            "error": error}
