"""Lanes × torch threads on CPU (jobs/inference/lanes.py): every core busy whatever the tile
count, and the same bytes whichever layout computed them."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from jobs.inference.lanes import Layout, actor_threads, cpu_layout, model_batches, spread_threads


def test_model_batches_edges():
    assert model_batches(0, 8) == 1 and model_batches(1, 8) == 1 and model_batches(8, 8) == 1
    assert model_batches(9, 8) == 2 and model_batches(17, 8) == 3
    assert model_batches(5, 0) == 5  # a batch size of 0 counts as 1
    assert model_batches(-3, 8) == 1


def test_spread_threads_edges():
    assert spread_threads(2, 1) == 2 and spread_threads(2, 2) == 1 and spread_threads(3, 2) == 1
    assert spread_threads(1, 4) == 1  # never 0 threads
    assert spread_threads(16, 0) == 16  # 0 streams counts as 1
    assert spread_threads(16, 4, requested=3) == 3  # an explicit count is kept


@pytest.mark.parametrize("cores,tiles,batch,streams,threads,want", [
    (2, 1, 8, 0, 0, (1, 2)),        # one tile: one lane with both cores
    (2, 8, 8, 0, 0, (1, 2)),        # one model batch: still one lane
    (2, 9, 8, 0, 0, (2, 1)),        # two batches: a lane each, single-threaded (today's layout)
    (2, 1000, 8, 0, 0, (2, 1)),     # many tiles: one single-threaded lane per core
    (16, 20, 8, 0, 0, (3, 5)),      # 3 batches on 16 cores: 3 lanes x 5 threads (15 <= 16)
    (16, 10_000, 8, 0, 0, (16, 1)),
    (1, 1, 8, 0, 0, (1, 1)),
    (4, 0, 8, 0, 0, (1, 4)),        # nothing to compute: one lane, never 0
    (4, 1000, 8, 3, 0, (3, 1)),     # predict.num_actors=3 with many tiles
    (4, 1, 8, 3, 0, (1, 4)),        # ... capped by the batches there are
    (4, 1, 8, 0, 1, (1, 1)),        # predict.torch_threads=1 pins the threads
    (4, 1000, 8, 2, 0, (2, 2)),     # 2 lanes asked for on 4 cores: 2 threads each
    (0, 5, 1, 0, 0, (1, 1)),        # no core count known: 1
])
def test_cpu_layout(cores, tiles, batch, streams, threads, want):
    got = cpu_layout(cores, tiles, batch, streams, threads)
    assert got == Layout(*want)
    if not threads:
        assert got.streams * got.threads <= max(1, cores)  # never oversubscribed


def test_actor_threads_edges():
    assert actor_threads(2, 2, 2) == 1 and actor_threads(2, 2, 1) == 2
    assert actor_threads(16, 8, 1) == 8  # one actor lives on one node: its cores, not the cluster's
    assert actor_threads(4, 1, 2) == 1  # four one-CPU nodes
    assert actor_threads(16, 0, 3) == 5  # node size unknown: the cluster's share
    assert actor_threads(1, 1, 4) == 1 and actor_threads(8, 8, 2, requested=1) == 1


def test_local_lanes_follow_the_tile_count():
    from jobs.runtime.config import load_config
    from jobs.segmentation.config import SegmentConfig
    from jobs.segmentation.engines import local_lanes

    cfg = load_config(SegmentConfig, None, ["ray.num_cpus=4"])
    assert local_lanes(cfg, "cpu", 1) == (1, 4)
    assert local_lanes(cfg, "cpu", 17) == (3, 1)
    assert local_lanes(cfg, "cpu", 10_000) == (4, 1)
    assert local_lanes(cfg, "cuda", 1) == (1, 1)


def test_ray_actors_take_the_idle_cores_when_tiles_are_few(monkeypatch):
    import ray

    from jobs.runtime.config import load_config
    from jobs.segmentation.config import SegmentConfig
    from jobs.inference.actors import ray_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr("jobs.inference.actors.largest_node_cpus", lambda default: 2.0)
    cfg = load_config(SegmentConfig, None, [])
    one = ray_resources(cfg, 1)
    assert one["actors"] == 1 and one["torch_threads"] == 2 and one["num_cpus"] <= 1.0
    many = ray_resources(cfg, 1000)
    assert many["actors"] == 2 and many["torch_threads"] == 1
    pinned = ray_resources(load_config(SegmentConfig, None, ["predict.torch_threads=1"]), 1)
    assert pinned["torch_threads"] == 1


# ----------------------------------------------------------------------------- same bytes

@pytest.mark.slow
def test_one_lane_two_threads_equals_two_lanes_one_thread(tmp_path):
    """fp32 on CPU: the 1-lane-2-thread and the 2-lane-1-thread layouts write the same bytes
    (vit_micro, probabilities spread over (0, 1)). Larger encoders can differ by an ulp between
    thread counts (README "Threads and reproducibility")."""
    from ingest.synthetic import make_geotiff
    from tests.test_segment import job_env, run_job
    from tests.test_segment_reruns import _assert_same, _bundle, _result

    scene = make_geotiff(str(tmp_path / "a.tif"), 200, 300, seed=4)  # 6 tiles of 128 px
    model = _bundle(tmp_path / "model", 0)
    env = job_env(SimpleNamespace(env=dict))
    base = ["--set", "pipeline.engine=local", "--set", "predict.precision=fp32"]
    auto = run_job([scene], str(tmp_path / "auto"), model, env,
                   extra=[*base, "--set", "predict.batch_size=8", "--set", "predict.torch_threads=0"])
    cores = os.cpu_count() or 1
    assert auto.rc == 0, auto.out[-3000:]
    assert f"1 lane(s) x {cores} torch thread(s)" in auto.out  # 6 tiles = one batch: one lane
    one = run_job([scene], str(tmp_path / "one"), model, env,
                  extra=[*base, "--set", "predict.num_actors=1", "--set", "predict.torch_threads=2"])
    two = run_job([scene], str(tmp_path / "two"), model, env,
                  extra=[*base, "--set", "predict.num_actors=2", "--set", "predict.torch_threads=1"])
    assert one.rc == two.rc == 0, (one.out[-2000:], two.out[-2000:])
    assert "1 lane(s) x 2 torch thread(s)" in one.out and "2 lane(s) x 1 torch" in two.out
    _assert_same(_result(tmp_path / "one"), _result(tmp_path / "two"))
