"""GPU readiness (issue 19), checked on a CPU machine -- what a GPU night would hit first.

What these tests cover, honestly: the decisions and the error paths, with the CUDA side
simulated (a Ray node that advertises a GPU torch cannot use, monkeypatched ``torch.cuda``, a
fake model raising ``torch.OutOfMemoryError``). No CUDA kernel runs here; real cards are
``bench/gpu_check.sh``'s job.

1. A worker given a GPU but no usable CUDA fails with ``CudaUnavailableError`` (one line), a
   zero-GPU worker has the node's GPUs hidden.
2. ``predict.num_gpus=1`` on a cluster without GPUs yet stays a GPU request (pending actors the
   autoscaler would serve); only a local Ray this process started downgrades to CPU.
3. CUDA out-of-memory halves the model batch (logged, kept), down to one tile; other CUDA
   errors propagate (in a Ray actor: the process ends so Ray restarts it).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from samsp.errors import CudaUnavailableError
from tests.rounding import assert_masks_close, assert_tile_stats_close, assert_u8_close

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- 1. no CUDA

def test_gpu_worker_without_cuda_fails_with_one_line(monkeypatch):
    import jobs.runtime.devices as devices

    monkeypatch.setattr(devices, "ray_gpu_ids", lambda: ["0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CudaUnavailableError) as err:
        devices.worker_device("auto")
    msg = str(err.value)
    assert "\n" not in msg and "given GPU 0" in msg and ">= 580" in msg
    assert torch.__version__ in msg
    assert devices.worker_device("cpu") == "cpu"  # an explicit CPU model needs no CUDA


def test_predictor_actor_given_a_gpu_without_cuda_does_not_start(monkeypatch, tmp_path):
    import jobs.runtime.devices as devices
    from jobs.inference.predictor import Predictor
    from tests.test_segment import make_bundle

    bundle = make_bundle(str(tmp_path / "bundle"))
    monkeypatch.setattr(devices, "ray_gpu_ids", lambda: ["1"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CudaUnavailableError, match="given GPU 1"):
        Predictor(bundle)  # never a silent CPU run inside an actor that holds a GPU


def test_zero_gpu_worker_hides_the_nodes_gpus(monkeypatch):
    import jobs.runtime.devices as devices

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(devices, "ray_gpu_ids", lambda: [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.worker_device("auto") == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_outside_ray_auto_follows_torch(monkeypatch):
    import jobs.runtime.devices as devices

    assert devices.ray_gpu_ids() is None  # this test process is no Ray worker
    monkeypatch.setattr(devices, "ray_gpu_ids", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.worker_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.worker_device("auto") == "cpu"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is unusable")
def test_train_on_a_gpu_node_without_cuda_names_the_cause(tmp_path):
    """No monkeypatching: the embedded Ray advertises a GPU (what a node with an old driver
    looks like to Ray), the Ray Train worker gets it, torch sees no CUDA. Without the check the
    run dies inside NCCL set-up ("no GPUs found")."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_OVERRIDE_RESOURCES='{"GPU": 1}')
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--config", "configs/train_tiny.yaml",
         "--set", "scaling.use_gpu=true", "--set", "scaling.num_workers=1",
         "--set", "run.max_failures=0", "--set", f"run.storage_path={tmp_path / 'runs'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training failed:"), last
    assert "CudaUnavailableError" in last and "given GPU 0" in last, last


# --------------------------------------------------------------------------- 2. GPUs not up yet

def test_actor_gpus_kept_on_a_cluster_downgraded_only_locally():
    from jobs.inference.actors import actor_gpus

    assert actor_gpus(1.0, 0.0, local=False) == 1.0   # autoscaled GPU nodes: not up yet
    assert actor_gpus(0.5, 0.0, local=False) == 0.5
    assert actor_gpus(1.0, 0.0, local=True) == 0.0    # an embedded Ray never grows
    assert actor_gpus(1.0, 2.0, local=True) == 1.0
    assert actor_gpus(None, 0.0, local=False) == 0.0  # auto: what is there now
    assert actor_gpus(None, 1.0, local=False) == 1.0
    assert actor_gpus(0.0, 4.0, local=False) == 0.0


def test_ray_resources_on_a_cluster_without_gpus_yet(monkeypatch):
    import ray

    from jobs.runtime.config import load_config
    from jobs.segmentation.config import SegmentConfig
    from jobs.inference.actors import ray_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    cfg = load_config(SegmentConfig, None, ["predict.num_gpus=1", "predict.num_actors=3"])
    res = ray_resources(cfg, 1000, "cluster")
    assert res["num_gpus"] == 1.0 and res["actors"] == 3 and res["num_cpus"] == 1.0
    assert ray_resources(cfg, 1000, "embedded")["num_gpus"] == 0.0


