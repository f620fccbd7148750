"""The training job's pieces without Ray (jobs/training/driver.py, model.py, step.py): checkpoint
contents per fine-tune mode, the LR schedule, bundle export from a checkpoint directory,
storage/Ray helpers, gradient accumulation."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from jobs.runtime.config import load_config
from jobs.training import driver as train_driver
from jobs.training import model as train_model
from jobs.training import step as train_step
from jobs.training.config import TrainConfig
from tests.conftest import REPO


def _cfg(tmp_path, *sets):
    return load_config(TrainConfig, "configs/train_tiny.yaml",
                       [f"run.storage_path={tmp_path / 'runs'}", *sets])


def test_lora_checkpoint_holds_trainable_weights_and_exports_merged_bundle(tmp_path):
    from samsp import build_sam, load_bundle

    base = tmp_path / "base.pt"
    torch.manual_seed(1)
    torch.save(build_sam("vit_micro").state_dict(), base)
    cfg = _cfg(tmp_path, f"model.checkpoint={base}", "model.finetune=lora",
               "model.iterations=2", "model.prompt=box+mask")
    assert not train_model.saves_full_state(cfg)
    model = train_model.build_model(cfg)
    with torch.no_grad():  # pretend training moved the adapters and the decoder
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    state = train_model.checkpoint_state(model, full=False)
    names = set(state)
    assert any("lora_A" in n for n in names) and any("mask_decoder" in n for n in names)
    assert not any(n.endswith("qkv.base_layer.weight") for n in names)  # frozen: from base
    assert "sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in names  # buffer
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file(state, ckpt / train_model.MODEL_FILE)
    torch.save({"history": json.dumps([{"epoch": 1, "val_dice": 0.5}])}, ckpt / train_model.STATE_FILE)

    fresh = train_model.build_model(cfg)
    assert train_model.weights_fingerprint(train_model.checkpoint_state(fresh, False)) != \
        train_model.weights_fingerprint(state)
    train_model.load_model_state(fresh, load_file(ckpt / train_model.MODEL_FILE))
    assert train_model.weights_fingerprint(train_model.checkpoint_state(fresh, False)) == \
        train_model.weights_fingerprint(state)
    # a checkpoint of another fine-tune mode is refused with a clear message
    with pytest.raises(train_model.TrainError, match="unexpected weight"):
        train_model.load_model_state(train_model.build_model(_cfg(tmp_path)), state)

    # export: LoRA merged, same predictions as the trained model
    facts = {"plan": {"summary": {"source_kind": "synthetic"}}, "trainable_params": 1}
    out = tmp_path / "bundle"
    meta = train_driver.export_bundle(cfg, str(ckpt), str(out), facts, {"epoch": 1, "val_dice": 0.5})
    assert meta["iterations"] == 2 and meta["prompt"] == "box+mask"
    bundle = load_bundle(str(out))
    assert bundle.meta.provenance["finetune"] == "lora"
    assert bundle.meta.provenance["base_checkpoint"] == str(base)
    x = torch.randn(2, 3, 128, 128)
    model.eval()
    with torch.no_grad():
        a, b = model(x).logits[-1], bundle.model(x).logits[-1]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_full_mode_checkpoints_everything_and_lr_schedule(tmp_path):
    cfg = _cfg(tmp_path)
    model = train_model.build_model(cfg)
    assert train_model.saves_full_state(cfg)
    assert set(train_model.checkpoint_state(model, True)) == set(model.state_dict())
    fn = train_model.lr_lambda(total_steps=100, warmup=10, min_ratio=0.1)
    lrs = [fn(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.1, abs=0.01)
    groups = train_model.param_groups(model, 0.05)
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters()
                                                        if p.requires_grad)


def test_storage_and_ray_helpers(monkeypatch, tmp_path):
    from jobs.runtime import ray_session

    path, fs = ray_session.storage_filesystem(str(tmp_path / "x"))
    assert fs is None and os.path.isabs(path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    path, fs = ray_session.storage_filesystem("s3://bucket/runs/")
    assert path == "bucket/runs" and type(fs).__name__ == "S3FileSystem"
    with pytest.raises(ValueError, match="only local paths and s3://"):
        ray_session.storage_filesystem("gs://b/x")
    monkeypatch.setenv("SAMSP_S3_RETRY_MODE", "standard")  # the job's S3 retry policy too
    env = ray_session.forwarded_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and "PATH" not in env
    assert env["SAMSP_S3_RETRY_MODE"] == "standard"
    assert ray_session.worker_env_vars("existing")["AWS_ACCESS_KEY_ID"] == "k"
    assert ray_session.worker_env_vars("cluster") == {} == ray_session.worker_env_vars("embedded")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_session.resolve_address(None) is None and ray_session.resolve_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert ray_session.resolve_address(None) == "127.0.0.1:6379"
    assert ray_session.resolve_address("local") is None


def test_embedded_ray_workers_inherit_the_environment_and_reuse_prestarted_workers(tmp_path):
    # init_ray starts the embedded Ray without a job runtime_env: the workers inherit this
    # process's environment as it is at start-up (AWS_* set after Python started included),
    # and actors run in the workers Ray prestarted instead of fresh processes.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, sys, time
        sys.path.insert(0, sys.argv[1])
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ["AWS_SAMSP_TEST_LATE"] = "set-after-start"
        import psutil, ray
        from jobs.runtime.ray_session import init_ray
        assert init_ray(None, num_cpus=2, include_dashboard=False) == "embedded"
        assert "RAY_API_SERVER_ADDRESS" not in os.environ  # restored after start
        deadline = time.time() + 20
        idle = set()
        while time.time() < deadline and len(idle) < 2:
            idle = {p.pid for p in psutil.Process().children(recursive=True)
                    if "ray::IDLE" in " ".join(p.cmdline())}
            time.sleep(0.2)

        @ray.remote(num_cpus=0.5)
        class Probe:
            def look(self):
                return os.environ.get("AWS_SAMSP_TEST_LATE"), os.getpid()

        got = ray.get([a.look.remote() for a in (Probe.remote(), Probe.remote())])
        print(sorted({v for v, _ in got}), len(idle) >= 2 and {pid for _, pid in got} <= idle)
        ray.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True,
                         timeout=180, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "['set-after-start'] True"


def test_the_short_last_accumulation_group_is_averaged_over_its_own_size():
    # 10 micro-batches, groups of 4: [4, 4, 2]; each group's weights sum to one step's worth
    sizes = [train_step.accumulation_group_size(b, 10, 4) for b in range(10)]
    assert sizes == [4] * 8 + [2] * 2
    for batches, accum in [(10, 4), (8, 4), (3, 5), (1, 1), (7, 3)]:
        weights = [1 / train_step.accumulation_group_size(b, batches, accum) for b in range(batches)]
        groups = [weights[i:i + accum] for i in range(0, batches, accum)]
        assert all(sum(g) == pytest.approx(1.0) for g in groups)


def test_presence_mode_checkpoints_the_head_alone_and_exports_the_gate(tmp_path):
    # finetune: presence trains the IoU head as the window presence score (samsp.presence): the
    # checkpoint holds it (and buffers) only, the bundle carries the gate, the masks are the base's
    from samsp import load_bundle
    from tests.conftest import save_random_bundle

    base = save_random_bundle(tmp_path / "base", "vit_micro", iterations=1, threshold=0.7)
    presence = (f"model.checkpoint={base}", "model.finetune=presence", "loss.presence_weight=1.0")
    with pytest.raises(train_model.TrainError, match="iterations=2 does not fit"):
        train_model.build_model(_cfg(tmp_path, *presence, "model.iterations=2"))
    with pytest.raises(train_model.TrainError, match="needs a samsp bundle"):
        train_model.build_model(_cfg(tmp_path, "model.checkpoint=" + str(tmp_path / "sam.pt"),
                                     *presence[1:]))
    cfg = train_model.settle_model(  # as the driver's preflight passes it on
        _cfg(tmp_path, *presence, "model.presence_threshold=0.3"))[0]
    model = train_model.build_model(cfg)
    head = "sam.mask_decoder.iou_prediction_head."
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith(head)}
    with torch.no_grad():  # pretend training moved the head
        for p in model.sam.mask_decoder.iou_prediction_head.parameters():
            p.add_(0.1)
    state = train_model.checkpoint_state(model, full=train_model.saves_full_state(cfg))
    weights = {n for n in state if n not in dict(model.named_buffers())}
    assert weights and all(n.startswith(head) for n in weights)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file(state, ckpt / train_model.MODEL_FILE)
    torch.save({"history": json.dumps([{"epoch": 1, "val_dice": 0.5}])}, ckpt / train_model.STATE_FILE)
    facts = {"plan": {"summary": {"source_kind": "synthetic"}}, "trainable_params": 1,
             "base": train_model.settle_model(cfg)[1]}  # as the driver's preflight gives it
    out = tmp_path / "bundle"
    train_driver.export_bundle(cfg, str(ckpt), str(out), facts, {"epoch": 1, "val_dice": 0.5})
    bundle, before = load_bundle(str(out)), load_bundle(base)
    assert bundle.meta.presence_threshold == 0.3 and bundle.meta.provenance["finetune"] == "presence"
    assert bundle.meta.threshold == 0.7  # the base's output threshold, as its masks
    assert bundle.meta.prompt_threshold == 0.7  # and the self-prompts' threshold
    assert train_driver.checkpoint_score(cfg) == "epoch"  # its val Dice never changes

    class Result:  # Ray's result: (checkpoint, metrics) pairs
        best_checkpoints = [("e1", {"epoch": 1, "val_dice": 0.6}), ("e2", {"epoch": 2, "val_dice": 0.5})]
    assert train_driver.best_checkpoint(Result(), "epoch")[0] == "e2"
    assert train_driver.best_checkpoint(Result())[0] == "e1"
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        new, old = bundle.model(x), before.model(x)
    torch.testing.assert_close(new.logits[-1], old.logits[-1])
    assert not torch.allclose(new.iou[-1], old.iou[-1])


def test_epoch_loss_means_report_the_presence_loss_only_where_it_was_trained():
    from jobs.training.validation import LOSS_PARTS, train_loss_means

    without = train_loss_means([4.0, 2.0, 1.0, 0.5, 0.0, 2.0])
    assert without == {"train_loss": 2.0, "train_dice_loss": 1.0, "train_bce": 0.5,
                       "train_distill": 0.25}
    assert LOSS_PARTS == 5
    assert train_loss_means([0.6, 1.0, 1.0, 0.0, 0.6, 2.0])["train_presence"] == pytest.approx(0.3)
