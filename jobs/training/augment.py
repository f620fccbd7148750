"""Joint augmentation of training crops: random rescale + crop (boundless, padding invalid),
flips and 90-degree rotations, colour jitter, grey crops, cast shadows and small-image padding.
Image, mask and valid move together, and labels survive downscaling wherever the structure
stays visible (``label_keep_threshold``).

Arrays are ``image uint8[C,h,w]``, ``mask bool[h,w]``, ``valid bool[h,w]`` (``resize_chw`` works on
any ``[C,h,w]``); randomness comes from the caller's generator, so a crop is reproducible.
"""
from __future__ import annotations

import math

import numpy as np


def label_keep_threshold(ratio: float) -> float:
    """Coverage above which a label pixel downscaled by ``ratio`` (source / output pixels,
    > 1) stays positive.

    Area pooling gives each output pixel the covered fraction of its source window, and a window
    spans at most ``ceil(ratio) + 1`` source pixels, so a 1-px line -- still visible in the
    (antialiased) downscaled image -- covers at least ``1 / (ceil(src / out) + 1)`` of some
    window across it. Thresholding at 0.5 would delete such lines (at scale 0.5 every
    sub-pixel position); this threshold keeps them, and moves a thick object's edge outwards by
    at most a fraction of an output pixel.
    """
    return min(0.5, 1.0 / (math.ceil(ratio) + 1)) - 1e-6


