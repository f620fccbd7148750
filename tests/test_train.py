"""jobs/train.py end to end on Ray Train: 2 CPU gloo workers, checkpoints on the SeaweedFS S3
fixture, resume after a stop, bundle export, and `ray job submit` against a local head.

Each TorchTrainer launch costs ~20 s of Ray overhead, so one test covers training, S3
checkpoints, resume and the bundle with two launches of the same run.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from jobs.runtime.ports import free_port

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray]


def _train(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "jobs/train.py", "--config", "configs/train_tiny.yaml"]
    for a in args:
        cmd += ["--set", a] if "=" in a and not a.startswith("--") else [a]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    return proc


@pytest.mark.s3
def test_train_checkpoints_to_s3_resumes_and_exports_bundle(s3_env, tmp_path):
    import s3fs
    import torch
    from safetensors.torch import load as load_safetensors

    from jobs.training.data import synth_item
    from jobs.training.model import weights_fingerprint
    from samsp import load_bundle
    from samsp.predict import TilePredictor

    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    bucket = s3_env.bucket
    prefix = f"s3://{bucket}/runs-{uuid.uuid4().hex[:8]}"
    common = [f"run.storage_path={prefix}", "run.name=tiny"]
    fs = s3fs.S3FileSystem(**s3_env.storage_options())
    run_dir = prefix[len("s3://"):] + "/tiny"

    # launch 1: stop after 2 of 6 epochs
    _train(common + ["train.stop_after_epochs=2", "--summary", str(tmp_path / "s1.json")], env)
    s1 = json.loads((tmp_path / "s1.json").read_text())
    assert (s1["epochs_done"], s1["complete"], s1["bundle"]) == (2, False, None)
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(run_dir)}
    assert {"checkpoint_epoch_0001", "checkpoint_epoch_0002", "summary.json"} <= names
    ck2 = f"{run_dir}/checkpoint_epoch_0002"
    fingerprint2 = weights_fingerprint(load_safetensors(fs.cat_file(f"{ck2}/model.safetensors")))
    state2 = torch.load(io.BytesIO(fs.cat_file(f"{ck2}/train_state.pt")), weights_only=True)
    assert state2["epoch"] == 2 and state2["global_step"] == s1["history"][-1]["global_step"]

    # launch 2: same run name + storage path -> resumes at epoch 3 and finishes
    _train(common + ["--summary", str(tmp_path / "s2.json")], env)
    s2 = json.loads((tmp_path / "s2.json").read_text())
    h = s2["history"]
    assert s2["complete"] and s2["epochs_done"] == 6 and [e["epoch"] for e in h] == [1, 2, 3, 4, 5, 6]
    assert [e["train_loss"] for e in h[:2]] == [e["train_loss"] for e in s1["history"]]
    first = h[2]  # first epoch of the relaunch
    assert first["resumed"] == 1 and first["resumed_from_epoch"] == 2
    assert first["resume_fingerprint"] == fingerprint2  # weights at start == checkpoint's
    assert first["resume_optimizer_step"] == state2["global_step"]  # AdamW state restored
    assert h[0]["resumed"] == 0
    # per-epoch report: loss parts, per-pass val metrics, timing
    for key in ("train_dice_loss", "train_bce", "train_distill", "val_dice_p0", "val_dice_p1",
                "val_iou_p0", "val_iou_p1", "epoch_s", "lr"):
        assert key in h[-1]
    # it learns: loss falls, val Dice rises
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 0.2, [e["train_loss"] for e in h]
    assert max(e["val_dice"] for e in h[-2:]) > h[0]["val_dice"] + 0.15, [e["val_dice"] for e in h]

    # the bundle (best epoch by val Dice) is on S3 and loads as segment loads it
    assert s2["bundle"] == f"{prefix}/tiny/bundle"
    bundle = load_bundle(s2["bundle"])
    prov = bundle.meta.provenance
    assert bundle.meta.model_type == "vit_micro" and bundle.meta.image_size == 128
    assert prov["best_epoch"] == s2["best_epoch"]
    assert prov["val_metrics"]["val_dice"] == pytest.approx(s2["best_val_dice"])
    assert prov["data"]["val_items"] == 10 and len(prov["history"]) >= prov["best_epoch"]
    assert prov["config"]["model"]["type"] == "vit_micro" and "git_commit" in prov
    images, masks = zip(*[synth_item(i, 128, 0, (2, 5)) for i in range(100, 104)])
    prob = TilePredictor(bundle)(np.stack(images))["prob"]
    masks = np.stack(masks)
    assert prob[masks].mean() > prob[~masks].mean() + 0.2




@pytest.mark.slow
def test_ray_job_submit_runs_training(tmp_path):
    """`ray job submit --working-dir .` against a local head (auth disabled on both sides)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5", RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="1")
    for k in ("RAY_ADDRESS",):
        env.pop(k, None)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: unix socket paths
    port, dash = free_port(), free_port()
    head = subprocess.Popen(
        [ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
         f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
         # free ports for the per-node agents too: the defaults (e.g. 52365 for the job agent)
         # collide with any other Ray running on this machine ("No available agent")
         f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
        env=env, stdout=open(tmp_path / "head.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 90
        while True:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "Ray head did not come up"
                time.sleep(1)
        storage = tmp_path / "runs"
        # the dashboard answers before its job agent is registered (slow on a busy machine)
        deadline = time.monotonic() + 120
        while True:
            job = subprocess.run(
                [ray_bin, "job", "submit", f"--address={address}", "--working-dir", str(REPO),
                 "--", sys.executable, "jobs/train.py", "--config", "configs/train_tiny.yaml",
                 "--set", f"run.storage_path={storage}", "--set", "run.name=job",
                 "--set", "train.epochs=1", "--set", "train.samples_per_item=1",
                 # the issue-17 options run through the real loop here too
                 "--set", "model.detail_branch=true", "--set", "model.detail_stride=2",
                 "--set", "train.prompt_pretraining=0.5", "--set", "train.tune_threshold=true",
                 "--set", "loss.skeleton_weight=0.5"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            out = job.stdout + job.stderr
            if "No available agent" not in out or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert job.returncode == 0, out[-5000:]
        assert "SUMMARY" in out and "succeeded" in out, out[-3000:]
        summary = json.loads((storage / "job" / "summary.json").read_text())
        assert summary["complete"] and summary["epochs_done"] == 1
        meta = json.loads((storage / "job" / "bundle" / "bundle.json").read_text())
        assert meta["detail"] == {"width": 32, "output_stride": 2}
        # the output threshold was chosen on validation; self-prompts keep the trained one
        assert meta["prompt_threshold"] == 0.5 and 0.2 <= meta["threshold"] <= 0.8
        assert meta["threshold"] == summary["history"][-1]["val_best_threshold"]
        assert "promptable pre-training" in out
    finally:
        # stop only what this test started: the `ray start --block` process group
        try:
            os.killpg(head.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        time.sleep(1)
        try:  # stragglers in our group (workers) get SIGKILL
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
