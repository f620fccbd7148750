"""Log hygiene of a healthy run (Ray engine, scenes on S3): the job's own lines -- one per scene
start and finish, progress and a run summary -- and no error-level line nor repeated
third-party INFO (botocore's credentials line at most once)."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.test_segment import job_env, make_bundle, put_tree, run_job

pytestmark = [pytest.mark.s3, pytest.mark.ray, pytest.mark.slow]


def test_healthy_ray_run_prints_no_error_and_no_repeated_third_party_line(s3_env, tmp_path):
    from ingest import storage
    from ingest.synthetic import make_geotiff

    root = f"s3://{s3_env.bucket}/logs-{uuid.uuid4().hex[:8]}"
    for i in range(2):
        storage.put_file(make_geotiff(str(tmp_path / f"s{i}.tif"), 200, 250, seed=40 + i),
                         f"{root}/in/s{i}.tif")
    put_tree(Path(make_bundle(str(tmp_path / "model"))), f"{root}/model")
    res = run_job([f"{root}/in/"], f"{root}/out", f"{root}/model", job_env(s3_env),
                  extra=["--set", "output.stac=false"])
    assert res.rc == 0, res.out[-4000:]
    lines = res.out.splitlines()
    errors = [ln for ln in lines if " ERROR " in ln or re.match(r"^\[[^\]]* E \d+ \d+\]", ln)
              or " E " in ln[:40]]
    assert not errors, errors
    assert sum("Found credentials" in ln for ln in lines) <= 1, res.out[-4000:]
    assert "has constructor arguments in the object store" not in res.out
    # Ray Data's multi-line progress blocks are replaced by the job's own progress line
    assert "logging_progress" not in res.out
    assert re.search(r"progress: 12/12 tiles .*, 2/2 scenes computed", res.out), res.out[-3000:]
    for sid in ("s0", "s1"):
        assert sum(f"scene {sid}: 250x200" in ln for ln in lines) == 1  # its start
        assert sum(f"scene {sid}: ok " in ln for ln in lines) == 1      # its finish
    assert sum(" done in " in ln and "2 ok, 0 skipped, 0 failed of 2" in ln for ln in lines) == 1
