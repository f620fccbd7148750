"""S3 faults (issue 16): every client retries under one policy (ingest/s3_retry.py), through
tests/fault_proxy.py in front of SeaweedFS -- 503 SlowDown on one request in four, connections
reset in the middle of a body -- and a failure that outlasts the retries names the object."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.test_segment import REPO, job_env, make_bundle, put_tree, read_raster, run_job


def start_proxy(server, *flags: str) -> SimpleNamespace:
    """The proxy as its own process (never in a process that does GDAL writes: STACK.md)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.fault_proxy", "--upstream",
                             server.host_port, *flags], cwd=REPO, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[1])
    return SimpleNamespace(proc=proc, endpoint=f"http://127.0.0.1:{port}")


def stop_proxy(proxy) -> None:
    proxy.proc.kill()  # by PID: the Popen we started
    proxy.proc.wait(timeout=10)


@pytest.fixture
def proxy(s3_server):
    p = start_proxy(s3_server)
    yield p
    stop_proxy(p)


def test_storage_round_trips_through_faults(s3_env, proxy, monkeypatch):
    from ingest import storage, versioned

    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    # adaptive mode would also rate-limit the client after the first 503 (seconds a request)
    monkeypatch.setenv("SAMSP_S3_RETRY_MODE", "standard")
    root = f"s3://{s3_env.bucket}/faults-{uuid.uuid4().hex[:8]}"
    blobs = {f"{root}/b{i}.bin": os.urandom(20_000 + i) for i in range(6)}
    storage.write_many(blobs)  # concurrent PUTs, some answered 503
    assert storage.read_many(list(blobs)) == blobs  # GETs, some cut mid-body
    for uri, data in blobs.items():
        assert storage.read_bytes(uri) == data
    assert versioned.write_if_version(f"{root}/s.json", b"x" * 5000, None)
    data, version = versioned.read_versioned(f"{root}/s.json")
    assert data == b"x" * 5000 and versioned.write_if_version(f"{root}/s.json", b"y", version)


def test_exhausted_retries_name_the_key_and_the_error(s3_env, monkeypatch):
    from ingest import storage
    from ingest.s3_retry import S3Failure

    failing = start_proxy(s3_env, "--fail-all")
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", failing.endpoint)
        monkeypatch.setenv("SAMSP_S3_MAX_RETRIES", "1")
        monkeypatch.setenv("SAMSP_S3_RETRY_MODE", "standard")
        uri = f"s3://{s3_env.bucket}/faults/never.bin"
        with pytest.raises(S3Failure) as got:
            storage.write_bytes(uri, b"1")
    finally:
        stop_proxy(failing)
    msg = str(got.value)
    assert msg.startswith(uri) and "SlowDown" in msg and "\n" not in msg, msg
    assert "after 1 retries" in msg


@pytest.mark.slow
def test_segment_job_through_faults_equals_a_clean_run(s3_server, proxy, tmp_path):
    from ingest import storage
    from ingest.synthetic import make_geotiff

    root = f"s3://{s3_server.bucket}/faultjob-{uuid.uuid4().hex[:8]}"
    scene = make_geotiff(str(tmp_path / "scene.tif"), 200, 250, seed=5)
    model = make_bundle(str(tmp_path / "model"))
    with storage.environ(s3_server.env()):
        storage.put_file(scene, f"{root}/in/scene.tif")
        put_tree(Path(model), f"{root}/model")
    extra = ["--set", "pipeline.engine=local", "--set", "output.stac=false",
             "--set", "predict.num_actors=1", "--set", "storage.retry_mode=standard",
             "--set", "storage.retry_delay_s=0.1"]
    clean_env = job_env(s3_server)
    faulty_env = dict(clean_env, AWS_ENDPOINT_URL=proxy.endpoint)
    runs = {}
    for name, env in (("clean", clean_env), ("faulty", faulty_env)):
        out = run_job([f"{root}/in/scene.tif"], f"{root}/{name}", f"{root}/model", env, extra)
        assert out.rc == 0, out.out[-3000:]
        assert '"ok": 1' in out.out.strip().splitlines()[-1], out.out[-2000:]
        runs[name] = out
    with storage.environ(s3_server.env()):
        for name in ("mask.tif", "prob.tif"):
            a = read_raster(f"{root}/clean/scene/{name}")
            b = read_raster(f"{root}/faulty/scene/{name}")
            np.testing.assert_array_equal(a[0], b[0], err_msg=name)
            assert a[1:3] == b[1:3]


def test_retry_mode_reaches_botocore_and_a_bad_one_is_named(monkeypatch):
    from ingest import s3_retry

    monkeypatch.delenv(s3_retry.ENV_RETRY_MODE, raising=False)
    monkeypatch.setenv(s3_retry.ENV_MAX_RETRIES, "3")
    assert s3_retry.botocore_config() == {"retries": {"max_attempts": 4, "mode": "adaptive"}}
    s3_retry.configure(retry_mode_="standard")
    assert s3_retry.botocore_config()["retries"]["mode"] == "standard"
    monkeypatch.setenv(s3_retry.ENV_RETRY_MODE, "legacyish")
    with pytest.raises(ValueError, match="SAMSP_S3_RETRY_MODE='legacyish'"):
        s3_retry.botocore_config()


def test_retry_mode_config_field_is_checked():
    from pydantic import ValidationError

    from jobs.segmentation.config import SegmentConfig

    assert SegmentConfig.model_validate({"storage": {"retry_mode": "standard"}}).storage.retry_mode \
        == "standard"
    with pytest.raises(ValidationError, match="retry_mode"):
        SegmentConfig.model_validate({"storage": {"retry_mode": "fast"}})
