"""The model side of training, shared by the Ray Train workers, the driver and the benchmarks:
building the configured ``SamSP``, what a checkpoint holds and how it loads back, the optimiser's
parameter groups and learning-rate schedule, and the configured loss."""
from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile

from jobs.runtime.errors import TrainError
from jobs.training.config import TrainConfig

# Files of one training checkpoint.
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
META_FILE = "checkpoint.json"


def build_model(cfg: TrainConfig):
    """``SamSP`` for the config, fine-tune mode applied (requires_grad set). CPU, train mode."""
    # samsp imports torch: the driver reads this module's names only
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


def lr_lambda(total_steps: int, warmup: int, min_ratio: float):
    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return fn


def param_groups(model, weight_decay: float):
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


def training_loss(cfg: TrainConfig, out, target, valid):
    """The configured objective (``loss.*``) of one forward's output."""
    from samsp import samsp_loss  # samsp imports torch: the driver reads this module's names only

    c = cfg.loss
    return samsp_loss(out, target, distill_weight=c.distill_weight, temperature=c.temperature,
                      valid=valid, dice_weight=c.dice_weight, bce_weight=c.bce_weight,
                      skeleton_weight=c.skeleton_weight)
