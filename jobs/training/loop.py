"""The Ray Train worker of the training job: ``train_loop_per_worker`` and its stages -- the
worker's device and precision, loaders with epoch-keyed sampling (or, with ``data.streaming``,
its shard of the Ray Data samples: ``jobs/training/streaming.py``), the optimiser, resuming from
Ray's checkpoint, each epoch (micro-batches, gradient accumulation and promptable pre-training:
``jobs/training/step.py``; validation of every pass with an optional threshold sweep:
``jobs/training/validation.py``), the epoch's metrics and the checkpoint it reports.

Ray is imported inside the functions that talk to it: the driver imports this module to hand
``train_loop_per_worker`` to ``TorchTrainer``, and its pre-flight must run without Ray."""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, DistributedSampler

from jobs.training.config import TrainConfig
from jobs.training.data import TrainDataset, ValDataset
from jobs.training.model import (META_FILE, MODEL_FILE, STATE_FILE, build_model,
                                 checkpoint_dir, checkpoint_state, load_model_state,
                                 saves_full_state, weights_fingerprint)
from jobs.training.step import (Optimisation, accumulation_group_size,
                                apply_gradients, forward_backward, make_optimisation,
                                pretraining_prompt_seed)
from jobs.training.streaming import StreamingLoader
from jobs.training.validation import (LOSS_PARTS, THRESHOLD_SWEEP, all_reduce_sum,
                                      pooled_validation, train_loss_means, val_scores, validate,
                                      validation_window)
from samsp.precision import resolve_precision


def log0(rank: int, msg: str) -> None:
    # sys.stdout, not print(): Ray Train patches print() into its logger *and* the stream,
    # which shows every line twice on the driver.
    if rank == 0:
        sys.stdout.write(f"[train] {time.strftime('%H:%M:%S')} {msg}\n")
        sys.stdout.flush()


def quiet_report_log(level: str) -> None:
    """Ray Train 2.60 logs every report (full metrics dict, once per worker) at INFO through a
    logger named after its file path, which LoggingConfig does not filter; follow run.log_level."""
    try:
        from ray.train.v2._internal.execution import context as ray_train_context

        ray_train_context.logger.setLevel(level)
    except (ImportError, AttributeError):  # another Ray version: leave its logging alone
        pass


class EpochSampler:
    """DistributedSampler whose indices carry the epoch: ``(epoch, i)``, so augmentation is
    deterministic in (seed, epoch, i) even inside persistent DataLoader worker processes."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochDataset:
    """A dataset indexed by ``EpochSampler``'s ``(epoch, i)``."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        epoch, i = key
        self.ds.epoch = epoch
        return self.ds[i]


@dataclass
class Worker:
    """This worker's place in the group and what it computes on."""

    rank: int
    world: int
    device: torch.device
    precision: str


@dataclass
class Loaders:
    """``sampler.set_epoch`` then iterate ``loader``: a ``DataLoader`` with its ``EpochSampler``
    in memory; with ``data.streaming`` a ``StreamingLoader``, both."""

    train_ds: TrainDataset
    val_ds: ValDataset
    sampler: EpochSampler | StreamingLoader
    loader: DataLoader | StreamingLoader
    val_indices: list[int]


@dataclass
class Progress:
    """Epochs done, optimiser steps taken, per-epoch metrics so far, and what resuming found
    (reported with the first epoch of this launch)."""

    epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    resume_info: dict[str, Any] = field(default_factory=lambda: {"resumed": 0})


@dataclass
class Run:
    cfg: TrainConfig
    worker: Worker
    data: Loaders
    opt: Optimisation
    progress: Progress
    crop: int
    total_steps: int
    pretrain_steps: int
    start_epoch: int


def start_worker(cfg: TrainConfig) -> Worker:
    import ray.train  # Ray only in a worker (module docstring)
    import ray.train.torch

    ctx = ray.train.get_context()
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    device = ray.train.torch.get_device()
    return Worker(ctx.get_world_rank(), ctx.get_world_size(), device,
                  resolve_precision(cfg.train.precision, device))


