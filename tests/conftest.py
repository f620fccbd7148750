"""Shared fixtures: a real SeaweedFS S3 server and a real local Ray cluster."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.local_stack.local_s3 import S3Server, start_s3_server

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()

# Ray 2.60 turns token auth on by default; local tests and `ray job submit` run without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Tests run many small torch models next to Ray workers on 2 cores: one thread each avoids
# oversubscription (a 2.6 s test took 50 s with default threads under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; skips the test when it is absent (fresh clone, CI)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data/{'/'.join(parts)} not present")
    return path


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """The server's credentials/endpoint in the standard AWS environment (what production reads)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ctx = ray.init(address="local", num_cpus=2, include_dashboard=False,
                   ignore_reinit_error=True, log_to_driver=False,
                   runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield ctx
    ray.shutdown()


def save_random_bundle(path, model_type: str = "vit_tiny", iterations: int = 1,
                       threshold: float = 0.5) -> str:
    """A SAM-SP bundle with random weights (seed 0) at ``path``: no real weights exist here."""
    import torch  # only the tests that build models pay for torch

    from samsp import SamSP, build_sam, save_bundle

    torch.manual_seed(0)
    model = SamSP(build_sam(model_type), iterations=iterations, prompt="box")
    save_bundle(model, str(path), {"threshold": threshold})
    return str(path)


def png_bomb(path, side: int = 60_000) -> str:
    """A PNG whose header declares ``side`` x ``side`` grey pixels (no pixel data follows)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1))) + chunk(b"IEND", b""))
    return str(path)
