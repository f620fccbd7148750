"""Scene-wide radiometry: one mapping from native values to uint8 shared by every tile.

``Radiometry.fit(scene)`` computes per-band percentiles from a bounded sample of valid pixels
(:meth:`ingest.Scene.sample`: whole small scenes, else the whole scene decimated -- overviews when
present -- so the valid pixels come from wherever they lie; never a big scene at full resolution,
never per tile). ``apply(data, valid)`` maps ``[lo, hi]`` linearly to
``[0, 255]`` (clipped, rounded) and sets invalid pixels (nodata, padding) to 0, so they can never
look like foreground; the caller also marks them nodata in the output.

``Radiometry.identity(count)`` passes uint8 through unchanged (other dtypes are clipped to
0..255); it is what uint8 imagery the model was trained on should use.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .scene import DEFAULT_SAMPLE_PIXELS, Scene


def _percentiles(values: np.ndarray, q: Sequence[float]) -> list[float]:
    """Percentiles of a 1-D array; exact histogram path for 8/16-bit integers."""
    if values.size == 0:
        return [float("nan")] * len(q)
    if values.dtype.kind in "iu" and values.dtype.itemsize <= 2:
        offset = int(values.min())
        counts = np.bincount((values.astype(np.int64) - offset).ravel())
        cdf = np.cumsum(counts)
        n = cdf[-1]
        out = []
        for p in q:
            # same definition as np.percentile(method="inverted_cdf")
            rank = max(1, int(np.ceil(p / 100.0 * n)))
            out.append(float(np.searchsorted(cdf, rank) + offset))
        return out
    return [float(v) for v in np.percentile(values.astype(np.float64), list(q))]


@dataclass
class Radiometry:
    """Per-band linear stretch ``(x - lo) / (hi - lo) * 255`` -> uint8; ``mode="identity"`` passes
    values through (clipped to 0..255)."""

    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    mode: str = "stretch"  # "stretch" | "identity"
    percentiles: tuple[float, float] | None = None
    sample_pixels: int | None = None  # valid pixels the fit saw

    @classmethod
    def identity(cls, count: int = 3) -> "Radiometry":
        return cls(lo=[0.0] * count, hi=[255.0] * count, mode="identity")

    @classmethod
    def fit(cls, scene: Scene, percentiles: tuple[float, float] = (2, 98),
            max_pixels: int = DEFAULT_SAMPLE_PIXELS) -> "Radiometry":
        """Scene-wide per-band percentiles over valid pixels of a bounded sample."""
        return cls.fit_pixels(*scene.sample(max_pixels), percentiles=percentiles)

    @classmethod
    def fit_pixels(cls, data: np.ndarray, valid: np.ndarray,
                   percentiles: tuple[float, float] = (2, 98)) -> "Radiometry":
        """Per-band percentiles over the valid pixels given: ``data[C, N]``, ``valid bool[N]``
        (a scene's sample, or pixels already in memory: ``samsp.segment_file``'s arrays)."""
        p_lo, p_hi = float(percentiles[0]), float(percentiles[1])
        if not 0 <= p_lo < p_hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
        lo, hi = [], []
        for band in data:
            vals = band[valid]
            if vals.dtype.kind == "f":
                vals = vals[np.isfinite(vals)]
            a, b = _percentiles(vals, (p_lo, p_hi))
            if not np.isfinite(a) or not np.isfinite(b):
                a, b = 0.0, 255.0
            if b <= a:  # constant band: map it to 0, keep the division finite
                b = a + 1.0
            lo.append(a)
            hi.append(b)
        return cls(lo=lo, hi=hi, mode="stretch", percentiles=(p_lo, p_hi),
                   sample_pixels=int(valid.sum()))

    @classmethod
    def for_scene(cls, scene: Scene, stretch: bool | None = None, **fit_kwargs) -> "Radiometry":
        """uint8 scenes pass through unless ``stretch=True``; everything else is fitted."""
        if stretch is None:
            stretch = scene.dtype != np.uint8
        return cls.fit(scene, **fit_kwargs) if stretch else cls.identity(scene.count)

    @property
    def count(self) -> int:
        return len(self.lo)

    def apply(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """``data[C, h, w]`` (or ``[B, C, h, w]``) -> uint8 of the same shape; invalid -> 0."""
        data = np.asarray(data)
        if data.shape[-3] != self.count:
            raise ValueError(f"Radiometry for {self.count} bands applied to {data.shape[-3]} bands")
        if self.mode == "identity":
            out = data if data.dtype == np.uint8 else \
                np.clip(np.nan_to_num(data, nan=0.0), 0, 255).astype(np.uint8)
        else:
            lo = np.asarray(self.lo, dtype=np.float32).reshape(-1, 1, 1)
            hi = np.asarray(self.hi, dtype=np.float32).reshape(-1, 1, 1)
            scale = np.float32(255.0) / (hi - lo)
            x = (data.astype(np.float32) - lo) * scale
            x = np.nan_to_num(x, nan=0.0, copy=False)
            np.clip(x, 0, 255, out=x)
            out = np.rint(x).astype(np.uint8)
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if not valid.all():
                out = np.where(np.expand_dims(valid, -3), out, np.uint8(0))
        return out

    def to_dict(self) -> dict:
        return {"mode": self.mode, "lo": [float(v) for v in self.lo], "hi": [float(v) for v in self.hi],
                "percentiles": list(self.percentiles) if self.percentiles else None,
                "sample_pixels": self.sample_pixels}

    @classmethod
    def from_dict(cls, d: dict) -> "Radiometry":
        pct = d.get("percentiles")
        return cls(lo=[float(v) for v in d["lo"]], hi=[float(v) for v in d["hi"]],
                   mode=d.get("mode", "stretch"), percentiles=tuple(pct) if pct else None,
                   sample_pixels=d.get("sample_pixels"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "Radiometry":
        return cls.from_dict(json.loads(text))


__all__ = ["Radiometry"]