def make_loaders(cfg: TrainConfig, plan: dict, worker: Worker, crop: int,
                 stream: dict | None = None) -> Loaders:
    """This worker's shard of the training samples (reshuffled every epoch) and of the
    validation images. ``stream`` (the driver's, with ``data.streaming``): training samples
    come from the Ray Data shard (jobs/training/streaming.py), never loaded here."""
    train_ds = TrainDataset(plan, crop, cfg.augment.model_dump(), cfg.train.seed,
                            cfg.train.samples_per_item,
                            cache=cfg.data.cache and stream is None)
    val_ds = ValDataset(plan, cache=cfg.data.cache)
    val_indices = list(range(worker.rank, len(val_ds), worker.world))
    if stream is not None:
        streamed = StreamingLoader(stream["board"], stream["samples"], worker.world, worker.rank,
                                   cfg.train.batch_size)
        return Loaders(train_ds, val_ds, streamed, streamed, val_indices)
    sampler = EpochSampler(DistributedSampler(train_ds, num_replicas=worker.world,
                                              rank=worker.rank, shuffle=True,
                                              seed=cfg.train.seed))
    nw = cfg.data.loader_workers
    loader = DataLoader(EpochDataset(train_ds), batch_size=cfg.train.batch_size, sampler=sampler,
                        num_workers=nw, persistent_workers=nw > 0,
                        pin_memory=worker.device.type == "cuda")
    return Loaders(train_ds, val_ds, sampler, loader, val_indices)


def resume(cfg: TrainConfig, model, opt: Optimisation, worker: Worker) -> Progress:
    """Model, optimiser, scheduler and counters from Ray's latest checkpoint of this run, if any."""
    import ray.train  # Ray only in a worker (module docstring)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Progress()
    with checkpoint_dir(checkpoint) as d:
        state = load_file(os.path.join(d, MODEL_FILE))
        train_state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu",
                                 weights_only=True)
    load_model_state(model, state)
    model.to(worker.device)
    opt.optimizer.load_state_dict(train_state["optimizer"])
    opt.scheduler.load_state_dict(train_state["scheduler"])
    progress = Progress(int(train_state["epoch"]), int(train_state["global_step"]),
                        json.loads(train_state["history"]))
    opt_steps = [float(s["step"]) for s in opt.optimizer.state_dict()["state"].values()
                 if "step" in s]
    progress.resume_info = {
        "resumed": 1, "resumed_from_epoch": progress.epoch,
        "resume_fingerprint": weights_fingerprint(checkpoint_state(
            model, saves_full_state(cfg))),
        "resume_optimizer_step": max(opt_steps) if opt_steps else 0.0,
    }
    log0(worker.rank, f"resumed from {checkpoint.path} after epoch {progress.epoch} "
                      f"(optimizer step {progress.resume_info['resume_optimizer_step']:.0f})")
    return progress


def wrap_ddp(cfg: TrainConfig, model):
    import ray.train.torch  # Ray only in a worker (module docstring)

    find_unused = {"on": True, "off": False, "auto": False}[cfg.train.find_unused_parameters]
    return ray.train.torch.prepare_model(
        model, move_to_device=False,
        parallel_strategy_kwargs={"find_unused_parameters": find_unused})


