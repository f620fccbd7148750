"""SAM-SP fine-tuning on Ray Train.

    python jobs/train.py --config configs/train_tiny.yaml [--set train.epochs=3 ...]
    ray job submit --working-dir . -- python jobs/train.py --config configs/train_deepcrack_cpu.yaml

Plain ``python`` starts an embedded local Ray; under ``ray job submit`` (``RAY_ADDRESS`` set) the
job joins the cluster (see ``jobs/ray_utils.py``). Fields: ``jobs/train_config.py``.

What happens:

1. Pre-flight on the driver, before any worker starts: the config validates, the model builds
   (unknown type, missing or mismatched base checkpoint fail here), the data is listed, split and
   one train/val item is read, the storage bucket is reachable, the cluster can host the workers.
2. ``TorchTrainer`` with ``num_workers`` DDP workers (gloo on CPU, nccl on GPU). Each worker loads
   its shard through a ``DistributedSampler``; AdamW, linear warmup + cosine, gradient
   accumulation, ``train.precision`` (bf16 autocast where the device runs it natively, CPU
   included; fp16 + GradScaler on CUDA cards without bf16). Every epoch: train loss parts, val Dice/IoU of every pass,
   epoch seconds are reported with a checkpoint (model weights, optimizer, scheduler, epoch,
   history) under ``<storage_path>/<run.name>/``; Ray keeps the best ``num_to_keep`` by val Dice
   plus the latest.
3. Relaunching the same ``run.name`` + ``storage_path`` resumes: Ray Train v2 restores the run's
   checkpoint-manager snapshot and ``ray.train.get_checkpoint()`` returns the latest checkpoint,
   from which model, optimizer, scheduler and epoch counter are restored.
4. The best checkpoint (val Dice) is exported with ``samsp.save_bundle`` (written locally, then
   uploaded for s3://) to ``export.uri`` (default ``<storage_path>/<run.name>/bundle``), with
   provenance. ``summary.json`` (per-epoch history, best epoch, bundle URI) goes next to it.

Exit codes: 0 done (or stopped by ``train.stop_after_epochs``), 2 bad config/data/model/storage
(nothing started), 1 training failed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python jobs/train.py`: make `import jobs` resolve to this repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.config import ConfigError, add_config_args, job_epilog, load_config  # noqa: E402
from jobs.train_config import TrainConfig  # noqa: E402
from jobs.train_data import DataError  # noqa: E402

log = logging.getLogger("samsp.train")

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
META_FILE = "checkpoint.json"
SUMMARY_FILE = "summary.json"


class TrainError(RuntimeError):
    """A problem found before training starts (one-line message)."""


# ============================================================================ model helpers

def build_model(cfg: TrainConfig):
    """``SamSP`` for the config, fine-tune mode applied (requires_grad set). CPU, train mode."""
    from samsp import SamSP, build_sam, configure_finetune
    from samsp.detail import detail_branch_for
    from samsp.model import logit_of

    m = cfg.model
    sam = build_sam(m.type, m.checkpoint, m.image_size)
    detail = (detail_branch_for(sam, m.detail_width, m.detail_stride) if m.detail_branch
              else None)
    # Self-prompts outline the foreground of the output threshold the bundle will carry.
    model = SamSP(sam, iterations=m.iterations, prompt=m.prompt, threshold=logit_of(m.threshold),
                  detail=detail)
    configure_finetune(model, m.finetune, rank=m.lora_rank, alpha=m.lora_alpha)
    return model.train()


def saves_full_state(cfg: TrainConfig) -> bool:
    """Checkpoints hold every weight unless frozen weights come from a base checkpoint."""
    return cfg.model.checkpoint is None or cfg.model.finetune == "full"


def checkpoint_state(model, full: bool) -> dict:
    """Weights to checkpoint: all, or the trainable parameters plus every persistent buffer."""
    state = model.state_dict()
    if full:
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    keep |= {n for n, _ in model.named_buffers() if n in state}
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k in keep}


def load_model_state(model, state: dict) -> None:
    """Load checkpointed weights; anything missing must be a frozen (base-checkpoint) weight."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise TrainError(f"checkpoint has {len(unexpected)} unexpected weight(s), first "
                         f"{unexpected[0]!r}: it was written for another model/fine-tune mode")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    bad = [k for k in missing if k in trainable]
    if bad:
        raise TrainError(f"checkpoint lacks trainable weight {bad[0]!r} ({len(bad)} in all)")


