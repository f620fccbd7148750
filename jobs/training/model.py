"""The model side of training, shared by the Ray Train workers, the driver and the benchmarks:
building the configured ``SamSP``, what a checkpoint holds and how it loads back, the optimiser's
parameter groups and learning-rate schedule, and the configured loss."""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile

from jobs.runtime.errors import TrainError
from jobs.training.config import TrainConfig

# Files of one training checkpoint (MODEL_FILE is also a bundle's weights file).
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
META_FILE = "checkpoint.json"


def build_model(cfg: TrainConfig):
    """``SamSP`` for the config, fine-tune mode applied (requires_grad set). CPU, train mode.

    A bundle as ``model.checkpoint`` gives every weight -- its detail branch included -- and its
    pixel normalisation and point counts (``settle_model`` fills the config from it first)."""
    # samsp imports torch: the driver reads this module's names only
    from samsp import SamSP, build_sam, configure_finetune, load_bundle
    from samsp.detail import detail_branch_for
    from samsp.model import logit_of

    cfg, base = settle_model(cfg)
    m = cfg.model
    if base is not None:
        loaded = load_bundle(base["uri"]).model
        sam, detail = loaded.sam, loaded.detail
        points = {"n_points": loaded.n_points, "n_negative": loaded.n_negative}
    else:
        sam = build_sam(m.type, m.checkpoint, m.image_size)
        detail = (detail_branch_for(sam, m.detail_width, m.detail_stride) if m.detail_branch
                  else None)
        points = {}
    # Self-prompts outline the foreground of the output threshold the bundle will carry.
    model = SamSP(sam, iterations=m.iterations, prompt=m.prompt, threshold=logit_of(m.threshold),
                  detail=detail, **points)
    configure_finetune(model, m.finetune, rank=m.lora_rank, alpha=m.lora_alpha)
    return model.train()


def base_bundle(checkpoint: str | None) -> str | None:
    """The bundle folder/URI ``model.checkpoint`` names -- the folder, its ``model.safetensors``
    or a bundle name (``jobs.inference.bundle_meta.resolve_bundle``) -- made absolute (Ray Train
    workers run elsewhere); None for an official checkpoint file or no checkpoint."""
    from jobs.inference.bundle_meta import is_bare_name, is_bundle, resolve_bundle

    if checkpoint is None:
        return None
    ref = checkpoint.rstrip("/")
    # A bundle's weights file is the bundle: its detail.* keys and normalisation live beside it.
    if ref == MODEL_FILE or ref.endswith("/" + MODEL_FILE):
        parent = ref[: -len(MODEL_FILE)].rstrip("/") or "."
        ref = parent if _bundle_at(parent, is_bundle) else ref
    if is_bare_name(ref):
        try:
            ref = resolve_bundle(ref)
        except ValueError as err:
            raise TrainError(f"model.checkpoint: {err}") from None
    elif not _bundle_at(ref, is_bundle):
        return None
    return ref if "://" in ref else os.path.abspath(os.path.expanduser(ref))


def _bundle_at(ref: str, is_bundle) -> bool:
    try:
        return is_bundle(ref)
    except Exception:  # noqa: BLE001 - unreachable: build_sam reports the checkpoint itself
        return False


def settle_model(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """``cfg`` fitted to a base bundle (``model.checkpoint`` naming one) and what was taken
    from it: ``{"uri", "kept", "threshold", "prompt_threshold", "input"}``; ``(cfg, None)``
    without one. The bundle fixes the model type, image size and detail branch (set to
    something else: ``TrainError``); iterations, prompt, the self-prompt threshold and labels
    and small-photo rule come from it unless the config sets them -- in ``finetune: presence``
    all but labels are fixed too, so the masks stay the bundle's. ``threshold`` is the bundle's
    output threshold to carry into the new bundle (None when ``model.threshold`` overrides it;
    always carried in presence mode). Idempotent."""
    from jobs.inference.bundle_meta import read_bundle_json

    uri = base_bundle(cfg.model.checkpoint)
    if uri is None:
        if cfg.model.finetune == "presence":
            raise TrainError(f"model.finetune: presence needs a samsp bundle as model.checkpoint "
                             f"(its masks, threshold and passes are kept); "
                             f"{cfg.model.checkpoint} is not one")
        return cfg, None
    try:
        meta = read_bundle_json(uri)
        fixed, carried = bundle_model_fields(meta)
    except (ValueError, KeyError, TypeError) as err:
        raise TrainError(f"model.checkpoint {uri}: {err}") from None
    m, given = cfg.model, cfg.model.model_fields_set
    presence = m.finetune == "presence"
    if presence:
        # every mask must stay the bundle's: what shapes them is fixed, not merely carried
        fixed.update({k: v for k, v in carried.items() if k != "labels" and v is not None})
    for field, value in fixed.items():
        mine = getattr(m, field)
        if field in given and mine is not None and mine != value:
            raise TrainError(f"model.{field}={mine} does not fit the base bundle {uri} "
                             f"(its {field} is {value}): set model.{field}={value} or leave "
                             "it out to take the bundle's")
    kept = {**fixed, **{k: v for k, v in carried.items() if k not in given and v is not None}}
    tree = cfg.model_dump(mode="json")
    tree["model"].update(kept, checkpoint=uri)
    try:
        settled = TrainConfig.model_validate(tree)
    except ValueError as err:
        raise TrainError(f"model.checkpoint {uri}: {err}") from None
    carry_threshold = "threshold" not in given or presence
    return settled, {"uri": uri, "kept": kept, "input": meta.get("input"),
                     "threshold": float(meta["threshold"]) if carry_threshold else None,
                     "prompt_threshold": settled.model.threshold}


def bundle_model_fields(meta: dict) -> tuple[dict, dict]:
    """``(fixed, carried)`` model.* values of a ``bundle.json``: those its weights need (type,
    image size, detail branch) and those it carries over unless the config sets them (passes,
    prompt, the self-prompt threshold, labels, the small-photo rule)."""
    detail = meta.get("detail")
    fixed = {"type": meta["model_type"], "image_size": int(meta["image_size"]),
             "detail_branch": detail is not None}
    if detail:
        fixed.update(detail_width=int(detail["width"]), detail_stride=int(detail["output_stride"]))
    prompt_threshold = meta.get("prompt_threshold")
    carried = {"iterations": meta["iterations"], "prompt": meta["prompt"],
               "threshold": float(prompt_threshold if prompt_threshold is not None
                                  else meta["threshold"]),
               "labels": (meta.get("input") or {}).get("labels"),
               "small_images": meta.get("small_images", "pad")}
    return fixed, carried


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
    weights = {"distill_weight": c.distill_weight, "dice_weight": c.dice_weight,
               "bce_weight": c.bce_weight, "skeleton_weight": c.skeleton_weight}
    if cfg.model.finetune == "presence":
        # Only the presence head trains: the mask terms reach no trainable weight, and leaving
        # them out makes the logged loss presence_weight x the presence loss (the mask parts
        # are still reported; the presence loss itself as train_presence).
        weights = {k: 0.0 for k in weights}
    return samsp_loss(out, target, temperature=c.temperature, valid=valid,
                      presence_weight=c.presence_weight, **weights)
