"""The Ray Train worker of ``jobs/train.py``: ``train_loop_per_worker`` and what it needs --
epoch-keyed sampling, gradient accumulation, promptable pre-training, per-epoch validation (every
pass, optional threshold sweep) and the checkpoint it reports each epoch."""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

from jobs.training.config import TrainConfig
from jobs.training.data import TrainDataset, ValDataset, tile_image, untile
from jobs.training.model import (META_FILE, MODEL_FILE, STATE_FILE, build_model, checkpoint_dir,
                                 checkpoint_state, load_model_state, lr_lambda, param_groups,
                                 saves_full_state, training_loss, weights_fingerprint)


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
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                  betas=tuple(cfg.train.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
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
