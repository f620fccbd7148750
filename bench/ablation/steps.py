"""The training steps bench/ablation/run.py measures and runs in-process: one SAM-SP step as the
training job takes it (``jobs/training/step.py``; to calibrate each arm's step rate), the rate
measurement itself, and the U-Net baseline's model, step and forward."""
from __future__ import annotations

import time

import numpy as np

from jobs.training.model import build_model, lr_lambda, param_groups
from jobs.training.step import apply_gradients, forward_backward, make_optimisation
from samsp.precision import resolve_precision

# ============================================================================ calibration

def augmented_batches(ds, batch: int, rng: np.random.Generator):
    """Endless stacked batches of ``ds``, reshuffled every pass (drop-last)."""
    import torch

    epoch = 0
    while True:
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)  # fresh augmentation draws on every pass
        epoch += 1
        order = rng.permutation(len(ds))
        for s in range(0, len(order) - batch + 1, batch):
            items = [ds[int(i)] for i in order[s:s + batch]]
            yield tuple(torch.stack(col) for col in zip(*items))


def sam_step_fn(cfg):
    """One optimisation step of the training job (``jobs/training/step.py``: the same model
    build, loss, optimiser and clipping), one worker, no accumulation, on the CPU."""
    model = build_model(cfg)
    # The schedule's length does not matter for a rate; the precision is the one the run uses.
    opt = make_optimisation(cfg, model, "cpu", resolve_precision(cfg.train.precision, "cpu"),
                            total_steps=1000, warmup_steps=10)

    def step(img, mask, valid):
        forward_backward(opt, img, mask, valid)
        apply_gradients(opt)
    return step


def measure_rate(step_fn, ds, batch: int, seconds: float, warmup: int = 2,
                 min_steps: int = 3) -> dict:
    """Optimizer steps per second of ``step_fn`` fed from ``ds`` (data loading included)."""
    rng = np.random.default_rng(0)
    batches = augmented_batches(ds, batch, rng)
    for _ in range(warmup):
        step_fn(*next(batches))
    t0 = time.perf_counter()
    n = 0
    while n < min_steps or time.perf_counter() - t0 < seconds:
        step_fn(*next(batches))
        n += 1
    el = time.perf_counter() - t0
    return {"steps": n, "seconds": round(el, 3), "steps_per_s": n / el}


# ============================================================================ U-Net

def build_unet(encoder: str):
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise SystemExit("the unet arm needs segmentation-models-pytorch "
                         "(pip install segmentation-models-pytorch; benchmark-only)") from None
    return smp.Unet(encoder, encoder_weights=None, encoder_depth=4,
                    decoder_channels=(128, 64, 32, 16), in_channels=3, classes=1)


def unet_parts(args, cfg):
    import torch

    from samsp.config import SAM_PIXEL_MEAN, SAM_PIXEL_STD
    from samsp.loss import bce_loss, soft_dice_loss

    mean = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)

    def prep(img):
        return (img.float() - mean) / std

    def make(total_steps: int):
        model = build_unet(args.unet_encoder).train()
        opt = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                betas=tuple(cfg.train.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(
            total_steps, int(cfg.train.warmup_fraction * total_steps), cfg.train.min_lr_ratio))

        def step(img, mask, valid):
            # bf16 autocast (--unet-precision bf16) as the SAM arms train (train.precision auto);
            # fp32 by default, as the earlier U-Net runs trained.
            with torch.autocast("cpu", dtype=torch.bfloat16,
                                enabled=args.unet_precision == "bf16"):
                logits = model(prep(img)).float()
            loss = soft_dice_loss(logits, mask, valid) + bce_loss(logits, mask, valid)
            loss.backward()
            if cfg.train.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())
        return model, step

    def forward_fn(model):
        def forward(tiles, valid):  # no prompts: nothing to tell the U-Net about validity
            with torch.inference_mode():
                prob = torch.sigmoid(model(prep(torch.from_numpy(tiles))))[:, 0]
            return prob[None].numpy().astype(np.float32)
        return forward

    return make, forward_fn