def test_is_local_ray_modes():
    from jobs.runtime.ray_session import is_local_ray

    assert is_local_ray("embedded") and not is_local_ray("cluster")


@pytest.mark.ray
def test_existing_ray_started_here_counts_as_local(ray_local):
    from jobs.runtime.ray_session import is_local_ray

    assert is_local_ray("existing")  # the session fixture's ray.init(address="local")


@pytest.mark.ray
def test_model_actor_pool_restarts_dead_actors(ray_local, tmp_path):
    """A fatal CUDA error ends the actor process (see 3.): the pool must restart it."""
    import ray

    import jobs.segmentation.engines as segment
    from jobs.inference.actors import ACTOR_MAX_RESTARTS
    from jobs.segmentation.config import SegmentConfig

    seen: dict = {}

    def spy(self, fn, **kwargs):
        seen[getattr(fn, "__name__", str(fn))] = kwargs
        return self

    cfg = SegmentConfig()
    res = {"actors": 1, "num_gpus": 1.0, "num_cpus": 1.0, "torch_threads": 1, "tile_bytes": 1}
    rows = [{"scene": "s", "spec": "{}", "tile": "{}"}]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray.data.Dataset, "map_batches", spy)
        segment.build_dataset(rows, cfg, "unused", 0.5, res)
    assert seen["PredictWriter"]["max_restarts"] == ACTOR_MAX_RESTARTS > 0
    assert seen["PredictWriter"]["num_gpus"] == 1.0


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gpu_request_on_a_cpu_cluster_waits_for_gpus(tmp_path):
    """A real CPU-only cluster (``ray start --head``) joined by address: with
    ``predict.num_gpus=1`` the model actors are requested with 1 GPU and stay pending (what an
    autoscaler serves by adding a GPU node), instead of becoming CPU actors."""
    from ray.util.state import list_actors

    from ingest.synthetic import make_geotiff
    from jobs.runtime.ports import free_port
    from tests.test_cluster_multinode import Driver, LoopbackCluster
    from tests.test_segment import make_bundle

    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    for k in ("RAY_ADDRESS", "RAY_OVERRIDE_RESOURCES"):
        env.pop(k, None)
    cluster = LoopbackCluster(env)
    dashboard = free_port()
    try:
        cluster._start("head", ["--head", f"--port={cluster.port}", "--num-cpus=2",
                                "--num-gpus=0", f"--ray-client-server-port={free_port()}",
                                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                                "--include-dashboard=true"], head=True)
        cluster.wait_nodes(timeout=60)
        scene = make_geotiff(str(tmp_path / "s0.tif"), 224, 224, seed=3)
        cmd = [sys.executable, str(REPO / "jobs" / "segment.py"), "--input", scene,
               "--output", str(tmp_path / "out"), "--model", make_bundle(str(tmp_path / "b")),
               "--set", "predict.num_gpus=1", "--set", "predict.num_actors=1"]
        job = Driver(cmd, dict(env, RAY_ADDRESS=cluster.address, PYTHONUNBUFFERED="1"),
                     tmp_path / "segment.log")
        try:
            deadline = time.monotonic() + 80
            model_actors: list = []
            while not model_actors:
                assert job.running(), job.output()[-4000:]
                assert time.monotonic() < deadline, job.output()[-4000:]
                time.sleep(1.0)
                try:
                    actors = list_actors(address=f"http://127.0.0.1:{dashboard}", detail=True,
                                         raise_on_missing_output=False)
                except Exception:  # noqa: BLE001 - the dashboard is still starting
                    continue
                model_actors = [a for a in actors if "Predict" in (a.class_name or "")
                                or "MapWorker" in (a.class_name or "")]
            for actor in model_actors:
                assert (actor.required_resources or {}).get("GPU") == 1.0, actor
                assert actor.state in ("PENDING_CREATION", "DEPENDENCIES_UNREADY"), actor
            assert "no GPU in the cluster yet" in job.output()
        finally:
            job.close()
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- 3. OOM, CUDA errors

class FakeOOM:
    """Wraps a predictor: out of memory for batches larger than ``fits``; records batch sizes."""

    def __init__(self, predictor, fits: int):
        self.predictor, self.fits, self.sizes = predictor, fits, []

    def __call__(self, images, *rest):
        self.sizes.append(len(images))
        if len(images) > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(images)} GiB")
        return self.predictor(images, *rest)

    def __getattr__(self, name):
        return getattr(self.predictor, name)