def weights_fingerprint(state: dict) -> str:
    """sha256 over the tensors of ``state`` (sorted by name, float32 CPU bytes): equal weights,
    equal fingerprint. Used to check that a resumed run starts from the checkpoint's weights."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def checkpoint_dir(checkpoint):
    """A local directory with ``checkpoint``'s files, private to this process.

    ``Checkpoint.as_directory()`` shares one temporary directory between the processes of a node
    and re-downloads into it when its file lock is free: a second worker could overwrite files
    the first is still reading (seen here as "PytorchStreamReader failed reading file" on
    resume from S3). Local checkpoints are read in place.
    """
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield checkpoint.path
        return
    with tempfile.TemporaryDirectory(prefix="samsp-ckpt-read-") as tmp:
        yield checkpoint.to_directory(tmp)


def _lr_lambda(total_steps: int, warmup: int, min_ratio: float):
    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return fn


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")) or "norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


# ============================================================================ worker side

def _log0(rank: int, msg: str) -> None:
    # sys.stdout, not print(): Ray Train patches print() into its logger *and* the stream,
    # which shows every line twice on the driver.
    if rank == 0:
        sys.stdout.write(f"[train] {time.strftime('%H:%M:%S')} {msg}\n")
        sys.stdout.flush()


def _quiet_report_log(level: str) -> None:
    """Ray Train 2.60 logs every report (full metrics dict, once per worker) at INFO through a
    logger named after its file path, which LoggingConfig does not filter; follow run.log_level."""
    try:
        from ray.train.v2._internal.execution import context as _ctx

        _ctx.logger.setLevel(level)
    except (ImportError, AttributeError):  # another Ray version: leave its logging alone
        pass


class _EpochSampler:
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


class _EpochDataset:
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        epoch, i = key
        self.ds.epoch = epoch
        return self.ds[i]


def _all_reduce_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32,
                     device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def evaluate(model, val_ds, indices, crop: int, image_size: int, mean, std, threshold: float,
             batch_size: int, device, autocast, sweep: tuple[float, ...] = ()
             ) -> tuple[list[float], int]:
    """Per-image Dice/IoU of every pass over the val images ``indices`` (tiled like segment).

    Returns ``(sums, count)`` with sums = [dice_p0, iou_p0, dice_p1, iou_p1, ...] followed by
    the final pass's Dice at each threshold of ``sweep``.
    """
    import torch

    from samsp import metrics
    from samsp.preprocess import postprocess_logits, prepare_batch, prepare_valid
    from jobs.train_data import tile_image, untile

    passes = model.iterations + 1
    sums = [0.0] * (2 * passes + len(sweep))
    model.eval()
    with torch.no_grad():
        for i in indices:
            img, mask, valid = val_ds[i]
            h, w = mask.shape
            tiles, _, tile_valid, grid = tile_image(img, mask, valid, crop)
            probs = [[] for _ in range(passes)]
            for s in range(0, len(tiles), batch_size):
                x, size = prepare_batch(tiles[s:s + batch_size].numpy(), image_size, mean, std,
                                        device=device)
                ok = prepare_valid(len(x), size, image_size,
                                   tile_valid[s:s + batch_size].numpy(), device=device)
                with autocast():
                    out = model(x, valid=ok)
                for k, lg in enumerate(out.logits):
                    probs[k].append(torch.sigmoid(postprocess_logits(lg.float(), size,
                                                                     image_size))[:, 0].cpu())
            target = (mask & valid)[None]
            for k in range(passes):
                prob = untile(torch.cat(probs[k]), grid, h, w)
                pred = (prob > threshold) & valid
                sums[2 * k] += float(metrics.dice(pred[None], target)[0])
                sums[2 * k + 1] += float(metrics.iou(pred[None], target)[0])
            for j, t in enumerate(sweep):  # ``prob`` is the final pass's here
                sums[2 * passes + j] += float(metrics.dice(((prob > t) & valid)[None],
                                                           target)[0])
    model.train()
    return sums, len(indices)


# Output thresholds tried on validation each epoch with train.tune_threshold.
THRESHOLD_SWEEP = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))  # 0.2 .. 0.8


def training_loss(cfg: TrainConfig, out, target, valid):
    """The configured objective (``loss.*``) of one forward's output."""
    from samsp import samsp_loss

    c = cfg.loss
    return samsp_loss(out, target, distill_weight=c.distill_weight, temperature=c.temperature,
                      valid=valid, dice_weight=c.dice_weight, bce_weight=c.bce_weight,
                      skeleton_weight=c.skeleton_weight)


