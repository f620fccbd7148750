"""Tile inference: numpy tiles in, per-pixel probabilities out.

This is what the segmentation job's Ray actors and the benchmarks call.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .bundle import Bundle, load_bundle
from .preprocess import postprocess_logits, prepare_batch


class TilePredictor:
    """Runs a bundle's SAM-SP on batches of tiles.

    Arguments:
      bundle: a loaded ``Bundle`` or its URI
      device: torch device; on CUDA the model runs under bf16 autocast
      iterations: self-prompting passes (default: the bundle's)
    """

    def __init__(self, bundle: Bundle | str, device: str | torch.device = "cpu",
                 iterations: int | None = None) -> None:
        self.bundle = load_bundle(bundle) if isinstance(bundle, str) else bundle
        self.meta = self.bundle.meta
        self.device = torch.device(device)
        self.model = self.bundle.model.to(self.device).eval()
        self.iterations = iterations

    @property
    def threshold(self) -> float:
        """Probability above which a pixel is foreground (from the bundle)."""
        return self.meta.threshold

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images`` uint8 ``[B,C,h,w]`` (radiometry already applied) ->
        ``prob`` (final pass) and ``prob_first`` (pass 0), float32 ``[B,h,w]`` in 0..1."""
        if images.ndim != 4:
            raise ValueError(f"expected tiles [B,C,h,w], got shape {images.shape}")
        batch, size = prepare_batch(
            images, self.meta.image_size, self.meta.pixel_mean, self.meta.pixel_std,
            band_map=self.meta.band_map, device=self.device,
        )
        with torch.inference_mode(), self._autocast():
            output = self.model(batch, iterations=self.iterations)
        with torch.inference_mode():
            probs = {
                name: torch.sigmoid(postprocess_logits(logits.float(), size, self.meta.image_size))
                for name, logits in (("prob", output.logits[-1]), ("prob_first", output.logits[0]))
            }
        return {name: p[:, 0].cpu().numpy().astype(np.float32) for name, p in probs.items()}