def test_halving_batches_splits_on_oom_and_keeps_the_size(caplog):
    from samsp.gpu import HalvingBatches

    data = np.arange(7)
    calls: list[int] = []

    def model(items):
        chunk = data[items]
        calls.append(len(chunk))
        if len(chunk) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return chunk * 10

    batches = HalvingBatches(name="test")
    with caplog.at_level(logging.WARNING, logger="samsp.gpu"):
        parts = batches(len(data), model)
    assert np.concatenate([r for _, r in parts]).tolist() == (data * 10).tolist()
    assert batches.limit == 2 and calls[:3] == [7, 4, 2]
    lowered = [r.getMessage() for r in caplog.records if "lowered" in r.getMessage()]
    assert lowered == ["test: CUDA out of memory at batch 7; batch lowered to 4 for the rest of "
                       "this worker's life", "test: CUDA out of memory at batch 4; batch "
                       "lowered to 2 for the rest of this worker's life"]
    calls.clear()
    batches(4, model)
    assert calls == [2, 2]  # the next batch starts at the size that fits


def _tile_batch(n: int, size: int = 128):
    from ingest.tiling import TileGrid

    rng = np.random.default_rng(0)
    grid = list(TileGrid(size * 2, size * 3, size, 0))[:n]
    return {"scene": np.array(["s"] * n, dtype=object), "spec": np.array(["{}"] * n, dtype=object),
            "tile": np.array([json.dumps(t.to_dict()) for t in grid], dtype=object),
            "image": rng.integers(0, 255, (n, 3, size, size), dtype=np.uint8),
            "valid": np.ones((n, size, size), bool), "error": np.array([""] * n, dtype=object)}


@pytest.fixture(scope="module")
def predictor_bundle(tmp_path_factory):
    from tests.test_segment import make_bundle

    return make_bundle(str(tmp_path_factory.mktemp("gpu") / "bundle"))


def test_predictor_out_of_memory_retries_in_halves(predictor_bundle, caplog):
    from jobs.inference.predictor import Predictor

    batch = _tile_batch(5)
    plain = Predictor(predictor_bundle, device="cpu", torch_threads=1).predict(batch)
    actor = Predictor(predictor_bundle, device="cpu", torch_threads=1)
    actor.predictor = fake = FakeOOM(actor.predictor, fits=2)
    with caplog.at_level(logging.WARNING, logger="samsp.gpu"):
        out = actor.predict(batch)
    assert not any(out["error"]), out["error"]
    # smaller batches: the same tiles but for float rounding (tests/rounding.py)
    assert_u8_close(out["prob"], plain["prob"])
    differ = assert_masks_close(out["mask"], plain["mask"])
    assert_tile_stats_close(out["stats"], plain["stats"], differ)
    assert fake.sizes[:3] == [5, 3, 2] and max(fake.sizes[3:]) <= 2
    assert any("batch lowered to 2" in r.getMessage() for r in caplog.records)
    fake.sizes.clear()
    actor.predict(batch)
    assert max(fake.sizes) == 2  # later batches start at the smaller size


def test_predictor_tiles_that_never_fit_fail_alone(predictor_bundle):
    from jobs.inference.predictor import Predictor

    actor = Predictor(predictor_bundle, device="cpu", torch_threads=1)
    actor.predictor = FakeOOM(actor.predictor, fits=0)
    out = actor.predict(_tile_batch(3))
    assert all(e.startswith("predict OutOfMemoryError") and e.endswith("(at batch 1)")
               for e in out["error"]), out["error"]


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
    torch.AcceleratorError("CUDA error: unspecified launch failure"),
])
def test_predictor_fatal_cuda_errors_propagate(predictor_bundle, error):
    from jobs.inference.predictor import Predictor

    def broken(*_):
        raise error

    actor = Predictor(predictor_bundle, device="cpu", torch_threads=1)
    actor.predictor = broken
    with pytest.raises(type(error), match="CUDA error|cuDNN"):
        actor.predict(_tile_batch(2))


def test_other_errors_still_fail_only_their_tiles(predictor_bundle):
    from jobs.inference.predictor import Predictor

    def broken(*_):
        raise ValueError("bad tile")

    actor = Predictor(predictor_bundle, device="cpu", torch_threads=1)
    actor.predictor = broken
    out = actor.predict(_tile_batch(2))
    assert list(out["error"]) == ["predict ValueError: bad tile"] * 2


def test_error_classification():
    from samsp.gpu import is_fatal_cuda_error, is_out_of_memory

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(oom) and not is_fatal_cuda_error(oom)
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    assert is_fatal_cuda_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_fatal_cuda_error(RuntimeError("shape mismatch")) and not is_out_of_memory(
        ValueError("CUDA out of memory"))