def accumulation_group_size(batch_index: int, batches: int, accum: int) -> int:
    """Micro-batches in the accumulation group of micro-batch ``batch_index`` of an epoch.

    The epoch's last group may be short; its losses are averaged over its own size, so that
    step's gradient has the same scale as every other step's (not ``1 / accum`` of it).
    """
    last_start = (math.ceil(batches / accum) - 1) * accum
    return accum if batch_index < last_start else batches - last_start


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: see the module docstring."""
    import ray.train
    import ray.train.torch
    import torch
    from safetensors.torch import load_file, save_file
    from torch.utils.data import DataLoader, DistributedSampler

    from samsp.precision import autocast as precision_autocast
    from samsp.precision import resolve_precision
    from samsp.preprocess import prepare_batch, prepare_targets
    from samsp.prompts import prompt_from_target
    from jobs.train_data import TrainDataset, ValDataset

    cfg = TrainConfig.model_validate(config["cfg"])
    plan = config["plan"]
    _quiet_report_log(cfg.run.log_level)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    device = ray.train.torch.get_device()
    precision = resolve_precision(cfg.train.precision, device)
    # fp16 overflows without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast():
        return precision_autocast(precision, device)

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    image_size = model.image_size
    crop = cfg.augment.crop or image_size
    mean = model.sam.pixel_mean.flatten().tolist()
    std = model.sam.pixel_std.flatten().tolist()

    # ---- data
    train_ds = TrainDataset(plan, crop, cfg.augment.model_dump(), cfg.train.seed,
                            cfg.train.samples_per_item, cache=cfg.data.cache)
    val_ds = ValDataset(plan, cache=cfg.data.cache)
    sampler = _EpochSampler(DistributedSampler(train_ds, num_replicas=world, rank=rank,
                                               shuffle=True, seed=cfg.train.seed))
    nw = cfg.data.loader_workers
    loader = DataLoader(_EpochDataset(train_ds), batch_size=cfg.train.batch_size, sampler=sampler,
                        num_workers=nw, persistent_workers=nw > 0,
                        pin_memory=device.type == "cuda")
    val_indices = list(range(rank, len(val_ds), world))
    micro_per_epoch = len(loader)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.train.grad_accum)
    total_steps = cfg.train.epochs * steps_per_epoch

    # ---- optimisation
    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                  betas=tuple(cfg.train.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(
        total_steps, int(cfg.train.warmup_fraction * total_steps), cfg.train.min_lr_ratio))

    # ---- resume
    start_epoch, global_step, history = 0, 0, []
    resume_info: dict[str, Any] = {"resumed": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint_dir(checkpoint) as d:
            state = load_file(os.path.join(d, MODEL_FILE))
            train_state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu",
                                     weights_only=True)
        load_model_state(model, state)
        model.to(device)
        optimizer.load_state_dict(train_state["optimizer"])
        scheduler.load_state_dict(train_state["scheduler"])
        start_epoch = int(train_state["epoch"])
        global_step = int(train_state["global_step"])
        history = json.loads(train_state["history"])
        opt_steps = [float(s["step"]) for s in optimizer.state_dict()["state"].values()
                     if "step" in s]
        resume_info = {
            "resumed": 1, "resumed_from_epoch": start_epoch,
            "resume_fingerprint": weights_fingerprint(checkpoint_state(
                model, saves_full_state(cfg))),
            "resume_optimizer_step": max(opt_steps) if opt_steps else 0.0,
        }
        _log0(rank, f"resumed from {checkpoint.path} after epoch {start_epoch} "
                    f"(optimizer step {resume_info['resume_optimizer_step']:.0f})")

    find_unused = {"on": True, "off": False, "auto": False}[cfg.train.find_unused_parameters]
    ddp = ray.train.torch.prepare_model(
        model, move_to_device=False,
        parallel_strategy_kwargs={"find_unused_parameters": find_unused})
    net = ddp.module if hasattr(ddp, "module") else ddp

    end_epoch = cfg.train.epochs
    if cfg.train.stop_after_epochs is not None:
        end_epoch = min(end_epoch, start_epoch + cfg.train.stop_after_epochs)
    if start_epoch >= end_epoch:
        _log0(rank, f"nothing to train: epoch {start_epoch} of {cfg.train.epochs} already done")
        return
    _log0(rank, f"rank 0/{world} on {device} ({precision}): {len(train_ds)} train samples/epoch, "
                f"{len(val_ds)} val images, {micro_per_epoch} batches/worker/epoch, "
                f"epochs {start_epoch + 1}..{end_epoch} of {cfg.train.epochs}")

    accum = cfg.train.grad_accum
    pretrain_steps = int(cfg.train.prompt_pretraining * total_steps)
    if pretrain_steps > global_step:
        _log0(rank, f"promptable pre-training: optimizer steps {global_step + 1}..{pretrain_steps} "
                    f"prompt pass 1 from the ground truth ({net.prompt}), then SAM-SP")
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        ddp.train()
        # Loss parts summed on the device: reading them every micro-batch is a host sync.
        parts_sum = torch.zeros(4, dtype=torch.float64, device=device)
        n_batches, n_samples = 0, 0
        optimizer.zero_grad(set_to_none=True)
        t_step = time.perf_counter()
        for b, (img, mask, valid) in enumerate(loader):
            # The loader's (pinned, on GPU) uint8/bool tensors go to the device as they are.
            x, _ = prepare_batch(img, image_size, mean, std, device=device)
            target, ok = prepare_targets(mask[:, 0], image_size, valid[:, 0], device=device)
            last = (b + 1) % accum == 0 or b + 1 == micro_per_epoch
            sync = ddp.no_sync() if (world > 1 and not last and hasattr(ddp, "no_sync")) \
                else contextlib.nullcontext()
            group = accumulation_group_size(b, micro_per_epoch, accum)
            first_prompt = None
            if global_step < pretrain_steps:
                # Seeded by position, so a resumed run draws the same jitter.
                gen = torch.Generator().manual_seed(
                    (cfg.train.seed * 1_000_003 + rank * 7_919 + global_step * 131 + b) % 2**63)
                first_prompt = prompt_from_target(net.prompt, target, ok, n_points=net.n_points,
                                                  n_negative=net.n_negative, generator=gen)
            with sync:
                with autocast():
                    out = ddp(x, valid=ok, first_prompt=first_prompt)
                parts = training_loss(cfg, out, target, ok)
                scaler.scale(parts.total / group).backward()
            if last:
                if cfg.train.clip_grad_norm > 0:
                    scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in net.parameters() if p.requires_grad], cfg.train.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                if cfg.train.log_every and global_step % cfg.train.log_every == 0:
                    rate = (n_samples + len(img)) / (time.perf_counter() - t_step)
                    _log0(rank, f"epoch {epoch + 1} step {global_step}/{total_steps} "
                                f"loss {float(parts.total.detach()):.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                                f"{rate:.1f} samples/s/worker")
            parts_sum += torch.stack([parts.total, parts.dice, parts.bce, parts.distill]).detach()
            n_batches += 1
            n_samples += len(img)
        train_s = time.perf_counter() - t0
        sweep = THRESHOLD_SWEEP if cfg.train.tune_threshold else ()
        val_sums, val_n = evaluate(net, val_ds, val_indices, crop, image_size, mean, std,
                                   cfg.model.threshold, max(1, cfg.train.batch_size), device,
                                   autocast, sweep)
        reduced = _all_reduce_sum(parts_sum.tolist() + [n_batches, n_samples] + val_sums + [val_n],
                                  device)
        nb = max(1.0, reduced[4])
        vals = reduced[6:-1]
        vn = max(1.0, reduced[-1])
        passes = net.iterations + 1
        metrics = {
            "epoch": epoch + 1, "epochs": cfg.train.epochs, "global_step": global_step,
            "train_loss": reduced[0] / nb, "train_dice_loss": reduced[1] / nb,
            "train_bce": reduced[2] / nb, "train_distill": reduced[3] / nb,
            "lr": float(scheduler.get_last_lr()[0]),
            "train_samples": int(reduced[5]), "train_s": train_s,
            "samples_per_s_per_worker": n_samples / max(train_s, 1e-9),
            "val_images": int(reduced[-1]),
        }
        for k in range(passes):
            metrics[f"val_dice_p{k}"] = vals[2 * k] / vn
            metrics[f"val_iou_p{k}"] = vals[2 * k + 1] / vn
        metrics["val_dice"] = metrics[f"val_dice_p{passes - 1}"]
        metrics["val_iou"] = metrics[f"val_iou_p{passes - 1}"]
        if sweep:
            swept = [v / vn for v in vals[2 * passes:]]
            best_j = max(range(len(sweep)), key=lambda j: swept[j])
            metrics["val_best_threshold"] = sweep[best_j]
            metrics["val_dice_best_threshold"] = swept[best_j]
        metrics["epoch_s"] = time.perf_counter() - t0
        if epoch == start_epoch:
            metrics.update(resume_info)
        history.append(dict(metrics))
        _log0(rank, f"epoch {epoch + 1}/{cfg.train.epochs} loss {metrics['train_loss']:.4f} "
                    f"(dice {metrics['train_dice_loss']:.4f} bce {metrics['train_bce']:.4f} "
                    f"distill {metrics['train_distill']:.4f}) val dice "
                    + " ".join(f"p{k}={metrics[f'val_dice_p{k}']:.3f}" for k in range(passes))
                    + f" iou {metrics['val_iou']:.3f} ({metrics['epoch_s']:.1f}s)")

        with tempfile.TemporaryDirectory(prefix="samsp-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                save_file(checkpoint_state(net, saves_full_state(cfg)),
                          os.path.join(tmp, MODEL_FILE))
                torch.save({"optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                            "global_step": global_step, "history": json.dumps(history)},
                           os.path.join(tmp, STATE_FILE))
                with open(os.path.join(tmp, META_FILE), "w") as f:
                    json.dump({"epoch": epoch + 1, "metrics": metrics,
                               "full_state": saves_full_state(cfg),
                               "config": cfg.model_dump(mode="json")}, f, indent=1)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt,
                             checkpoint_dir_name=f"checkpoint_epoch_{epoch + 1:04d}")


# ============================================================================ driver side

def _git_commit() -> dict:
    repo = Path(__file__).resolve().parents[1]
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
    import pyarrow.fs

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
    from jobs.train_data import _fs

    bucket = uri[len("s3://"):].split("/", 1)[0]
    fs, _ = _fs(uri)
    try:
        ok = fs.exists(bucket)
    except Exception as err:  # botocore/s3fs errors: credentials, endpoint, network
        raise TrainError(f"{what} {uri}: cannot reach S3 bucket {bucket!r} "
                         f"({type(err).__name__}: {err})") from None
    if not ok:
        raise TrainError(f"{what} {uri}: S3 bucket {bucket!r} does not exist")


def preflight(cfg: TrainConfig) -> dict:
    """Every check that can fail without Ray; returns the data plan and model facts."""
    from jobs.train_data import check_item, plan_data
    from samsp import CheckpointError

    t0 = time.perf_counter()
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
    log.info("pre-flight ok in %.1fs", time.perf_counter() - t0)
    return {"plan": plan, "params": n_params, "trainable_params": n_train,
            "image_size": image_size, "crop": crop}


def _check_resources(cfg: TrainConfig, mode: str) -> None:
    import ray

    from jobs.ray_utils import is_local_ray

    need_cpu = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    need_gpu = cfg.scaling.num_workers if cfg.scaling.use_gpu else 0
    have = ray.cluster_resources()
    short = []
    if have.get("CPU", 0) < need_cpu:
        short.append(f"{need_cpu:g} CPU (cluster has {have.get('CPU', 0):g})")
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
    from jobs.train_data import _fs

    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0]
    with contextlib.suppress(Exception):
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(json.dumps(obj, indent=1, default=str))


def export_bundle(cfg: TrainConfig, ckpt_dir: str, uri: str, facts: dict, best: dict) -> dict:
    """Rebuild the model from ``ckpt_dir`` and write a bundle to ``uri`` (local or s3://)."""
    import ray
    import torch
    from safetensors.torch import load_file

    from samsp import save_bundle

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
    meta = {"threshold": cfg.model.threshold, "band_map": None, "provenance": provenance}
    if cfg.train.tune_threshold and best.get("val_best_threshold") is not None:
        # The output threshold the best epoch scored best with on validation; self-prompts keep
        # the threshold they were trained with.
        meta.update(threshold=best["val_best_threshold"], prompt_threshold=cfg.model.threshold)
    model.eval()
    if "://" not in uri:
        return save_bundle(model, uri, meta).model_dump(mode="json")
    from jobs.train_data import _fs

    with tempfile.TemporaryDirectory(prefix="samsp-bundle-") as tmp:
        written = save_bundle(model, tmp, meta)
        fs, path = _fs(uri)
        # bundle.json last: a folder without it is an unfinished bundle.
        names = sorted(os.listdir(tmp), key=lambda n: n == "bundle.json")
        for name in names:
            fs.put_file(os.path.join(tmp, name), path.rstrip("/") + "/" + name)
    return written.model_dump(mode="json")


def run(cfg: TrainConfig) -> dict:
    """Pre-flight, train (or resume), export; returns the summary (also written to the run dir)."""
    facts = preflight(cfg)
    log.info("model %s (%s): %d params, %d trainable; data: %s", cfg.model.type,
             cfg.model.finetune, facts["params"], facts["trainable_params"],
             json.dumps(facts["plan"]["summary"]))

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs.ray_utils import init_ray, storage_filesystem, worker_env_vars
    from jobs.train_backend import GpuCheckedTorchConfig

    need_cpus = math.ceil(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)
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
    storage_path, storage_fs = storage_filesystem(cfg.run.storage_path)
    env = worker_env_vars(mode)
    run_config = ray.train.RunConfig(
        name=cfg.run.name, storage_path=storage_path, storage_filesystem=storage_fs,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.run.num_to_keep, checkpoint_score_attribute="val_dice",
            checkpoint_score_order="max"),
        failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
        worker_runtime_env={"env_vars": env} if env else None,
        logging_config=ray.train.LoggingConfig(log_level=cfg.run.log_level),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "plan": facts["plan"]},
        torch_config=GpuCheckedTorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                                  **({"GPU": 1} if cfg.scaling.use_gpu else {})}),
        run_config=run_config,
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t0
    if result.error:
        raise result.error

    best_ckpt, best_metrics = None, {}
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if "val_dice" in m]
    if ranked:
        best_ckpt, best_metrics = max(ranked, key=lambda cm: (cm[1]["val_dice"], cm[1]["epoch"]))
    latest = result.checkpoint
    done_epochs = 0
    history: list = []
    if latest is not None:
        with checkpoint_dir(latest) as d:
            with open(os.path.join(d, META_FILE)) as f:
                done_epochs = int(json.load(f)["epoch"])
            import torch

            history = json.loads(torch.load(os.path.join(d, STATE_FILE), map_location="cpu",
                                            weights_only=True)["history"])
    complete = done_epochs >= cfg.train.epochs
    summary: dict[str, Any] = {
        "run": cfg.run.name, "run_dir": _run_dir_uri(cfg), "epochs_done": done_epochs,
        "epochs": cfg.train.epochs, "complete": complete, "fit_s": round(fit_s, 2),
        "best_epoch": best_metrics.get("epoch"), "best_val_dice": best_metrics.get("val_dice"),
        "best_checkpoint": _ckpt_uri(best_ckpt), "latest_checkpoint": _ckpt_uri(latest),
        "history": history, "data": facts["plan"]["summary"],
        "trainable_params": facts["trainable_params"], "params": facts["params"],
        "bundle": None,
    }
    export_to = _export_uri(cfg)
    if best_ckpt is not None and export_to and (complete or not cfg.export.only_when_complete):
        with checkpoint_dir(best_ckpt) as d:
            export_bundle(cfg, d, export_to, facts, best_metrics)
        summary["bundle"] = export_to
        log.info("bundle (best epoch %s, val dice %.4f) written to %s", best_metrics.get("epoch"),
                 best_metrics.get("val_dice", float("nan")), export_to)
    elif not complete:
        log.info("stopped after epoch %d of %d; relaunch the same run to resume", done_epochs,
                 cfg.train.epochs)
    _write_json(_run_dir_uri(cfg).rstrip("/") + "/" + SUMMARY_FILE, summary)
    return summary


