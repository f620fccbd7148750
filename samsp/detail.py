"""A detail branch: full-resolution image features for SAM's mask decoder.

SAM's decoder sees only the image encoder's 1/16-resolution embedding, upscaled 4x by two
transposed convolutions: at a 256 px input every decoder pixel spans 4 x 4 input pixels, too
coarse for 2-5 px cracks and thin roads. This branch is a small convolutional stem over the
normalised input whose features are added to the decoder's upscaled features right before the
hypernetwork product (``samsp.decoder.decode_paired``), optionally at twice the decoder's
resolution (``output_stride=2``: the upscaled features are bilinearly doubled first, so the mask
logits come out at 1/2 instead of 1/4 of the input).

Its last convolution starts at zero, so a model with a fresh detail branch predicts exactly what
the plain SAM predicts (at ``output_stride=4``): an official checkpoint plus this branch starts
from the pretrained behaviour and learns the detail. The branch's weights live beside SAM's in
a bundle (``detail.*`` keys); SAM's own keys and layout are unchanged, and without the branch
nothing changes at all.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

OutputStride = Literal[2, 4]


class DetailBranch(nn.Module):
    """``[B,3,S,S]`` normalised images -> ``[B,out_channels,S/stride,S/stride]`` features.

    Arguments:
      out_channels: the decoder's upscaled feature width (``transformer_dim // 8``)
      width: the stem's own width
      output_stride: 4 (SAM's decoder resolution) or 2 (twice it)
    """

    def __init__(self, out_channels: int, width: int = 32, output_stride: OutputStride = 4):
        super().__init__()
        if output_stride not in (2, 4):
            raise ValueError(f"output_stride must be 2 or 4, got {output_stride}")
        self.output_stride = output_stride
        self.width = width
        half = max(8, width // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(3, half, 3, stride=2, padding=1),  # S/2
            nn.GroupNorm(1, half),
            nn.GELU(),
            nn.Conv2d(half, width, 3, stride=2 if output_stride == 4 else 1, padding=1),
            nn.GroupNorm(1, width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
        ]
        self.stem = nn.Sequential(*layers)
        self.fuse = nn.Conv2d(width, out_channels, 1)
        nn.init.zeros_(self.fuse.weight)  # starts as the plain decoder (see the module doc)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.stem(images))

    def spec(self) -> dict:
        """What rebuilds it (stored in a bundle's ``bundle.json``)."""
        return {"width": self.width, "output_stride": self.output_stride}


def detail_branch_for(sam, width: int = 32, output_stride: OutputStride = 4) -> DetailBranch:
    """A fresh branch matching ``sam``'s mask decoder."""
    return DetailBranch(sam.mask_decoder.transformer_dim // 8, width, output_stride)
