"""The training job's driver (``jobs/train.py`` is its command line): pre-flight checks that need
no Ray, the ``TorchTrainer`` run of ``jobs/training/loop.py``'s worker, the run summary and the
best checkpoint's bundle export (with the input contract of ``jobs/training/contract.py``).

Ray is imported inside the functions that start and use it: ``--check`` and the pre-flight
errors answer without loading it."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch
from safetensors.torch import load_file

from ingest.storage import fs_for
from jobs.runtime.logs import filtered_native_stderr
from jobs.runtime.ray_session import init_ray, is_local_ray, storage_filesystem, worker_env_vars
from jobs.training.backend import GpuCheckedTorchConfig
from jobs.training.config import TrainConfig
from jobs.training.contract import input_contract
from jobs.training.data import check_item, plan_data
from jobs.training.loop import train_loop_per_worker
from jobs.training.model import (META_FILE, MODEL_FILE, STATE_FILE, TrainError,
                                 build_model, checkpoint_dir, load_model_state, settle_model)
from samsp import CheckpointError, save_bundle

log = logging.getLogger("samsp.train")

SUMMARY_FILE = "summary.json"


def _git_commit() -> dict:
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=5).stdout.strip()
        return {"git_commit": sha or None, "git_dirty": bool(dirty)} if sha else {}
    except (OSError, subprocess.SubprocessError):
        return {}


def _run_dir_uri(cfg: TrainConfig) -> str:
    sp = cfg.run.storage_path
    if sp.startswith("s3://"):
        return sp.rstrip("/") + "/" + cfg.run.name
    return os.path.join(os.path.abspath(os.path.expanduser(sp)), cfg.run.name)


def _ckpt_uri(checkpoint) -> str | None:
    if checkpoint is None:
        return None
    if isinstance(checkpoint.filesystem, pyarrow.fs.S3FileSystem):
        return "s3://" + checkpoint.path.lstrip("/")
    return checkpoint.path


def _export_uri(cfg: TrainConfig) -> str | None:
    if cfg.export.uri == "":
        return None
    if cfg.export.uri:
        return cfg.export.uri if "://" in cfg.export.uri else os.path.abspath(cfg.export.uri)
    return _run_dir_uri(cfg).rstrip("/") + "/bundle"


def _check_bucket(uri: str, what: str) -> None:
    bucket = uri[len("s3://"):].split("/", 1)[0]
    fs, _ = fs_for(uri)
    try:
        ok = fs.exists(bucket)
    except Exception as err:  # botocore/s3fs errors: credentials, endpoint, network
        raise TrainError(f"{what} {uri}: cannot reach S3 bucket {bucket!r} "
                         f"({type(err).__name__}: {err})") from None
    if not ok:
        raise TrainError(f"{what} {uri}: S3 bucket {bucket!r} does not exist")


def preflight(cfg: TrainConfig) -> dict:
    """Every check that can fail without Ray; returns the data plan, model facts, the input
    contract and the config to run (``cfg`` fitted to a base bundle: ``settle_model``)."""
    t0 = time.perf_counter()
    cfg, base = settle_model(cfg)
    if base is not None:
        log.info("%s", kept_line(base))
    try:
        model = build_model(cfg)
    except CheckpointError as err:
        raise TrainError(f"model.checkpoint: {err}") from None
    except ValueError as err:
        raise TrainError(f"model: {err}") from None
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    image_size = model.image_size
    del model
    crop = cfg.augment.crop or image_size
    plan = plan_data(cfg.data.model_dump(mode="json"))
    check_item(plan, plan["train"][0])
    check_item(plan, plan["val"][0])
    if len(plan["train"]) * cfg.train.samples_per_item < cfg.scaling.num_workers:
        raise TrainError(f"{len(plan['train'])} training items cannot feed "
                         f"{cfg.scaling.num_workers} workers")
    for uri, what in ((cfg.run.storage_path, "run.storage_path"), (_export_uri(cfg), "export.uri")):
        if uri and uri.startswith("s3://"):
            _check_bucket(uri, what)
        elif uri and "://" in uri:
            raise TrainError(f"{what} {uri}: only local paths and s3:// are supported")
    contract = input_contract(cfg, plan["images"])  # the scenes the plan kept, not re-listed
    if base is not None and base["input"]:
        changed = contract_changes(base["input"], contract)
        if changed:
            log.info("input contract: this data differs from the base bundle's (%s)", changed)
    log.info("pre-flight ok in %.1fs", time.perf_counter() - t0)
    return {"plan": plan, "params": n_params, "trainable_params": n_train,
            "image_size": image_size, "crop": crop, "cfg": cfg, "base": base, "input": contract}


def kept_line(base: dict) -> str:
    """The one log line of a fine-tune from a bundle: what the run took from it."""
    kept = dict(base["kept"])
    parts = [f"{k} {kept.pop(k)}" for k in ("type", "image_size", "iterations", "prompt")
             if k in kept]
    if kept.pop("detail_branch", False):
        parts.append(f"detail branch (width {kept.pop('detail_width')}, "
                     f"stride {kept.pop('detail_stride')})")
    if base["threshold"] is not None:
        parts.append(f"output threshold {base['threshold']:g}")
    if "threshold" in kept:
        parts.append(f"self-prompt threshold {kept.pop('threshold'):g}")
    if "labels" in kept:
        parts.append(f"labels {kept.pop('labels')!r}")
    if "small_images" in kept:
        parts.append(f"small images {kept.pop('small_images')}")
    return (f"model.checkpoint: fine-tuning the bundle {base['uri']}: kept its weights, "
            + ", ".join(parts) + ("" if base["input"] else "; it has no input contract"))


def contract_changes(old: dict, new: dict) -> str:
    """``dtype uint8 -> uint16, ...`` for the contract fields (labels aside) that differ."""
    keys = ("dtype", "channels", "bands", "band_names", "gsd_m", "radiometry")
    return ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys
                     if old.get(k) != new.get(k))


def streaming_cpus(cfg: TrainConfig) -> int:
    """CPUs a run needs beside its workers': one for ``data.streaming``'s loading tasks (Ray
    Data tasks get no CPU of the workers' reservation; with none left they never start)."""
    return 1 if cfg.data.streaming else 0


def _check_resources(cfg: TrainConfig, mode: str) -> None:
    import ray  # Ray once the run starts (module docstring)

    need_cpu = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + streaming_cpus(cfg)
    need_gpu = cfg.scaling.num_workers if cfg.scaling.use_gpu else 0
    have = ray.cluster_resources()
    short = []
    if have.get("CPU", 0) < need_cpu:
        short.append(f"{need_cpu:g} CPU (cluster has {have.get('CPU', 0):g}"
                     + (", 1 of them for data.streaming's loading tasks)"
                        if streaming_cpus(cfg) else ")"))
    if have.get("GPU", 0) < need_gpu:
        short.append(f"{need_gpu} GPU (cluster has {have.get('GPU', 0):g})")
    if short:
        msg = (f"{cfg.scaling.num_workers} workers need " + " and ".join(short)
               + "; lower scaling.num_workers / cpus_per_worker or set use_gpu: false")
        if not is_local_ray(mode):  # a cluster may still add the nodes
            log.warning("%s (waiting for the autoscaler)", msg)
        else:
            raise TrainError(msg)


def _write_json(uri: str, obj: Any) -> None:
    fs, path = fs_for(uri)
    parent = path.rsplit("/", 1)[0]
    with contextlib.suppress(Exception):
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(json.dumps(obj, indent=1, default=str))


def export_bundle(cfg: TrainConfig, ckpt_dir: str, uri: str, facts: dict, best: dict) -> dict:
    """Rebuild the model from ``ckpt_dir`` and write a bundle to ``uri`` (local or s3://)."""
    import ray  # its version goes into the provenance; imported by the run already

    model = build_model(cfg)
    load_model_state(model, load_file(os.path.join(ckpt_dir, MODEL_FILE)))
    train_state = torch.load(os.path.join(ckpt_dir, STATE_FILE), map_location="cpu",
                             weights_only=True)
    provenance = {
        "run": cfg.run.name, "run_dir": _run_dir_uri(cfg), "created": _dt.datetime.now(
            _dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(), "best_epoch": best.get("epoch"),
        "epochs": cfg.train.epochs, "val_metrics": {k: v for k, v in best.items()
                                                    if k.startswith("val_")},
        "history": json.loads(train_state["history"]), "data": facts["plan"]["summary"],
        "config": cfg.model_dump(mode="json"), "base_checkpoint": cfg.model.checkpoint,
        "finetune": cfg.model.finetune, "trainable_params": facts["trainable_params"],
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
        **_git_commit(),
    }
    meta = {"threshold": cfg.model.threshold, "band_map": None, "provenance": provenance,
            "small_images": cfg.model.small_images,
            "presence_threshold": cfg.model.presence_threshold,
            "input": facts.get("input") or input_contract(cfg, facts["plan"].get("images"))}
    base = facts.get("base")
    if base and base.get("threshold") is not None:
        # Fine-tuned from a bundle: its output threshold stays (tuned after its training), the
        # self-prompts keep the threshold they were trained with.
        meta.update(threshold=base["threshold"], prompt_threshold=cfg.model.threshold)
    if cfg.train.tune_threshold and best.get("val_best_threshold") is not None:
        # The output threshold the best epoch scored best with on validation; self-prompts keep
        # the threshold they were trained with.
        meta.update(threshold=best["val_best_threshold"], prompt_threshold=cfg.model.threshold)
    model.eval()
    if "://" not in uri:
        return save_bundle(model, uri, meta).model_dump(mode="json")

    with tempfile.TemporaryDirectory(prefix="samsp-bundle-") as tmp:
        written = save_bundle(model, tmp, meta)
        fs, path = fs_for(uri)
        # bundle.json last: a folder without it is an unfinished bundle.
        names = sorted(os.listdir(tmp), key=lambda n: n == "bundle.json")
        for name in names:
            fs.put_file(os.path.join(tmp, name), path.rstrip("/") + "/" + name)
    return written.model_dump(mode="json")


def start_ray(cfg: TrainConfig) -> str:
    """Join the cluster or start the embedded Ray; checks the workers fit. Returns the mode."""
    need_cpus = math.ceil(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
                          + streaming_cpus(cfg))
    # Embedded runs are short and local: poll the workers more often than Ray Train's defaults
    # (2 s health checks, 5 s preemption polls add ~5 s to every launch). Set them to override.
    fast_polls = {k: v for k, v in (("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"),
                                    ("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "1"))
                  if k not in os.environ}
    mode = init_ray(cfg.run.ray_address, num_cpus=max(os.cpu_count() or 1, need_cpus),
                    extra_env=fast_polls)
    _check_resources(cfg, mode)
    if mode == "cluster" and "://" not in cfg.run.storage_path \
            and not os.path.isabs(cfg.run.storage_path):
        log.warning("run.storage_path %r is relative: on a cluster use an absolute shared path "
                    "or s3://", cfg.run.storage_path)
    return mode


def make_trainer(cfg: TrainConfig, plan: dict, mode: str, crop: int | None = None):
    """The ``TorchTrainer`` of ``train_loop_per_worker`` for this config; with
    ``data.streaming``, with the Ray Data dataset of its training samples (``crop`` px)."""
    import ray.train  # Ray once the run starts (module docstring)
    from ray.train.torch import TorchTrainer

    loop_config: dict[str, Any] = {"cfg": cfg.model_dump(mode="json"), "plan": plan}
    datasets = None
    if cfg.data.streaming:
        from jobs.training.stream_dataset import streaming_datasets  # imports Ray Data

        if crop is None:
            raise TrainError("data.streaming: make_trainer needs the crop size (preflight's)")

        datasets, loop_config["stream"] = streaming_datasets(plan, cfg, crop)

    storage_path, storage_fs = storage_filesystem(cfg.run.storage_path)
    env = worker_env_vars(mode)
    run_config = ray.train.RunConfig(
        name=cfg.run.name, storage_path=storage_path, storage_filesystem=storage_fs,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.run.num_to_keep, checkpoint_score_attribute=checkpoint_score(cfg),
            checkpoint_score_order="max"),
        failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
        worker_runtime_env={"env_vars": env} if env else None,
        logging_config=ray.train.LoggingConfig(log_level=cfg.run.log_level),
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config, datasets=datasets,
        torch_config=GpuCheckedTorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                                  **({"GPU": 1} if cfg.scaling.use_gpu else {})}),
        run_config=run_config,
    )


def checkpoint_score(cfg: TrainConfig) -> str:
    """The metric that ranks checkpoints: val Dice; the epoch in presence mode, whose masks --
    so its val Dice -- never change (the presence head it trains is not what validation scores),
    so the latest checkpoint is the one to keep."""
    return "epoch" if cfg.model.finetune == "presence" else "val_dice"


def best_checkpoint(result, score: str = "val_dice") -> tuple[Any, dict]:
    """The kept checkpoint with the best ``score`` (the later epoch on a tie) and its metrics."""
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if score in m and "epoch" in m]
    if not ranked:
        return None, {}
    return max(ranked, key=lambda cm: (cm[1][score], cm[1]["epoch"]))


