"""SAM-SP: SAM that prompts itself with its own previous prediction.

Pass 0 is promptless (no points, no box, SAM's learned "no mask" embedding). Each of the
``iterations`` later passes is prompted by the previous pass's prediction, detached, and reuses
the image embeddings: the heavy image encoder runs once per forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

from .decoder import SINGLE_MASK_TOKEN, decode_paired
from .prompts import PROMPT_KINDS, make_self_prompt


@dataclass
class SamSPOutput:
    """Every pass's prediction; index 0 is the promptless pass, -1 the final one."""

    logits: list[torch.Tensor]  # K+1 x [B,1,S,S] full-resolution mask logits (padded frame)
    low_res: list[torch.Tensor]  # K+1 x [B,1,S/4,S/4] decoder logits
    prompts: list[dict[str, torch.Tensor]]  # K+1; prompts[0] == {} (promptless)
    iou: list[torch.Tensor] = field(default_factory=list)  # K+1 x [B,1] predicted IoU

    @property
    def final(self) -> torch.Tensor:
        return self.logits[-1]


def logit_of(probability: float) -> float:
    """The logit whose sigmoid is ``probability`` (a probability threshold as a logit one)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"a probability threshold must lie in (0, 1), got {probability}")
    return math.log(probability / (1.0 - probability))


class SamSP(nn.Module):
    """Self-prompting wrapper around a ``segment_anything`` ``Sam``.

    Arguments:
      sam: the model (``samsp.build_sam``); its weights keep the official layout under ``sam.``
      iterations: K, the number of self-prompted passes after the promptless one
      prompt: ``box`` (the paper's), ``mask``, ``box+mask`` or ``points``
      n_points, n_negative: sizes of a ``points`` prompt (positives, negatives)
      detail: an optional ``samsp.detail.DetailBranch`` (full-resolution features for the mask
        decoder; run once per forward like the image encoder); None = SAM's decoder unchanged
      threshold: logit above which a pixel counts as foreground when deriving a prompt; keep it
        the output threshold's logit (``logit_of``) so a self-prompt outlines exactly the
        foreground the user gets -- bundles and training set it that way
    """

    def __init__(
        self,
        sam: Sam,
        iterations: int = 1,
        prompt: str = "box",
        n_points: int = 4,
        n_negative: int = 0,
        threshold: float = 0.0,
        detail: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if prompt not in PROMPT_KINDS:
            raise ValueError(f"unknown prompt {prompt!r}; choose one of {PROMPT_KINDS}")
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        if prompt == "points" and n_points + n_negative < 1:
            raise ValueError("a points prompt needs n_points + n_negative >= 1")
        self.sam = sam
        self.iterations = iterations
        self.prompt = prompt
        self.n_points = n_points
        self.n_negative = n_negative
        self.threshold = threshold
        self.detail = detail

    @property
    def image_size(self) -> int:
        return self.sam.image_encoder.img_size

    def forward(self, images: torch.Tensor, iterations: int | None = None,
                valid: torch.Tensor | None = None,
                first_prompt: dict[str, torch.Tensor] | None = None) -> SamSPOutput:
        """``images`` [B,3,S,S], resized, padded and normalised -> every pass's prediction.

        ``iterations`` overrides K for this call (e.g. to compare pass counts at inference).
        ``valid`` [B,1,S,S] (bool or 0/1) marks pixels that hold image; self-prompts are derived
        from those only (padding and nodata are never supervised, so never prompt). None = all.
        ``first_prompt`` replaces pass 1's self-prompt (promptable pre-training feeds prompts
        derived from the ground truth there: ``samsp.prompts.prompt_from_target``); at least one
        prompted pass then runs.
        """
        passes = self.iterations if iterations is None else iterations
        if first_prompt is not None:
            passes = max(passes, 1)
        size = self.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
            raise ValueError(f"expected images [B,3,{size},{size}], got {tuple(images.shape)}")

        embeddings = self.sam.image_encoder(images)  # [B,C,h,w], the only encoder call
        detail = self.detail(images) if self.detail is not None else None  # once, like it
        image_pe = self.sam.prompt_encoder.get_dense_pe()  # [1,C,h,w]
        prompt_grid = tuple(4 * s for s in embeddings.shape[-2:])  # SAM's mask-prompt size
        out = SamSPOutput(logits=[], low_res=[], prompts=[], iou=[])
        prompt: dict[str, torch.Tensor] = {}
        for step in range(passes + 1):
            sparse, dense = self.embed_prompt(prompt, embeddings.shape[0])
            masks, iou = decode_paired(self.sam.mask_decoder, embeddings, image_pe, sparse, dense,
                                       detail)
            # SAM's postprocess upsampling, without the crop: removing padding is preprocess' job.
            logits = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
            # Mask prompts are read at SAM's 4x-embedding grid; a stride-2 detail branch's
            # finer logits are averaged down to it.
            low_res = masks if masks.shape[-2:] == prompt_grid else F.adaptive_avg_pool2d(
                masks, prompt_grid)
            out.logits.append(logits)
            out.low_res.append(low_res)
            out.iou.append(iou)
            out.prompts.append(prompt)
            if step == 0 and first_prompt is not None:
                prompt = first_prompt
            elif step < passes:
                prompt = make_self_prompt(
                    self.prompt, logits, low_res, n_points=self.n_points,
                    n_negative=self.n_negative, threshold=self.threshold, valid=valid,
                )
        return out

    def embed_prompt(
        self, prompt: dict[str, torch.Tensor], batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse [B,N,C] and dense [B,C,h,w] embeddings of a self-prompt ({} = promptless)."""
        encoder = self.sam.prompt_encoder
        if not prompt:
            sparse = encoder.no_mask_embed.weight.new_zeros((batch, 0, encoder.embed_dim))
            grid_h, grid_w = encoder.image_embedding_size
            dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            dense = dense.expand(batch, -1, grid_h, grid_w)
            return sparse, dense
        points = None
        if "point_coords" in prompt:
            points = (prompt["point_coords"], prompt["point_labels"])
        return encoder(points=points, boxes=prompt.get("boxes"), masks=prompt.get("mask_logits"))

    def unused_modules(self) -> dict[str, nn.Module]:
        """Submodules of ``sam`` (by name) this configuration never puts in the loss graph.

        Single-mask decoding leaves the other mask tokens' hypernetwork MLPs and the IoU head
        unused, and each prompt kind uses only some prompt embeddings. Fine-tuning freezes them:
        DDP requires every trainable parameter to receive a gradient.
        """
        decoder = self.sam.mask_decoder
        encoder = self.sam.prompt_encoder
        unused: dict[str, nn.Module] = {
            "mask_decoder.iou_prediction_head": decoder.iou_prediction_head
        }
        for i, mlp in enumerate(decoder.output_hypernetworks_mlps):
            if i != SINGLE_MASK_TOKEN:
                unused[f"mask_decoder.output_hypernetworks_mlps.{i}"] = mlp
        prompted = self.iterations > 0
        uses_box = prompted and self.prompt in ("box", "box+mask")
        uses_mask = prompted and self.prompt in ("mask", "box+mask")
        uses_points = prompted and self.prompt == "points"
        used_point_embeddings = {
            0: uses_points and self.n_negative > 0,  # negative point
            1: uses_points and self.n_points > 0,  # positive point
            2: uses_box,  # box corner top-left
            3: uses_box,  # box corner bottom-right
        }
        for i, used in used_point_embeddings.items():
            if not used:
                unused[f"prompt_encoder.point_embeddings.{i}"] = encoder.point_embeddings[i]
        if not uses_points:
            unused["prompt_encoder.not_a_point_embed"] = encoder.not_a_point_embed
        if not uses_mask:
            unused["prompt_encoder.mask_downscaling"] = encoder.mask_downscaling
        return unused