def resize_chw(arr: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize ``[C,h,w]`` (any dtype) to ``size`` (h, w).

    Bool arrays (labels) upscale by bilinear > 0.5 and downscale by area coverage above
    ``label_keep_threshold``: a thin structure that stays visible in the image keeps its label.
    """
    import torch
    import torch.nn.functional as F

    if arr.shape[-2:] == tuple(size):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    if arr.dtype == bool and mode != "nearest" and size[0] < arr.shape[-2]:
        cover = F.interpolate(t, size=size, mode="area")[0].numpy()
        ratio = max(arr.shape[-2] / size[0], arr.shape[-1] / size[1])
        return cover > label_keep_threshold(ratio)
    if mode == "nearest":
        out = F.interpolate(t, size=size, mode="nearest")
    else:
        shrink = size[0] < arr.shape[-2]
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    out = out[0].numpy()
    if arr.dtype == bool:
        return out > 0.5
    if arr.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(arr.dtype)


def random_crop(img, mask, valid, crop: int, scale: float, rng: np.random.Generator):
    """A ``crop`` x ``crop`` window of the image rescaled by ``scale`` (padding invalid)."""
    _, h, w = img.shape
    src = max(1, int(round(crop / scale)))  # window side in source pixels
    y0 = int(rng.integers(0, h - src + 1)) if h > src else -int(rng.integers(0, src - h + 1))
    x0 = int(rng.integers(0, w - src + 1)) if w > src else -int(rng.integers(0, src - w + 1))
    return crop_window(img, mask, valid, y0, x0, src, crop)


def crop_window(img, mask, valid, y0: int, x0: int, src: int, out: int):
    """Boundless ``src`` x ``src`` window at (y0, x0), resized to ``out``; outside = invalid."""
    c, h, w = img.shape
    ci = np.zeros((c, src, src), np.uint8)
    cm = np.zeros((1, src, src), bool)
    cv = np.zeros((1, src, src), bool)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + src), min(w, x0 + src)
    if ye > ys and xe > xs:
        ci[:, ys - y0:ye - y0, xs - x0:xe - x0] = img[:, ys:ye, xs:xe]
        cm[0, ys - y0:ye - y0, xs - x0:xe - x0] = mask[ys:ye, xs:xe]
        cv[0, ys - y0:ye - y0, xs - x0:xe - x0] = valid[ys:ye, xs:xe]
    if src != out:
        ci = resize_chw(ci, (out, out), "bilinear")
        cv = resize_chw(cv, (out, out), "nearest")
        cm = resize_chw(cm, (out, out), "bilinear") & cv  # no label where there is no image
    return ci, cm[0], cv[0]


def color_jitter(img: np.ndarray, valid: np.ndarray, aug: dict, rng: np.random.Generator):
    x = img.astype(np.float32)
    if aug["brightness"] > 0:
        x *= 1 + rng.uniform(-aug["brightness"], aug["brightness"])
    if aug["contrast"] > 0:
        m = x[:, valid].mean() if valid.any() else x.mean()
        x = m + (x - m) * (1 + rng.uniform(-aug["contrast"], aug["contrast"]))
    if aug["saturation"] > 0:
        g = x.mean(axis=0, keepdims=True)
        x = g + (x - g) * (1 + rng.uniform(-aug["saturation"], aug["saturation"]))
    if aug["gamma"] > 0:
        x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** (1 + rng.uniform(-aug["gamma"], aug["gamma"]))
    x = np.clip(x, 0, 255)
    x[:, ~valid] = 0
    return x.astype(np.uint8)


def grey_and_shadow(img: np.ndarray, valid: np.ndarray, aug: dict, rng: np.random.Generator):
    """Other cameras and light: with ``aug["grayscale"]`` probability the crop turns grey; with
    ``aug["shadow"]`` a random half-plane is darkened to 35-75 % with a soft edge (a cast
    shadow across the pavement, as in ShadowCrack)."""
    grey = aug.get("grayscale", 0) > 0 and rng.random() < aug["grayscale"]
    shadow = aug.get("shadow", 0) > 0 and rng.random() < aug["shadow"]
    if not (grey or shadow):
        return img
    x = img.astype(np.float32)
    if grey:
        x[:] = x.mean(axis=0, keepdims=True)
    if shadow:
        _, h, w = x.shape
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        side = (np.cos(ang) * (xx - rng.uniform(0, w)) + np.sin(ang) * (yy - rng.uniform(0, h)))
        edge = max(1.0, rng.uniform(0.01, 0.1) * max(h, w))
        inside = 1.0 / (1.0 + np.exp(-np.clip(side / edge, -30, 30)))
        x *= 1.0 - (1.0 - rng.uniform(0.35, 0.75)) * inside
    x[:, ~valid] = 0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def geometric(img, mask, valid, aug: dict, rng: np.random.Generator):
    """Joint flips and 90-degree rotations (same transform on image, mask and valid)."""
    if aug["hflip"] and rng.random() < 0.5:
        img, mask, valid = img[:, :, ::-1], mask[:, ::-1], valid[:, ::-1]
    if aug["vflip"] and rng.random() < 0.5:
        img, mask, valid = img[:, ::-1], mask[::-1], valid[::-1]
    if aug["rot90"]:
        k = int(rng.integers(0, 4))
        if k:
            img = np.rot90(img, k, axes=(1, 2))
            mask, valid = np.rot90(mask, k), np.rot90(valid, k)
    return (np.ascontiguousarray(img), np.ascontiguousarray(mask), np.ascontiguousarray(valid))


def small_image(img, mask, valid, aug: dict, rng: np.random.Generator):
    """With ``aug["small_image"]`` probability, keep only a random top-left ``h x w`` part of
    the crop (each side ``small_image_min``..1 of it) and make the rest padding: an image
    smaller than the model window, as evaluation and segmentation pad it (bottom/right,
    invalid). Without it such windows are rare in training (a crop needs scale < 2/3 of a
    small photo to show any padding), and crops scored 0.09 Dice below the same pixels whole
    (``python -m bench.small_images``)."""
    if aug.get("small_image", 0) <= 0 or rng.random() >= aug["small_image"]:
        return img, mask, valid
    _, size_h, size_w = img.shape
    lo = aug.get("small_image_min", 0.35)
    h = int(rng.integers(max(1, round(lo * size_h)), size_h + 1))
    w = int(rng.integers(max(1, round(lo * size_w)), size_w + 1))
    keep = np.zeros((size_h, size_w), bool)
    keep[:h, :w] = True
    valid = valid & keep
    return np.where(valid, img, 0).astype(img.dtype), mask & valid, valid


def augment(img, mask, valid, crop: int, aug: dict, rng: np.random.Generator):
    """Random rescale + crop (redrawn while too few positives, or -- ``empty_crops`` of the
    time -- while any), flips/rot90, colour jitter, then (sometimes) a small image's padding."""
    ci, cm, cv = drawn_crop(img, mask, valid, crop, aug, rng)
    ci, cm, cv = geometric(ci, cm, cv, aug, rng)
    ci = color_jitter(ci, cv, aug, rng)
    ci = grey_and_shadow(ci, cv, aug, rng)
    return small_image(ci, cm, cv, aug, rng)


def drawn_crop(img, mask, valid, crop: int, aug: dict, rng: np.random.Generator):
    """A rescaled crop with at least ``min_positive`` positives (the most of up to 5 draws), or
    with ``empty_crops`` probability one with none (see ``empty_crop``)."""
    lo, hi = aug["scale"]
    # rng drawn only when an option is on: earlier configs keep their exact crops
    if (aug.get("fill_small", 0) > 0 and max(img.shape[1:]) < crop
            and rng.random() < aug["fill_small"]):
        return filled_crop(img, mask, valid, crop)
    empty = aug.get("empty_crops", 0) > 0 and rng.random() < aug["empty_crops"]
    search = aug.get("empty_crops_search", "draws")
    if empty and search != "draws":
        return empty_crop(img, mask, valid, crop, (lo, hi), rng, patches=search == "positions")
    min_positive = aug.get("min_positive", 0)
    tries = 8 if empty else 5 if min_positive > 0 else 1
    best = None
    for _ in range(tries):
        scale = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        cand = random_crop(img, mask, valid, crop, scale, rng)
        frac = cand[1].mean()
        score = -frac if empty else frac
        if best is None or score > best[0]:
            best = (score, cand)
        if (frac == 0) if empty else (frac >= min_positive):
            break
    return best[1]


def filled_crop(img, mask, valid, crop: int):
    """The whole photo (smaller than ``crop``) upscaled until its longer side is ``crop``,
    top-left in the crop, the rest padding (invalid): the scale and layout at which inference
    runs it with ``small_images: fill`` (the model frame's resize-longest-side). The crop then
    goes through the other steps as any crop does (flips and rot90 may move the padding to
    another side; ``small_image`` may cut it), and it is drawn before ``empty_crops`` and
    ``min_positive``, which do not apply to it."""
    from samsp.preprocess import resized_shape

    size = resized_shape(*img.shape[1:], crop)
    ci = np.zeros((img.shape[0], crop, crop), np.uint8)
    cm = np.zeros((crop, crop), bool)
    cv = np.zeros((crop, crop), bool)
    ci[:, :size[0], :size[1]] = resize_chw(img, size, "bilinear")
    cv[:size[0], :size[1]] = resize_chw(valid[None], size, "nearest")[0]
    cm[:size[0], :size[1]] = resize_chw(mask[None], size, "bilinear")[0]
    return np.where(cv, ci, 0).astype(np.uint8), cm & cv, cv


def empty_crop(img, mask, valid, crop: int, scale_range, rng: np.random.Generator, tries=4,
               patches: bool = True):
    """A crop drawn uniformly among the windows that hold no positive pixel (and are at least
    half valid), at a random scale (up to ``tries`` scales). Random draws
    (``empty_crops_search: draws``) miss the clean windows of a cracked photo: on four crack
    sets they reached 16 % crack-free crops for 50 % asked.

    Where no whole window is clean (a small photo crossed by its crack), with ``patches`` a
    clean patch of it (0.75, 0.5 or 0.35 of the window on one side, 70-100 % of that on the
    other) becomes a photo smaller than the window, padded as inference pads one: clean pavement as the 3x3 crops of a DeepCrack image
    show it. Where none is clean either, the last draw keeps its crack."""
    lo, hi = scale_range
    tables = summed_areas(mask, valid)  # once for every size tried
    for _ in range(tries):
        scale = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        src = max(1, int(round(crop / scale)))
        start = clean_window_start(mask, valid, src, rng, tables)
        if start is not None:
            return crop_window(img, mask, valid, start[0], start[1], src, crop)
    for frac in (0.75, 0.5, 0.35) if patches else ():
        side = (max(1, int(src * frac)), max(1, int(src * frac * rng.uniform(0.7, 1.0))))
        side = side[::-1] if rng.random() < 0.5 else side
        start = clean_window_start(mask, valid, side, rng, tables)
        if start is not None:
            ci, _, cv = crop_window(img, mask, valid, start[0], start[1], src, crop)
            keep = np.zeros_like(cv)
            keep[:max(1, side[0] * crop // src), :max(1, side[1] * crop // src)] = True
            cv &= keep
            return np.where(cv, ci, 0).astype(ci.dtype), np.zeros_like(cv), cv
    return random_crop(img, mask, valid, crop, scale, rng)


def _window_sums(table: np.ndarray, n_h: int, n_w: int, size: tuple[int, int]):
    """Sums of every ``size`` (h, w) window (clipped to the image) from a summed-area
    ``table``; each axis has its in-image starts, or one start when the image is narrower."""
    def axis(n, k):
        starts = np.arange(n - k + 1) if n > k else np.zeros(1, np.int64)
        return starts, np.minimum(starts + k, n)
    (y0, y1), (x0, x1) = axis(n_h, size[0]), axis(n_w, size[1])
    sums = table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]
    return sums, y1 - y0, x1 - x0


def _summed_area(arr: np.ndarray) -> np.ndarray:
    table = np.zeros((arr.shape[0] + 1, arr.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(arr, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
    return table


def summed_areas(mask, valid) -> tuple[np.ndarray, np.ndarray]:
    """The summed-area tables of ``mask`` and ``valid`` that ``clean_window_start`` reads."""
    return _summed_area(mask), _summed_area(valid)


def clean_window_start(mask, valid, size, rng: np.random.Generator, tables=None):
    """(y0, x0) of a random window of ``size`` (an int, or (h, w)) with no positive pixel and at
    least half of its in-image pixels valid, or None. Along an axis shorter than the window it
    covers the whole axis at a random (negative) offset, as ``random_crop`` places it.
    ``tables``: ``summed_areas(mask, valid)``, when several sizes are tried on one image."""
    sh, sw = (size, size) if isinstance(size, int) else size
    h, w = mask.shape
    mask_table, valid_table = tables if tables is not None else summed_areas(mask, valid)
    positives, rows, cols = _window_sums(mask_table, h, w, (sh, sw))
    valids, _, _ = _window_sums(valid_table, h, w, (sh, sw))
    ok = (positives == 0) & (2 * valids >= rows[:, None] * cols[None, :])
    free = np.flatnonzero(ok)
    if free.size == 0:
        return None
    r, c = divmod(int(free[rng.integers(free.size)]), ok.shape[1])
    y0 = r if h > sh else -int(rng.integers(0, sh - h + 1))
    x0 = c if w > sw else -int(rng.integers(0, sw - w + 1))
    return y0, x0
