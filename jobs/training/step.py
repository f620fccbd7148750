"""One optimisation step of SAM-SP training, shared by the Ray Train worker loop
(``jobs/training/loop.py``) and the benchmarks that time it (``bench/ablation/steps.py``):
the optimiser and its schedule, a micro-batch's forward, loss and backward (gradient accumulation,
promptable pre-training prompts) and the step that applies the accumulated gradient."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from jobs.training.config import TrainConfig
from jobs.training.model import lr_lambda, param_groups, training_loss
from samsp.precision import autocast
from samsp.preprocess import blank_invalid, prepare_batch, prepare_targets
from samsp.prompts import prompt_from_target


@dataclass
class Optimisation:
    """What a step touches. ``model`` runs forward/backward (a worker's DDP wrapper, or the bare
    model); ``net`` is the model itself (its prompt settings, its parameters to clip)."""

    cfg: TrainConfig
    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    precision: str
    device: torch.device
    image_size: int
    pixel_mean: list[float] = field(default_factory=list)
    pixel_std: list[float] = field(default_factory=list)

    @property
    def net(self):
        return self.model.module if hasattr(self.model, "module") else self.model

    def autocast(self):
        return autocast(self.precision, self.device)


def make_optimisation(cfg: TrainConfig, model, device, precision: str, total_steps: int,
                      warmup_steps: int) -> Optimisation:
    """AdamW over ``model``'s trainable parameters, linear warmup + cosine schedule, and a
    gradient scaler that only fp16 uses: fp16 overflows without loss scaling; bf16 has fp32's
    range and needs none."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                  betas=tuple(cfg.train.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, warmup_steps, cfg.train.min_lr_ratio))
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
    return Optimisation(cfg, model, optimizer, scheduler, scaler, precision, torch.device(device),
                        model.image_size, model.sam.pixel_mean.flatten().tolist(),
                        model.sam.pixel_std.flatten().tolist())


def accumulation_group_size(batch_index: int, batches: int, accum: int) -> int:
    """Micro-batches in the accumulation group of micro-batch ``batch_index`` of an epoch.

    The epoch's last group may be short; its losses are averaged over its own size, so that
    step's gradient has the same scale as every other step's (not ``1 / accum`` of it).
    """
    last_start = (math.ceil(batches / accum) - 1) * accum
    return accum if batch_index < last_start else batches - last_start


def pretraining_prompt_seed(seed: int, rank: int, global_step: int, batch_index: int) -> int:
    """Seed of a promptable pre-training prompt's jitter: by position, so a resumed run draws
    the same jitter."""
    return (seed * 1_000_003 + rank * 7_919 + global_step * 131 + batch_index) % 2**63


def forward_backward(opt: Optimisation, img, mask, valid, group: int = 1,
                     prompt_seed: int | None = None, sync=None):
    """Forward, loss and backward of one micro-batch (``img`` uint8 ``[B,3,c,c]``, ``mask`` and
    ``valid`` ``[B,1,c,c]``); the loss is divided by its accumulation ``group`` size. With
    ``prompt_seed``, pass 1 is prompted from the ground truth (promptable pre-training).
    ``sync``: the context the backward runs in (DDP's ``no_sync`` inside a group). Returns the
    loss parts."""
    # The loader's (pinned, on GPU) uint8/bool tensors go to the device as they are.
    x, _ = prepare_batch(img, opt.image_size, opt.pixel_mean, opt.pixel_std, device=opt.device)
    target, ok = prepare_targets(mask[:, 0], opt.image_size, valid[:, 0], device=opt.device)
    x = blank_invalid(x, ok)  # crop padding as evaluation and segmentation see it
    first_prompt = None
    if prompt_seed is not None:
        net = opt.net
        first_prompt = prompt_from_target(net.prompt, target, ok, n_points=net.n_points,
                                          n_negative=net.n_negative,
                                          generator=torch.Generator().manual_seed(prompt_seed))
    with sync or contextlib.nullcontext():
        with opt.autocast():
            out = opt.model(x, valid=ok, first_prompt=first_prompt)
        parts = training_loss(opt.cfg, out, target, ok)
        opt.scaler.scale(parts.total / group).backward()
    return parts


def apply_gradients(opt: Optimisation) -> None:
    """The optimiser step on the accumulated gradient: clipping, scaler, schedule, zeroing."""
    clip = opt.cfg.train.clip_grad_norm
    if clip > 0:
        opt.scaler.unscale_(opt.optimizer)  # clip the true gradient, not the scaled one
        torch.nn.utils.clip_grad_norm_([p for p in opt.net.parameters() if p.requires_grad], clip)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    opt.optimizer.zero_grad(set_to_none=True)
