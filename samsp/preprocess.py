"""Getting numpy tiles into SAM's input frame and predictions back out of it.

SAM's frame: resize so the longest side is ``S`` (keeping aspect), normalise with the pixel
mean/std (0..255 units), pad bottom/right with zeros to ``S x S``. Predictions in that frame are
cropped to the resized region and resized back to the tile's size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def resized_shape(height: int, width: int, image_size: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``image_size`` (SAM's ResizeLongestSide)."""
    scale = image_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_three_bands(images: np.ndarray, band_map: Sequence[int] | None = None) -> np.ndarray:
    """``[B,C,h,w]`` -> ``[B,3,h,w]`` (same dtype).

    ``band_map``: three 0-based band indices to use as R, G, B. Without it: 1 band is
    replicated; 2 bands become (b0, b1, mean); 3 pass through; more than 3 keep the first three.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [B,C,h,w], got shape {images.shape}")
    bands = images.shape[1]
    if band_map is not None:
        band_map = list(band_map)
        if len(band_map) != 3 or not all(0 <= b < bands for b in band_map):
            raise ValueError(f"band_map must be 3 indices in [0, {bands}), got {band_map}")
        return images[:, band_map]
    if bands == 1:
        return np.repeat(images, 3, axis=1)
    if bands == 2:
        mean = images.astype(np.float32).mean(axis=1, keepdims=True)
        if np.issubdtype(images.dtype, np.integer):
            mean = np.rint(mean)
        return np.concatenate([images, mean.astype(images.dtype)], axis=1)
    return images[:, :3]


def prepare_batch(
    images: np.ndarray | torch.Tensor,
    image_size: int,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    band_map: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Tiles ``[B,C,h,w]`` (uint8 or float in 0..255 units; numpy, or a CPU tensor -- pinned
    ones upload asynchronously) -> model input ``[B,3,S,S]`` and the tiles' original size
    ``(h, w)`` (what ``postprocess_logits`` needs).

    Bands are mapped to three (``to_three_bands``) when C != 3 or a band map is given. The
    tiles travel to the device in their own dtype and are converted there: uint8 is a quarter
    of float32's bytes, and the conversion is device work, not a host pass.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [B,C,h,w], got shape {tuple(images.shape)}")
    if images.shape[1] != 3 or band_map is not None:
        if isinstance(images, torch.Tensor):
            images = images.numpy()
        images = to_three_bands(images, band_map)
    height, width = images.shape[-2:]
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(images))
    x = x.to(device=device, non_blocking=x.is_pinned()).float()
    new_h, new_w = resized_shape(height, width, image_size)
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, (new_h, new_w), mode="bilinear", align_corners=False,
                          antialias=new_h < height)
    mean = torch.tensor(pixel_mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(pixel_std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x - mean) / std
    # Pad after normalising, like Sam.preprocess: the padding is 0 in normalised units.
    x = F.pad(x, (0, image_size - new_w, 0, image_size - new_h))
    return x, (height, width)


def _upload(array: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    """A host mask (numpy or a CPU tensor) as float32 on ``device``: sent in its own (small)
    dtype, asynchronously when pinned, and converted there."""
    t = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    return t.to(device=device, non_blocking=t.is_pinned()).float()


def prepare_targets(
    masks: np.ndarray | torch.Tensor,
    image_size: int,
    valid: np.ndarray | torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth ``[B,h,w]`` (0/1) -> ``(target [B,1,S,S] float, valid [B,1,S,S] float)`` in the
    same frame as ``prepare_batch``. ``valid`` marks usable pixels; padding is invalid.
    """
    batch, height, width = masks.shape
    new_h, new_w = resized_shape(height, width, image_size)
    target = _upload(masks, device)
    ok = torch.ones_like(target) if valid is None else _upload(valid, device)
    target, ok = target.unsqueeze(1), ok.unsqueeze(1)
    if (new_h, new_w) != (height, width):
        target = F.interpolate(target, (new_h, new_w), mode="nearest-exact")
        ok = F.interpolate(ok, (new_h, new_w), mode="nearest-exact")
    pad = (0, image_size - new_w, 0, image_size - new_h)
    return F.pad(target, pad), F.pad(ok, pad)


def prepare_valid(
    batch: int,
    size: tuple[int, int],
    image_size: int,
    valid: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Which pixels of the model frame hold image: bool ``[B,1,S,S]`` for tiles of ``size``
    (h, w) -- the resized region, minus the tiles' invalid pixels (``valid`` bool ``[B,h,w]``,
    None = all valid), resized like ``prepare_targets``; the padding is never valid."""
    height, width = size
    new_h, new_w = resized_shape(height, width, image_size)
    frame = torch.zeros((batch, 1, image_size, image_size), dtype=torch.bool, device=device)
    if valid is None:
        frame[:, :, :new_h, :new_w] = True
        return frame
    ok = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)).to(device)[:, None]
    if (new_h, new_w) != (height, width):
        ok = F.interpolate(ok.float(), (new_h, new_w), mode="nearest-exact") > 0.5
    frame[:, :, :new_h, :new_w] = ok
    return frame


def postprocess_logits(
    logits: torch.Tensor, original_size: tuple[int, int], image_size: int
) -> torch.Tensor:
    """Model-frame logits ``[B,1,S,S]`` -> ``[B,1,h,w]``: crop the padding, resize back."""
    height, width = original_size
    new_h, new_w = resized_shape(height, width, image_size)
    logits = logits[..., :new_h, :new_w]
    if (new_h, new_w) != (height, width):
        # shrinking (a tile smaller than the frame, e.g. a coarse scene read at the model's
        # GSD): antialiased, so every frame pixel counts, not a 2x2 sample of each block
        logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False,
                               antialias=height < new_h or width < new_w)
    return logits


def model_inputs(
    tiles: np.ndarray | torch.Tensor,
    image_size: int,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    valid: np.ndarray | None = None,
    band_map: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """What a model call on ``tiles`` takes: ``(x, frame_valid, size)`` -- ``prepare_batch``'s
    input and tile size, and ``prepare_valid``'s frame for ``valid`` (None = all tile pixels)."""
    x, size = prepare_batch(tiles, image_size, pixel_mean, pixel_std, band_map=band_map,
                            device=device)
    frame = prepare_valid(len(x), size, image_size, valid, device=device)
    return blank_invalid(x, frame), frame, size


def blank_invalid(x: torch.Tensor, frame_valid: torch.Tensor) -> torch.Tensor:
    """Model input ``[B,3,S,S]`` with every invalid pixel set to 0 in normalised units: what
    ``Sam.preprocess`` pads with. Padding of a window larger than its image, nodata and the
    frame's own padding then all look alike to the model whatever their raw values (uint8
    zeros padded *before* normalising read as near-black, far from SAM's padding: on DeepCrack
    test images cut into 3x3 crops, Dice fell from 0.79 whole to 0.48 that way, to 0.76 with
    this rule -- ``python -m bench.small_images``)."""
    return x.masked_fill(~frame_valid.bool(), 0.0)


def pass_probabilities(
    logits: Sequence[torch.Tensor], original_size: tuple[int, int], image_size: int
) -> list[torch.Tensor]:
    """Model-frame logits of some passes (each ``[B,1,S,S]``) -> float32 probabilities
    ``[B,h,w]`` per pass, on the logits' device."""
    return [torch.sigmoid(postprocess_logits(lg.float(), original_size, image_size))[:, 0]
            for lg in logits]