def latest_progress(latest) -> tuple[int, list]:
    """Epochs done and the per-epoch history of the run's latest checkpoint."""
    if latest is None:
        return 0, []
    with checkpoint_dir(latest) as d:
        with open(os.path.join(d, META_FILE)) as f:
            done_epochs = int(json.load(f)["epoch"])
        history = json.loads(torch.load(os.path.join(d, STATE_FILE), map_location="cpu",
                                        weights_only=True)["history"])
    return done_epochs, history


def run_summary(cfg: TrainConfig, facts: dict, result, fit_s: float) -> tuple[dict, Any, dict]:
    """The run's summary (bundle not written yet), its best checkpoint and that one's metrics."""
    best_ckpt, best_metrics = best_checkpoint(result, checkpoint_score(cfg))
    done_epochs, history = latest_progress(result.checkpoint)
    summary: dict[str, Any] = {
        "run": cfg.run.name, "run_dir": _run_dir_uri(cfg), "epochs_done": done_epochs,
        "epochs": cfg.train.epochs, "complete": done_epochs >= cfg.train.epochs,
        "fit_s": round(fit_s, 2),
        "best_epoch": best_metrics.get("epoch"), "best_val_dice": best_metrics.get("val_dice"),
        "best_checkpoint": _ckpt_uri(best_ckpt), "latest_checkpoint": _ckpt_uri(result.checkpoint),
        "history": history, "data": facts["plan"]["summary"],
        "trainable_params": facts["trainable_params"], "params": facts["params"],
        "bundle": None,
    }
    return summary, best_ckpt, best_metrics