def set_up(cfg: TrainConfig, plan: dict, stream: dict | None = None) -> Run:
    """Everything before the first epoch: model, data, optimiser, resumed state, DDP."""
    worker = start_worker(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    crop = cfg.augment.crop or model.image_size
    data = make_loaders(cfg, plan, worker, crop, stream)
    total_steps = cfg.train.epochs * math.ceil(len(data.loader) / cfg.train.grad_accum)
    model.to(worker.device)
    opt = make_optimisation(cfg, model, worker.device, worker.precision, total_steps,
                            int(cfg.train.warmup_fraction * total_steps))
    progress = resume(cfg, model, opt, worker)
    opt.model = wrap_ddp(cfg, model)
    return Run(cfg, worker, data, opt, progress, crop, total_steps,
               int(cfg.train.prompt_pretraining * total_steps), progress.epoch)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: see the module docstring."""
    cfg = TrainConfig.model_validate(config["cfg"])
    quiet_report_log(cfg.run.log_level)
    t_setup = time.perf_counter()
    run = set_up(cfg, config["plan"], config.get("stream"))
    t_setup = time.perf_counter() - t_setup
    rank, start = run.worker.rank, run.start_epoch
    end_epoch = cfg.train.epochs
    if cfg.train.stop_after_epochs is not None:
        end_epoch = min(end_epoch, start + cfg.train.stop_after_epochs)
    if start >= end_epoch:
        log0(rank, f"nothing to train: epoch {start} of {cfg.train.epochs} already done")
        return
    log0(rank, f"rank 0/{run.worker.world} on {run.worker.device} ({run.worker.precision}): "
               f"{len(run.data.train_ds)} train samples/epoch"
               f"{' (streamed)' if cfg.data.streaming else ''}, {len(run.data.val_ds)} val "
               f"images, {len(run.data.loader)} batches/worker/epoch, "
               f"epochs {start + 1}..{end_epoch} of {cfg.train.epochs}; set up in "
               f"{t_setup:.1f}s")
    if run.pretrain_steps > run.progress.global_step:
        log0(rank, f"promptable pre-training: optimizer steps {run.progress.global_step + 1}.."
                   f"{run.pretrain_steps} prompt pass 1 from the ground truth "
                   f"({run.opt.net.prompt}), then SAM-SP")
    for epoch in range(start, end_epoch):
        metrics = run_epoch(run, epoch)
        run.progress.history.append(dict(metrics))
        log_epoch(run, metrics)
        report_epoch(run, epoch, metrics)


def train_epoch(run: Run, epoch: int) -> tuple[torch.Tensor, int, int]:
    """One pass over this worker's loader; returns the summed loss parts ``[total, dice, bce,
    distill]`` (on the device), the micro-batches and the samples it took."""
    cfg, opt, progress, batches = run.cfg, run.opt, run.progress, len(run.data.loader)
    accum = cfg.train.grad_accum
    opt.model.train()
    # Loss parts summed on the device: reading them every micro-batch is a host sync.
    parts_sum = torch.zeros(LOSS_PARTS, dtype=torch.float64, device=run.worker.device)
    n_batches, n_samples = 0, 0
    opt.optimizer.zero_grad(set_to_none=True)
    t_step = time.perf_counter()
    for b, (img, mask, valid) in enumerate(run.data.loader):
        last = (b + 1) % accum == 0 or b + 1 == batches
        # Gradients are only exchanged on a group's last micro-batch.
        sync = opt.model.no_sync() if (run.worker.world > 1 and not last
                                       and hasattr(opt.model, "no_sync")) else nullcontext()
        seed = (pretraining_prompt_seed(cfg.train.seed, run.worker.rank, progress.global_step, b)
                if progress.global_step < run.pretrain_steps else None)
        parts = forward_backward(opt, img, mask, valid, accumulation_group_size(b, batches, accum),
                                 seed, sync)
        if last:
            apply_gradients(opt)
            progress.global_step += 1
            _test_hook_kill_worker(run.worker.rank, progress.global_step)
            if cfg.train.log_every and progress.global_step % cfg.train.log_every == 0:
                rate = (n_samples + len(img)) / (time.perf_counter() - t_step)
                log0(run.worker.rank, f"epoch {epoch + 1} step {progress.global_step}/"
                     f"{run.total_steps} loss {float(parts.total.detach()):.4f} "
                     f"lr {opt.scheduler.get_last_lr()[0]:.2e} {rate:.1f} samples/s/worker")
        presence = parts.presence if parts.presence is not None else torch.zeros_like(parts.total)
        parts_sum += torch.stack([parts.total, parts.dice, parts.bce, parts.distill,
                                  presence]).detach()
        n_batches += 1
        n_samples += len(img)
    return parts_sum, n_batches, n_samples


def _test_hook_kill_worker(rank: int, step: int) -> None:
    """Test hook (``SAMSP_TRAIN_KILL=RANK:STEP:MARKER``): the worker of that rank SIGKILLs
    itself after that optimiser step, once (``MARKER`` is created first; an existing one means
    it already happened) -- a worker lost mid-epoch, which ``run.max_failures`` must survive.
    With ``SAMSP_TRAIN_KILL_AFTER=FILE|TEXT`` it first waits (up to 120 s) until FILE holds
    TEXT: Ray Train registers a reported checkpoint asynchronously, and a kill before that
    restarts from the one before. Off unless the variable is set."""
    spec = os.environ.get("SAMSP_TRAIN_KILL")
    if not spec:
        return
    kill_rank, kill_step, marker = spec.split(":", 2)
    if rank != int(kill_rank) or step != int(kill_step) or os.path.exists(marker):
        return
    wait = os.environ.get("SAMSP_TRAIN_KILL_AFTER")
    if wait:
        path, text = wait.split("|", 1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if os.path.exists(path) and text in open(path).read():
                break
            time.sleep(0.5)
    with open(marker, "w") as fh:
        fh.write(f"rank {rank} killed after step {step}\n")
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def run_epoch(run: Run, epoch: int) -> dict:
    """Train one epoch, validate, and reduce both over the workers into the epoch's metrics."""
    cfg, net, worker = run.cfg, run.opt.net, run.worker
    t0 = time.perf_counter()
    run.data.sampler.set_epoch(epoch)
    parts_sum, n_batches, n_samples = train_epoch(run, epoch)
    train_s = time.perf_counter() - t0
    sweep = THRESHOLD_SWEEP if cfg.train.tune_threshold else ()
    window = validation_window(net, run.crop, max(1, cfg.train.batch_size), worker.device,
                               worker.precision, cfg.model.small_images)
    val_rows = validate(net, run.data.val_ds, run.data.val_indices, window, cfg.model.threshold,
                        sweep)
    reduced = all_reduce_sum(parts_sum.tolist() + [n_batches, n_samples] + val_rows,
                             worker.device)
    metrics = {
        "epoch": epoch + 1, "epochs": cfg.train.epochs, "global_step": run.progress.global_step,
        **train_loss_means(reduced), "lr": float(run.opt.scheduler.get_last_lr()[0]),
        "train_samples": int(reduced[LOSS_PARTS + 1]), "train_s": train_s,
        "samples_per_s_per_worker": n_samples / max(train_s, 1e-9),
        **val_scores(reduced[LOSS_PARTS + 2:], run.data.val_ds.group_names, net.iterations + 1, sweep,
                     pooled_validation(cfg.train.val_metric, cfg.data.source.kind)),
    }
    metrics["epoch_s"] = time.perf_counter() - t0
    if epoch == run.start_epoch:
        metrics.update(run.progress.resume_info)
    return metrics


