"""Tile inference: numpy tiles in, per-pixel probabilities out.

This is what the segmentation job's Ray actors and the benchmarks call.
"""
from __future__ import annotations

import numpy as np
import torch

from .bundle import Bundle, load_bundle
from .precision import autocast, cast_autocast_weights, resolve_precision
from .preprocess import model_inputs, pass_probabilities
from .presence import checked_threshold, gate_logits


class TilePredictor:
    """Runs a bundle's SAM-SP on batches of tiles.

    Arguments:
      bundle: a loaded ``Bundle`` or its URI
      device: torch device
      iterations: self-prompting passes (default: the bundle's)
      precision: ``auto | fp32 | bf16 | fp16`` (``samsp.precision``); auto = bf16 where the device
        runs it natively, fp16 on CUDA cards without bf16, fp32 otherwise
      threshold: foreground probability of the output (default: the bundle's); self-prompts keep
        the bundle's prompt threshold, the one the model was trained with
      own_bundle: the predictor may cast the model's weights to the reduced precision once
        (``samsp.precision.cast_autocast_weights``: same outputs, faster). Default: only when it
        loaded the bundle itself (a URI); a ``Bundle`` passed in is left as it is unless True.
      radiometry: how tiles that are not uint8 (uint16, float scenes) become the uint8 the
        model takes: anything with ``apply(data, valid) -> uint8`` (``ingest.Radiometry``, e.g.
        ``Radiometry.fit(scene)``). Without it such tiles are refused: scaling them silently
        (raw uint16 counts read as 0..255 values) would give a wrong mask, not an error.
      presence_threshold: the window presence gate (``samsp.presence``; default: the bundle's,
        None: no gate): a tile whose presence probability is below it comes out empty
      downscale: tiles larger than the model's frame (``image_size``) are shrunk into it when
        True (the segment job and the sweep, whose ``tiling.tile`` says so). Default False: they
        are refused -- a model sees objects at the scale it was trained on only in tiles of
        its frame; cut big images with the tiled API instead.
    """

    def __init__(self, bundle: Bundle | str, device: str | torch.device = "cpu",
                 iterations: int | None = None, precision: str = "auto",
                 threshold: float | None = None, own_bundle: bool | None = None,
                 radiometry=None, downscale: bool = False,
                 presence_threshold: float | str | None = "bundle") -> None:
        if own_bundle is None:
            own_bundle = isinstance(bundle, str)
        self.bundle = load_bundle(bundle) if isinstance(bundle, str) else bundle
        self.meta = self.bundle.meta
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = self.bundle.model.to(self.device).eval()
        if own_bundle:
            cast_autocast_weights(self.model, self.precision)
        self.iterations = iterations
        self._threshold = self.meta.threshold if threshold is None else float(threshold)
        self.radiometry = radiometry
        self.downscale = bool(downscale)
        self.presence_threshold = checked_threshold(
            self.meta.presence_threshold if presence_threshold == "bundle" else presence_threshold)

    @property
    def threshold(self) -> float:
        """Probability above which a pixel is foreground."""
        return self._threshold

    def __call__(self, images: np.ndarray, valid: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
        """``images`` uint8 ``[B,C,h,w]`` (radiometry already applied), ``valid`` bool ``[B,h,w]``
        (None = all; invalid pixels never shape a self-prompt) -> ``prob`` (final pass) and
        ``prob_first`` (pass 0), float32 ``[B,h,w]`` in 0..1."""
        probs = self.probabilities(images, valid)
        return {name: p.cpu().numpy().astype(np.float32) for name, p in probs.items()}

    def probabilities(self, images: np.ndarray, valid: np.ndarray | None = None
                      ) -> dict[str, torch.Tensor]:
        """As ``__call__``, but float32 ``[B,h,w]`` tensors left on the model's device (for
        work that continues there, e.g. ``jobs/inference/tile_encoding.py`` on CUDA)."""
        if images.ndim != 4:
            raise ValueError(f"expected tiles [B,C,h,w], got shape {images.shape}")
        images = self._checked(images, valid)
        tiles = images
        if self.device.type == "cuda" and images.shape[1] == 3 and self.meta.band_map is None:
            # Pinned uint8 host memory: the upload runs asynchronously, at full bus speed.
            tiles = torch.from_numpy(np.ascontiguousarray(images)).pin_memory()
        batch, frame, size = model_inputs(tiles, self.meta.image_size, self.meta.pixel_mean,
                                          self.meta.pixel_std, valid, band_map=self.meta.band_map,
                                          device=self.device)
        with torch.inference_mode(), autocast(self.precision, self.device):
            output = self.model(batch, iterations=self.iterations, valid=frame)
        with torch.inference_mode():
            last, first = pass_probabilities(
                gate_logits(output, self.presence_threshold, (output.logits[-1], output.logits[0])),
                size, self.meta.image_size)
        return {"prob": last, "prob_first": first}

    def _checked(self, images: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """uint8 tiles the model's frame holds: others through ``radiometry``, else an error
        saying what to do (both were silent before: raw counts scaled, big images shrunk)."""
        if images.dtype != np.uint8:
            if self.radiometry is None:
                raise ValueError(
                    f"TilePredictor takes uint8 tiles; got {images.dtype}: give it a "
                    f"radiometry (TilePredictor(..., radiometry=ingest.Radiometry.fit(scene)), "
                    f"the percentile stretch the segment job applies) or convert the tiles "
                    f"to uint8 first")
            images = np.asarray(self.radiometry.apply(images, valid))
        size = self.meta.image_size
        height, width = images.shape[-2:]
        if max(height, width) > size and not self.downscale:
            raise ValueError(
                f"tiles of {height}x{width} px are larger than the model's {size}-px frame and "
                f"would be shrunk {max(height, width) / size:.3g}x, to a scale the model was "
                f"not trained on: cut the image into {size}-px windows -- samsp.segment_file("
                f"image, bundle), the tiled API (samsp.sliding_window.SlidingWindow("
                f"bundle_forward(bundle), tile={size})), jobs/segment.py or jobs/sweep.py -- "
                f"or pass downscale=True")
        return images
