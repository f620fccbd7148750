"""Processes the tests start in their own sessions (Ray nodes, job drivers) and must leave none of."""
from __future__ import annotations

import os
import signal
import subprocess
import time


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def kill_session(sid: int, rounds: int = 5, pause: float = 0.2) -> None:
    """SIGKILL every process of a session we started: a job (driver, Ray daemons, workers) or a
    Ray node; a few rounds, since a dying parent may still spawn."""
    for _ in range(rounds):
        left = session_pids(sid)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(pause)


def stop_process(proc, timeout: float = 10) -> None:
    """Kill a ``subprocess.Popen`` started in its own session, with everything it started, and
    reap it (a process that will not die within ``timeout`` is left to the OS)."""
    kill_session(proc.pid)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def run_in_session(cmd: list[str], env: dict, cwd, timeout: float = 400) -> tuple[int, str]:
    """Run a job driver in its own session (stdout and stderr together) and kill whatever it
    left behind; ``(returncode, output)``."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    finally:
        kill_session(proc.pid)
    return proc.returncode, text
