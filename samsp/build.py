"""Building SAM models (official or small) and loading weights into them."""
from __future__ import annotations

import contextlib
import os
from functools import partial
from typing import Mapping

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from .attention import set_fused_attention
from .checkpoint import fit_state_dict, read_state_dict
from .config import SamConfig, get_config


META_BUILD_MIN_PARAMS = 200_000_000  # vit_l and vit_h; vit_b (94M) builds in 0.45 s
# "0" turns the fused image-encoder attention off wherever a model is built without an explicit
# choice (e.g. in Ray workers, which inherit the driver's environment).
FUSED_ATTENTION_ENV = "SAMSP_FUSED_ATTENTION"


def fused_attention_default() -> bool:
    """The fused attention (samsp.attention) unless ``SAMSP_FUSED_ATTENTION`` is 0/false/off."""
    value = os.environ.get(FUSED_ATTENTION_ENV, "1").strip().lower()
    return value not in ("0", "false", "off", "no")


def approx_encoder_params(config: SamConfig) -> int:
    """Weights of the ViT image encoder, roughly (12 d² per block): it dominates SAM's size."""
    return 12 * config.encoder_embed_dim ** 2 * config.encoder_depth


def construct_sam(config: SamConfig) -> Sam:
    """A randomly initialised Sam laid out exactly like segment_anything's ``_build_sam`` (no
    weights loaded, no fused attention set; build it under ``torch.device("meta")`` to count FLOP)."""
    grid = config.embedding_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )


def build_sam_from_config(
    config: SamConfig,
    checkpoint: str | None = None,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    resample_positions: bool = False,
    model_type: str = "custom",
    fused_attention: bool | None = None,
) -> Sam:
    """A Sam for ``config``: random, or with weights from ``checkpoint`` (path or fsspec URI) or
    an in-memory ``state_dict``.

    The returned model is in eval mode and carries ``samsp_model_type`` and ``samsp_config``
    so bundles can record what was built. Its image encoder uses the fused attention of
    ``samsp.attention`` (same parameters, same outputs within rounding) unless
    ``fused_attention`` is False (None: ``fused_attention_default()``).
    """
    if checkpoint is not None and state_dict is not None:
        raise ValueError("give either checkpoint or state_dict, not both")
    if checkpoint is None and state_dict is None:
        sam = construct_sam(config)
    else:
        source = f"checkpoint {checkpoint}" if checkpoint is not None else "state dict"
        state = read_state_dict(checkpoint) if checkpoint is not None else state_dict
        # Every persistent tensor is overwritten by the strict load, so the random init is
        # wasted work: ~5 ns per weight here (vit_b 0.45 s, vit_h ~3 s). Building on the meta
        # device skips it, but the first meta build in a process imports torch._dynamo (meta
        # normal_ runs a Python reference op): ~1.5 s, which every Ray actor loading a small
        # bundle would pay for nothing. So meta only for the big encoders.
        meta = approx_encoder_params(config) >= META_BUILD_MIN_PARAMS
        with torch.device("meta") if meta else contextlib.nullcontext():
            skeleton = construct_sam(config)
        state = fit_state_dict(
            skeleton, state, resample_positions=resample_positions,
            source=source, target=f"{model_type} model",
        )
        sam = skeleton.to_empty(device="cpu") if meta else skeleton
        # Non-persistent buffers are in no state dict: restore them from the config.
        sam.pixel_mean = torch.tensor(config.pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        sam.pixel_std = torch.tensor(config.pixel_std, dtype=torch.float32).view(-1, 1, 1)
        sam.load_state_dict(state, strict=True)
    if fused_attention is None:
        fused_attention = fused_attention_default()
    set_fused_attention(sam, fused_attention)
    sam.samsp_model_type = model_type
    sam.samsp_config = config
    return sam.eval()


def build_sam(model_type: str, checkpoint: str | None = None, image_size: int | None = None,
              *, fused_attention: bool | None = None) -> Sam:
    """Build ``vit_b``/``vit_l``/``vit_h`` (official layout) or a small config (``vit_tiny``,
    ``vit_micro``), optionally loading ``checkpoint`` from a local path or fsspec URI.

    ``image_size`` other than the config's default resamples the checkpoint's positional
    embeddings to the new embedding grid (e.g. an official 1024 px checkpoint used at 512 px).
    ``fused_attention``: see ``build_sam_from_config``.
    """
    config = get_config(model_type, image_size)
    default_size = get_config(model_type).image_size
    return build_sam_from_config(
        config, checkpoint, resample_positions=config.image_size != default_size,
        model_type=model_type, fused_attention=fused_attention,
    )