def run(cfg: TrainConfig) -> dict:
    """Pre-flight, train (or resume), export; returns the summary (also written to the run dir)."""
    facts = preflight(cfg)
    cfg = facts["cfg"]  # fitted to a base bundle, if model.checkpoint names one
    log.info("model %s (%s): %d params, %d trainable; data: %s", cfg.model.type,
             cfg.model.finetune, facts["params"], facts["trainable_params"],
             json.dumps(facts["plan"]["summary"]))
    trainer = make_trainer(cfg, facts["plan"], start_ray(cfg), facts["crop"])
    t0 = time.perf_counter()
    with filtered_native_stderr():  # Ray Train's error-level notice on its restartable actors
        result = trainer.fit()
    fit_s = time.perf_counter() - t0
    if result.error:
        raise result.error
    summary, best_ckpt, best_metrics = run_summary(cfg, facts, result, fit_s)
    export_to = _export_uri(cfg)
    if best_ckpt is not None and export_to and (summary["complete"]
                                                or not cfg.export.only_when_complete):
        with checkpoint_dir(best_ckpt) as d:
            export_bundle(cfg, d, export_to, facts, best_metrics)
        summary["bundle"] = export_to
        log.info("bundle (best epoch %s, val dice %.4f) written to %s", best_metrics.get("epoch"),
                 best_metrics.get("val_dice", float("nan")), export_to)
    elif not summary["complete"]:
        log.info("stopped after epoch %d of %d; relaunch the same run to resume",
                 summary["epochs_done"], cfg.train.epochs)
    _write_json(_run_dir_uri(cfg).rstrip("/") + "/" + SUMMARY_FILE, summary)
    return summary