def failure_line(err: BaseException) -> str:
    """One line for a failed run: Ray nests the worker's traceback in its error's text, whose
    last line names the root cause (``samsp.errors.CudaUnavailableError: ...``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    head = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return head if len(lines) < 2 else f"{head} {lines[-1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=job_epilog(
            ["python jobs/train.py --config configs/train_tiny.yaml",
             "python jobs/train.py --config configs/train_deepcrack_cpu.yaml "
             "--set train.epochs=8 --set train.precision=bf16",
             "ray job submit --working-dir . -- python jobs/train.py "
             "--config configs/train_vit_b_lora_gpu.yaml"],
            "jobs/train_config.py (every field, with comments) and README.md, "
            "'Training job'",
            {0: "done (or stopped by train.stop_after_epochs)",
             1: "training failed",
             2: "bad config, data, model or storage (nothing started)"}))
    add_config_args(parser, "train.epochs=3")
    parser.add_argument("--summary", help="also write the run summary JSON to this local file")
    parser.add_argument("--check", action="store_true",
                        help="validate config, model, data and storage, then exit (no Ray)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        if args.check:
            facts = preflight(cfg)
            print(json.dumps({"ok": True, "data": facts["plan"]["summary"],
                              "trainable_params": facts["trainable_params"]}))
            return 0
        summary = run(cfg)
    except (ConfigError, DataError, TrainError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - Ray wraps worker failures; keep the CLI short
        log.exception("training failed")
        print(f"error: training failed: {failure_line(err)}", file=sys.stderr)
        return 1
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1, default=str))
    short = {k: v for k, v in summary.items() if k != "history"}
    print("SUMMARY " + json.dumps(short, default=str), flush=True)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        # Re-enter through the package so Ray pickles `jobs.train.train_loop_per_worker` by
        # reference (workers import it) instead of by value from `__main__`.
        from jobs import train as _train

        sys.exit(_train.main())
    sys.exit(main())
