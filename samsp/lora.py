"""Fine-tuning set-ups: LoRA on the image encoder, full training, decoder-only, or the window
presence head alone (``samsp.presence``).

peft is imported lazily (it imports transformers, seconds of start-up) and only where adapters
are created; merged models are plain ``segment_anything`` modules that load without peft.
"""
from __future__ import annotations

import copy
from typing import Iterable, Literal, Sequence, get_args

from segment_anything.modeling import Sam
from torch import nn

from .model import SamSP

FinetuneMode = Literal["lora", "full", "decoder", "presence"]
FINETUNE_MODES: tuple[str, ...] = get_args(FinetuneMode)


def _sam_of(model: Sam | SamSP) -> Sam:
    return model.sam if isinstance(model, SamSP) else model


def has_lora(module: nn.Module) -> bool:
    return any("lora_" in name for name, _ in module.named_parameters())


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")


def apply_lora(
    sam: Sam | SamSP,
    rank: int = 4,
    alpha: float = 8,
    targets: Sequence[str] = ("qkv",),
    dropout: float = 0.0,
) -> Sam | SamSP:
    """Add LoRA adapters (peft) to the image encoder's ``targets`` linears, in place.

    The encoder's base weights are frozen; the adapters, prompt encoder and mask decoder train.
    """
    from peft import LoraConfig, inject_adapter_in_model

    model = _sam_of(sam)
    if has_lora(model.image_encoder):
        raise ValueError("the image encoder already has LoRA adapters")
    config = LoraConfig(
        target_modules=list(targets), r=rank, lora_alpha=alpha, lora_dropout=dropout
    )
    inject_adapter_in_model(config, model.image_encoder)
    for name, param in model.image_encoder.named_parameters():
        param.requires_grad_("lora_" in name)
    for part in (model.prompt_encoder, model.mask_decoder):
        part.requires_grad_(True)
    return sam


def merge_lora(model: Sam | SamSP) -> Sam | SamSP:
    """A copy of ``model`` with LoRA adapters folded into the base weights (W + B A * scale).

    The copy has the official parameter names and no peft modules; ``model`` is untouched.
    """
    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if not _is_lora_layer(module):
            continue
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = merged.get_submodule(parent_name) if parent_name else merged
        setattr(parent, child, module.get_base_layer())
    return merged


def configure_finetune(
    model: Sam | SamSP,
    mode: str,
    rank: int = 4,
    alpha: float = 8,
    targets: Sequence[str] = ("qkv",),
) -> list[nn.Parameter]:
    """Set ``requires_grad`` for a fine-tuning mode and return the trainable parameters.

    - ``lora``: pretrained SAM; LoRA adapters (added if absent) + prompt encoder + mask decoder.
    - ``full``: everything (small configs trained from scratch).
    - ``decoder``: image encoder frozen, no adapters; prompt encoder + mask decoder.
    - ``presence``: a trained model; only the mask decoder's IoU head trains, as the window
      presence score (``samsp.presence``): every mask the model makes stays exactly as it was.

    Given a ``SamSP``, parameters its configuration never uses are frozen too (see
    ``SamSP.unused_modules``), so DDP needs no ``find_unused_parameters``.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"unknown fine-tune mode {mode!r}; choose one of {FINETUNE_MODES}")
    sam = _sam_of(model)
    if mode == "presence":
        model.requires_grad_(False)
        sam.mask_decoder.iou_prediction_head.requires_grad_(True)
        return trainable_parameters(model.parameters())
    if mode == "lora":
        if not has_lora(sam.image_encoder):
            apply_lora(sam, rank=rank, alpha=alpha, targets=targets)
        for name, param in sam.image_encoder.named_parameters():
            param.requires_grad_("lora_" in name)
    elif has_lora(sam.image_encoder) and mode == "full":
        raise ValueError(
            "full fine-tuning expects a model without LoRA adapters (merge_lora first)"
        )
    else:
        sam.image_encoder.requires_grad_(mode == "full")
    sam.prompt_encoder.requires_grad_(True)
    sam.mask_decoder.requires_grad_(True)
    if isinstance(model, SamSP):
        if model.detail is not None:  # new weights: they train in every mode
            model.detail.requires_grad_(True)
        for module in model.unused_modules().values():
            module.requires_grad_(False)
    return trainable_parameters(model.parameters())


def trainable_parameters(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]
