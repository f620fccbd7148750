"""A real STAC API for tests: ``rustac serve`` (memory backend, or DuckDB over a stac-geoparquet
file) on a free loopback port, in its own session, stopped by PID."""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jobs.local_stack.local_s3 import stop_session, venv_binary
from jobs.runtime.ports import free_port  # one way to run a server


def rustac_binary() -> str:
    return venv_binary("rustac", "rustac")


@dataclass
class StacServer:
    url: str
    pid: int
    log_path: str
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def stop(self) -> None:
        stop_session(self.pid, self._proc, 10)
        try:
            os.remove(self.log_path)
        except OSError:
            pass


def start_stac_server(*hrefs: str, timeout: float = 60.0, extra_args: tuple[str, ...] = ()) -> StacServer:
    port = free_port()
    fd, log_path = tempfile.mkstemp(prefix="samsp-rustac-", suffix=".log")
    os.close(fd)
    log = open(log_path, "wb")
    cmd = [rustac_binary(), "serve", *map(str, hrefs), "--addr", f"127.0.0.1:{port}", *extra_args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, NO_PROXY="127.0.0.1,localhost"))
    server = StacServer(url=f"http://127.0.0.1:{port}", pid=proc.pid, log_path=log_path, _proc=proc)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = Path(log_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"rustac serve exited early (rc={proc.returncode}):\n{text}")
        try:
            with urllib.request.urlopen(server.url + "/", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except Exception as exc:  # noqa: BLE001 - still starting
            last = exc
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"rustac serve did not answer within {timeout}s: {last}")
