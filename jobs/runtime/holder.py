"""Who holds a lease: this process named so that another run can tell, without waiting for a
heartbeat to go stale, that the holder is gone.

A holder is ``{host, boot_id, pid, pid_start}``. On the same host and boot, a holder whose pid no
longer exists -- or now belongs to a process that started at another time (a reused pid) -- is
dead for certain (a CronJob retry right after a kill -9, an OOM-killed driver). On another host
nothing can be known from here: the lease's heartbeat age decides.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache


@lru_cache(maxsize=1)
def boot_id() -> str:
    """This machine's boot id ('' where the OS does not tell): pids restart at each boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (None: no such process, or no
    /proc). Field 22 of /proc/PID/stat, read after the command name (which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def this_process() -> dict:
    """The holder record of the calling process."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": boot_id(), "pid": pid,
            "pid_start": process_start(pid)}


def holder_is_dead(holder: object) -> bool:
    """True only when ``holder`` is certainly gone: same host and boot, and its pid is free or
    names a process that started at another time. Unknown (another host, no /proc, a record
    from an older samsp): False, and the heartbeat decides."""
    if not isinstance(holder, dict) or not boot_id():
        return False
    if holder.get("host") != socket.gethostname() or holder.get("boot_id") != boot_id():
        return False
    try:
        pid, started = int(holder["pid"]), holder.get("pid_start")
    except (KeyError, TypeError, ValueError):
        return False
    now = process_start(pid)
    return now is None or (started is not None and now != started)


__all__ = ["this_process", "holder_is_dead", "process_start", "boot_id"]
