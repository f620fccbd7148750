"""The synthetic training set (``data.source.kind: synthetic``): procedural cracks on texture,
generated in memory, the same on every worker; the default data of ``jobs/train.py`` and of the
tests."""
from __future__ import annotations

import numpy as np


def synth_item(index: int, size: int, seed: int, width: tuple[int, int] = (1, 4)
               ) -> tuple[np.ndarray, np.ndarray]:
    """A procedural crack image: textured background, 1-3 dark random-walk cracks.

    Returns ``(image uint8[3,size,size], mask bool[size,size])``; deterministic in (seed, index).
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng([seed, index])
    s = size
    # Texture: low-frequency blotches + fine grain, slightly tinted.
    low = gaussian_filter(rng.normal(0, 1, (s, s)), sigma=s / 16)
    low = low / (np.abs(low).max() + 1e-6)
    grain = gaussian_filter(rng.normal(0, 1, (s, s)), sigma=0.8)
    base = rng.uniform(110, 190)
    grey = base + 25 * low + 10 * grain
    tint = rng.uniform(-12, 12, size=3)
    mask = np.zeros((s, s), dtype=bool)
    yy, xx = np.mgrid[0:s, 0:s]
    for _ in range(int(rng.integers(1, 4))):
        w = rng.uniform(width[0], width[1])
        y, x = rng.uniform(0.15 * s, 0.85 * s, size=2)
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.5, 1.3) * s
        step = 1.0
        for _ in range(int(length / step)):
            ang += rng.normal(0, 0.12)
            y += step * np.sin(ang)
            x += step * np.cos(ang)
            if not (-w <= y < s + w and -w <= x < s + w):
                break
            r = w / 2
            y0, y1 = max(0, int(y - r - 1)), min(s, int(y + r + 2))
            x0, x1 = max(0, int(x - r - 1)), min(s, int(x + r + 2))
            if y0 >= y1 or x0 >= x1:
                continue
            d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
            mask[y0:y1, x0:x1] |= d2 <= max(r * r, 0.5)
    dark = rng.uniform(0.25, 0.5)
    img = np.stack([grey + t for t in tint])
    img = np.where(mask[None], img * dark, img)
    img = img + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask
