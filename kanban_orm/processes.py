"""Is a process on this host still the one it was? The proof of death SQLite relies on.

A pid alone proves too little: once a process is gone the system may give its pid to
another one, which would make a dead worker look alive for ever. So a worker also
records its *start mark*: on Linux the boot id and the process's start time in clock
ticks since boot (``/proc/<pid>/stat``), which no later process with the same pid
shares. Where ``/proc`` is missing the mark is None and only a pid that no process
holds proves death: a reused pid then errs on the safe side (the claim waits for its
lease).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_PROC = Path("/proc")


def host_name() -> str:
    return socket.gethostname()


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold
    spaces and parentheses, so the split is at its last ``)``)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def start_mark(pid: int | None = None) -> str | None:
    """This process's (or ``pid``'s) start mark, or None where it cannot be read."""
    fields = _stat_fields(os.getpid() if pid is None else pid)
    boot = _boot_id()
    if fields is None or boot is None or len(fields) < 20:
        return None
    return f"{boot}:{fields[19]}"  # field 22 of stat: starttime


def is_gone(pid: int, mark: str | None) -> bool:
    """True when the process ``pid`` started at ``mark`` has ended on this host: no
    process holds the pid, the one that does is a zombie (killed, not yet reaped) or
    started at another time (the pid was reused, or the host rebooted)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process of another user holds the pid: look at its mark
    fields = _stat_fields(pid)
    if fields is None:
        # With /proc, the process exited between the two looks; without, nothing is known.
        return _PROC.is_dir()
    if fields[0] in ("Z", "X"):
        return True
    return mark is not None and start_mark(pid) != mark
