"""Log hygiene of a healthy run (Ray engine, scenes on S3): the job's own lines -- one per scene
start and finish, progress and a run summary -- and no error-level line nor repeated
third-party INFO (botocore's credentials line at most once)."""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from tests.test_segment import job_env, make_bundle, put_tree, run_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.s3
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
    assert "RayDeprecationWarning" not in res.out  # our own ray_remote_args use
    # Ray Data's multi-line progress blocks are replaced by the job's own progress line
    assert "logging_progress" not in res.out
    assert re.search(r"progress: 12/12 tiles .*, 2/2 scenes computed", res.out), res.out[-3000:]
    for sid in ("s0", "s1"):
        assert sum(f"scene {sid}: 250x200" in ln for ln in lines) == 1  # its start
        assert sum(f"scene {sid}: ok " in ln for ln in lines) == 1      # its finish
    assert sum(" done in " in ln and "2 ok, 0 skipped, 0 failed of 2" in ln for ln in lines) == 1


def test_progress_lines_count_tiles_as_they_complete_without_ray_data_progress(tmp_path):
    """16 tiles in actor calls of 2 (batch 1, 2 actors): a ``progress:`` line per ~10 % of the
    tiles as blocks come back -- intermediate counts, not ``1/16`` then ``16/16`` -- and none
    of Ray Data's own progress bars, ``Running Dataset`` blocks or start-up lines."""
    from ingest.synthetic import make_geotiff

    scene = make_geotiff(str(tmp_path / "s0.tif"), 440, 440, seed=7)  # 4 x 4 tiles of 128
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1")
    for name in ("RAY_ADDRESS", "SAMSP_SEGMENT_KILL_AFTER_TILES"):
        env.pop(name, None)
    res = run_job([scene], str(tmp_path / "out"), make_bundle(str(tmp_path / "model")), env,
                  extra=["--set", "output.stac=false"])
    assert res.rc == 0, res.out[-4000:]
    counts = [(int(m[1]), int(m[2])) for m in re.finditer(r"progress: (\d+)/(\d+) tiles", res.out)]
    assert counts and counts[-1] == (16, 16), res.out[-3000:]
    done = [d for d, _ in counts]
    assert done == sorted(set(done)), counts  # one line per step, counts only grow
    assert len([d for d in done if 0 < d < 16]) >= 3, counts  # a steady cadence, not 1 -> 16
    for noise in ("Running Dataset", "logging_progress", "Progress bars",
                  "Starting execution of Dataset", "Execution plan of Dataset"):
        assert noise not in res.out, (noise, res.out[-3000:])


@pytest.mark.parametrize("tiles, num_gpus", [(49, 0.0), (49, 1.0), (36, 0.0), (17, 1.0), (3, 0.0)])
def test_every_stage_takes_one_range_block_per_call(tiles, num_gpus):
    """``ray.data.range`` cuts ``tiles // n_blocks`` rows per block; a stage's batch_size above
    that made Ray Data bundle two blocks per call (49 tiles: 2 actor calls of 24, whose rows
    came back only at their end), so no batch_size may exceed it."""
    import ray

    import jobs.segmentation.engines as segment
    from jobs.segmentation.config import SegmentConfig

    seen: dict = {}

    class Spy:
        def map_batches(self, fn, **kwargs):
            seen[getattr(fn, "__name__", str(fn))] = kwargs["batch_size"]
            return self

    def fake_range(n, override_num_blocks):
        seen["range"] = (n, override_num_blocks)
        return Spy()

    res = {"actors": 2, "num_gpus": num_gpus, "num_cpus": 1.0, "torch_threads": 1,
           "tile_bytes": 3 * 256 * 256}
    rows = [{"scene": "s", "spec": "{}", "tile": "{}"}] * tiles
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray.data, "range", fake_range)
        mp.setattr(ray, "put", lambda obj: obj)
        segment.build_dataset(rows, SegmentConfig(), "unused", 0.5, res)
    n, n_blocks = seen.pop("range")
    per_block = n // n_blocks
    assert set(seen) == {"expand_rows", "PredictWriter"} | ({"read_tiles"} if num_gpus else set())
    assert all(1 <= bs <= per_block for bs in seen.values()), (per_block, seen)
    assert res["block_tiles"] == seen["PredictWriter"]


def test_progress_reports_whole_blocks_every_tenth(caplog):
    """A line when a block's last row takes the count past another ~10 % (or after
    ``interval_s``), never for a block's first row alone; the last tile always has one."""
    from jobs.segmentation.progress import Progress

    progress = Progress(100, 1, interval_s=3600)
    with caplog.at_level("INFO", logger="samsp.segment"):
        for start in range(0, 100, 7):  # blocks of 7 rows, as the engines hand them over
            n = min(7, 100 - start)
            for i in range(n):
                progress.tile(start + i == 99, report=i == n - 1)
    done = [int(re.search(r"progress: (\d+)/100", r.getMessage())[1]) for r in caplog.records]
    assert done == [14, 21, 35, 42, 56, 63, 70, 84, 91, 100]
    assert caplog.records[-1].getMessage().endswith("1/1 scenes computed")
