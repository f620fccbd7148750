"""A synthetic, georeferenced pavement-inspection scene with procedural cracks and its ground truth.

The embedded default (`make demo`) needs a big scene without any download or licence, so we draw
one: grey aggregate texture with low-frequency shading, and dark, jagged, branching cracks 2-6 px
wide, roughly what DeepCrack's close-ups look like. Everything is rendered window by window from a
small vector description (crack polylines, a coarse shading grid), so a 16k x 16k scene costs the
same memory as a 1k one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.transform import from_origin
from rasterio.windows import Window
from scipy import ndimage

# A drone orthomosaic of a car park: UTM 33N, 5 mm pixels.
DEMO_CRS = "EPSG:32633"
DEMO_PIXEL_SIZE = 0.005
DEMO_ORIGIN = (500_000.0, 4_500_000.0)
_SHADING_CELL = 256  # px per cell of the low-frequency shading grid


@dataclass
class Crack:
    points: np.ndarray  # [N, 2] float, (x, y) scene pixels
    width: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        x0, y0 = self.points.min(0)
        x1, y1 = self.points.max(0)
        return x0 - self.width, y0 - self.width, x1 + self.width, y1 + self.width


def _random_crack(rng: np.random.Generator, size: int, start: np.ndarray, heading: float,
                  length: float, width: int) -> Crack:
    # A jagged random walk with a slowly drifting heading, like a shrinkage crack.
    # Direction wanders slowly (no loops) while each short segment zig-zags around it.
    step = 4.0
    pts = [start.astype(float)]
    course = heading
    for _ in range(int(length / step)):
        course += rng.normal(0.0, 0.08)
        local = course + rng.normal(0.0, 0.7)
        nxt = pts[-1] + step * np.array([math.cos(local), math.sin(local)])
        pts.append(nxt)
        if not (-50 <= nxt[0] <= size + 50 and -50 <= nxt[1] <= size + 50):
            break
    return Crack(np.asarray(pts), width)


@dataclass
class CrackScene:
    """Vector description of the scene; `render(window)` rasterises any window of it."""

    size: int = 4096
    seed: int = 0
    cracks_per_megapixel: float = 5.0
    cracks: list[Crack] = field(init=False)
    shading: np.ndarray = field(init=False)  # [size/_SHADING_CELL + 3]^2 grid, tiny
    tint: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n = max(1, int(self.cracks_per_megapixel * self.size * self.size / 1e6))
        cracks: list[Crack] = []
        for _ in range(n):
            start = rng.uniform(0, self.size, 2)
            heading = rng.uniform(0, 2 * math.pi)
            main = _random_crack(rng, self.size, start, heading, rng.uniform(300, 1400),
                                 int(rng.integers(2, 7)))
            cracks.append(main)
            for _ in range(int(rng.integers(0, 3))):  # branches
                at = main.points[int(rng.integers(0, len(main.points)))]
                cracks.append(_random_crack(rng, self.size, at, heading + rng.choice([-1, 1]) * 1.1,
                                            rng.uniform(80, 400), max(1, main.width - 2)))
        self.cracks = cracks
        cells = self.size // _SHADING_CELL + 3
        self.shading = ndimage.gaussian_filter(rng.normal(0, 1, (cells, cells)), 1.0)
        self.shading /= self.shading.std() + 1e-6
        self.tint = rng.uniform(-6, 6, 3)

    def render(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Image `uint8[3, h, w]` and ground-truth crack mask `uint8[h, w]` (0/1) of a window."""
        c0, r0, w, h = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
        # Per-window seeds keep rendering deterministic and independent of the window order.
        rng = np.random.default_rng([self.seed, r0, c0])
        yy, xx = np.mgrid[r0:r0 + h, c0:c0 + w].astype(np.float32)
        shade = ndimage.map_coordinates(self.shading, [yy / _SHADING_CELL + 1, xx / _SHADING_CELL + 1],
                                        order=1, mode="nearest")
        grey = 150 + 14 * shade + rng.normal(0, 14, (h, w))
        speck = ndimage.gaussian_filter(rng.random((h, w)), 1.0)  # aggregate grains, 2-3 px
        grey += 400 * np.clip(speck - 0.62, 0, None) - 300 * np.clip(0.38 - speck, 0, None)
        grey = ndimage.gaussian_filter(grey, 0.5)

        mask_img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask_img)
        for crack in self.cracks:
            x0, y0, x1, y1 = crack.bounds
            if x1 < c0 or y1 < r0 or x0 > c0 + w or y0 > r0 + h:
                continue
            pts = [(float(x - c0), float(y - r0)) for x, y in crack.points]
            draw.line(pts, fill=1, width=crack.width, joint="curve")
        mask = np.asarray(mask_img, dtype=np.uint8)
        # Soft, dark crack interior; the ground truth is the drawn footprint.
        alpha = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 0.8) * 1.3, 0, 1)
        crack_val = 45 + rng.normal(0, 8, (h, w))
        grey = grey * (1 - alpha) + crack_val * alpha
        rgb = np.clip(grey[None] + self.tint[:, None, None], 0, 255).astype(np.uint8)
        return rgb, mask


def write_scene(scene: CrackScene, image_path: str | Path, truth_path: str | Path,
                block: int = 512) -> None:
    """Write image and truth as tiled, georeferenced GeoTIFFs, one block at a time."""
    transform = from_origin(*DEMO_ORIGIN, DEMO_PIXEL_SIZE, DEMO_PIXEL_SIZE)
    common = dict(driver="GTiff", width=scene.size, height=scene.size, crs=DEMO_CRS,
                  transform=transform, tiled=True, blockxsize=block, blockysize=block,
                  compress="deflate")
    with rasterio.open(image_path, "w", count=3, dtype="uint8", photometric="RGB", **common) as img, \
            rasterio.open(truth_path, "w", count=1, dtype="uint8", **common) as truth:
        for r in range(0, scene.size, block):
            for c in range(0, scene.size, block):
                win = Window(c, r, min(block, scene.size - c), min(block, scene.size - r))
                rgb, mask = scene.render(win)
                img.write(rgb, window=win)
                truth.write(mask[None], window=win)