def log_epoch(run: Run, metrics: dict) -> None:
    passes = run.opt.net.iterations + 1
    log0(run.worker.rank,
         f"epoch {metrics['epoch']}/{run.cfg.train.epochs} loss {metrics['train_loss']:.4f} "
         f"(dice {metrics['train_dice_loss']:.4f} bce {metrics['train_bce']:.4f} "
         f"distill {metrics['train_distill']:.4f}"
         + (f" presence {metrics['train_presence']:.4f}" if "train_presence" in metrics else "")
         + ") val dice "
         + " ".join(f"p{k}={metrics[f'val_dice_p{k}']:.3f}" for k in range(passes))
         + f" iou {metrics['val_iou']:.3f}"
         + "".join(f" {g}={metrics[f'val_dice_{g}']:.3f}" for g in run.data.val_ds.group_names
                   if f"val_dice_{g}" in metrics)
         + f" ({metrics['epoch_s']:.1f}s)")


def write_checkpoint(run: Run, epoch: int, metrics: dict, folder: str) -> None:
    """Weights, optimiser/scheduler state with the counters and history, and a readable meta."""
    cfg, opt = run.cfg, run.opt
    save_file(checkpoint_state(opt.net, saves_full_state(cfg)), os.path.join(folder, MODEL_FILE))
    torch.save({"optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict(),
                "epoch": epoch + 1, "global_step": run.progress.global_step,
                "history": json.dumps(run.progress.history)}, os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump({"epoch": epoch + 1, "metrics": metrics, "full_state": saves_full_state(cfg),
                   "config": cfg.model_dump(mode="json")}, f, indent=1)


def report_epoch(run: Run, epoch: int, metrics: dict) -> None:
    """Report the epoch's metrics to Ray Train with rank 0's checkpoint."""
    import ray.train  # Ray only in a worker (module docstring)

    with tempfile.TemporaryDirectory(prefix="samsp-ckpt-") as tmp:
        ckpt = None
        if run.worker.rank == 0:
            write_checkpoint(run, epoch, metrics, tmp)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt,
                         checkpoint_dir_name=f"checkpoint_epoch_{epoch + 1:04d}")
