"""The U-Net arm of the crack study (issue 31, ``python -m bench.crack_sets runs --runs arms
--unet``): a segmentation_models_pytorch U-Net (resnet18 encoder, random init; a benchmark-only
dependency, bench/ablation/steps.py) trained in-process on the same mixture run config as the
SAM arms -- the same plan (members, weights, splits), augmentation, loss (Dice + BCE), AdamW,
schedule, batch size and number of optimiser steps -- its output threshold chosen on the same
validation sets the SAM arms' ``train.tune_threshold`` uses (best mean of member Dice over
0.2..0.8), then scored by the scoring function ``bench.crack_sets`` hands it (the one every
bundle is scored with).
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from bench.common import log


class _Validated:
    """What ``jobs.training.validation.validate`` asks of a model: one pass, ``train()``."""

    iterations = 0

    def __init__(self, model):
        self.model = model

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self


def train_unet(config: Path, steps: int, seed: int, threads: int = 0, train: bool = True):
    """``(model, forward_fn, plan, cfg, train_s)``: ``steps`` optimiser steps of the U-Net on
    the run config's training samples (``train=False``: the untrained model and the plan)."""
    import torch

    from bench.ablation.steps import augmented_batches, unet_parts
    from jobs.runtime.config import load_config
    from jobs.training.config import TrainConfig
    from jobs.training.data import TrainDataset, plan_data

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(TrainConfig, config)
    plan = plan_data(cfg.data.model_dump(mode="json"))
    ds = TrainDataset(plan, cfg.augment.crop, cfg.augment.model_dump(), seed, 1,
                      cache=cfg.data.cache)
    torch.manual_seed(seed)
    make, forward_fn = unet_parts(SimpleNamespace(unet_encoder="resnet18",
                                                  unet_precision="fp32"), cfg)
    model, step = make(steps)
    batches = augmented_batches(ds, cfg.train.batch_size, np.random.default_rng(seed))
    t0 = time.perf_counter()
    for i in range(steps if train else 0):
        loss = step(*next(batches))
        if (i + 1) % 100 == 0:
            log(f"unet seed {seed}: step {i + 1}/{steps} loss {loss:.4f}")
    model.eval()
    return model, forward_fn, plan, cfg, time.perf_counter() - t0


def tuned_threshold(model, forward_fn, plan: dict, crop: int, batch: int) -> dict:
    """The output threshold the SAM arms' ``train.tune_threshold`` would pick: the best mean of
    member validation Dice over ``THRESHOLD_SWEEP`` (per-image Dice, as they score)."""
    from jobs.inference.sliding_window import SlidingWindow
    from jobs.training.data import ValDataset
    from jobs.training.validation import THRESHOLD_SWEEP, val_scores, validate

    val_ds = ValDataset(plan)
    window = SlidingWindow(forward_fn(model), crop, overlap=0, stitch="core", batch_size=batch,
                           edge="pad")
    rows = validate(_Validated(model), val_ds, range(len(val_ds)), window, 0.5, THRESHOLD_SWEEP)
    scores = val_scores(rows, val_ds.group_names, 1, THRESHOLD_SWEEP)
    model.eval()
    return scores


def run_unet(config: Path, steps: int, seed: int, out_dir: Path, threads: int,
             score: Callable[[object, float], dict]) -> dict:
    """Train, tune the threshold, and ``score(window, threshold)`` (``bench.crack_sets``: every
    test set, as every bundle is scored); the entry it merges."""
    import torch

    from jobs.inference.sliding_window import SlidingWindow

    weights = out_dir / "unet.pt"
    if weights.exists():  # trained before (an interrupted study): tune and score only
        model, forward_fn, plan, cfg, train_s = train_unet(config, steps, seed, threads,
                                                           train=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        model.eval()
        train_s = state["train_s"]
        log(f"unet seed {seed}: trained before ({train_s:.0f} s), weights from {weights}")
    else:
        model, forward_fn, plan, cfg, train_s = train_unet(config, steps, seed, threads)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "train_s": train_s, "steps": steps}, weights)
    val = tuned_threshold(model, forward_fn, plan, cfg.augment.crop, cfg.train.batch_size)
    threshold = float(val["val_best_threshold"])
    crop = cfg.augment.crop
    window = SlidingWindow(forward_fn(model), crop, crop // 8, "core", 4)
    log(f"unet seed {seed}: threshold {threshold} (validation Dice "
        f"{val['val_dice_best_threshold']:.4f})")
    return {"model": str(weights), "kind": "unet", "threshold": threshold,
            "val_dice": val["val_dice_best_threshold"], "train_s": round(train_s, 1),
            "seed": seed, **score(window, threshold)}
