"""Architecture configurations: the official SAM sizes and small configs for CPU work.

Every config builds the same module layout as ``segment_anything.build_sam`` (same classes, same
parameter names), so official checkpoints load into ``vit_b``/``vit_l``/``vit_h`` and the small
configs differ only in sizes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Tuple

# SAM's ImageNet statistics in 0..255 units (segment_anything.modeling.Sam defaults).
SAM_PIXEL_MEAN: Tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_PIXEL_STD: Tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Sizes of one SAM architecture. Defaults are the official decoder and prompt encoder."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: Tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    # Image-embedding channels; also the prompt encoder's and mask decoder's width.
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    pixel_mean: Tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: Tuple[float, float, float] = SAM_PIXEL_STD

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for 1024 px input)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution logits (4x the embedding grid)."""
        return 4 * self.embedding_size

    def with_image_size(self, image_size: int) -> "SamConfig":
        if image_size <= 0 or image_size % self.patch_size:
            raise ValueError(
                f"image_size must be a positive multiple of the patch size {self.patch_size}, "
                f"got {image_size}"
            )
        return replace(self, image_size=image_size)


SAM_CONFIGS: dict[str, SamConfig] = {
    # Official sizes, as in segment_anything.build_sam.
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    # CPU-sized encoder with the official decoder/prompt encoder (256 wide), so official
    # decoder weights would fit it. 256 px -> 16x16 embedding, two 8x8 windows per side.
    "vit_tiny": SamConfig(192, 6, 3, (2, 5), image_size=256, window_size=8),
    # Smallest useful config, for tests: 128 px -> 8x8 embedding, everything narrow.
    "vit_micro": SamConfig(
        64, 2, 2, (1,), image_size=128, window_size=4, prompt_embed_dim=64,
        decoder_mlp_dim=256, decoder_num_heads=4, iou_head_hidden_dim=64,
    ),
}

OFFICIAL_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


def get_config(model_type: str, image_size: int | None = None) -> SamConfig:
    """The config registered as ``model_type``, optionally at another input size."""
    try:
        config = SAM_CONFIGS[model_type]
    except KeyError:
        raise ValueError(
            f"unknown model_type {model_type!r}; choose one of {sorted(SAM_CONFIGS)}"
        ) from None
    if image_size is not None and image_size != config.image_size:
        config = config.with_image_size(image_size)
    return config
