"""Training data: sources, a deterministic split, per-worker datasets (augmentation:
jobs/training/augment.py).

The driver calls ``plan_data(cfg.data)`` once: it lists the pair folders / opens the rasters /
fixes the synthetic set, checks that the data is there, and splits it deterministically. The plan
is a plain JSON-able dict handed to every Ray Train worker, so all workers see the same items and
the same split, and a missing folder or unreadable scene fails before any worker starts.

Workers build ``TrainDataset`` (random augmented crops) and ``ValDataset`` (whole images at native
resolution; validation windows them with ``jobs/inference/sliding_window.py``) from the plan.

Every item loads as ``(image uint8[3,H,W], mask bool[H,W], valid bool[H,W])``.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import PurePosixPath

import numpy as np

import ingest
from ingest import storage
from ingest.storage import fs_for, join
from jobs.runtime.errors import DataError
from jobs.training.augment import augment
from jobs.training.mixture import group_index, merge_members, pick_item, spread_subset
from jobs.training.synthetic import synth_item

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


# ----------------------------------------------------------------------------- storage helpers

def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _list_files(uri: str) -> list[str]:
    """Full URIs/paths of the image files directly inside folder ``uri`` (sorted)."""
    fs, path = fs_for(uri)
    try:
        if not fs.isdir(path):
            raise DataError(f"data folder not found: {uri}")
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        raise DataError(f"data folder not found: {uri}") from None
    except PermissionError as err:
        raise DataError(f"cannot list {uri}: access denied ({err})") from None
    out = []
    for name in names:
        base = PurePosixPath(name).name
        if base.lower().endswith(IMAGE_EXTS) and not base.startswith("."):
            out.append(join(uri, base))
    return sorted(out)


# ----------------------------------------------------------------------------- planning (driver)

def _abs(uri: str) -> str:
    """Local paths made absolute on the driver: Ray Train workers run in another directory."""
    if _is_remote(uri):
        return uri
    return os.path.abspath(os.path.expanduser(uri[7:] if uri.startswith("file://") else uri))


def pairs_items(src: dict) -> list[dict]:
    """The items of a ``pairs`` source (``PairsData`` as a dict): every image with the mask of
    the same stem, sorted by image name; ``DataError`` when a folder is missing or empty or an
    image has no mask."""
    root = _abs(src["root"])
    images = _list_files(join(root, src["image_dir"]))
    masks = _list_files(join(root, src["mask_dir"]))
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in {join(root, src['image_dir'])}")
    by_stem = {PurePosixPath(m).stem: m for m in masks}
    items, missing = [], []
    for img in images:
        stem = PurePosixPath(img).stem
        if stem in by_stem:
            items.append({"kind": "pairs", "key": stem, "image": img, "mask": by_stem[stem],
                          "threshold": src["threshold"]})
        else:
            missing.append(stem)
    if missing:
        raise DataError(f"{len(missing)} image(s) in {join(root, src['image_dir'])} have no mask "
                        f"in {join(root, src['mask_dir'])} (first: {missing[0]!r})")
    if src.get("limit"):
        items = items[: src["limit"]]
    return items


def _raster_items(src: dict) -> tuple[list[dict], list[dict]]:

    scenes, items = [], []
    for idx, pair in enumerate(src["pairs"]):
        pair = {"image": _abs(pair["image"]), "label": _abs(pair["label"])}
        try:
            scene = ingest.open_scene(pair["image"], bands=src.get("bands"))
            # A label raster may declare nodata=0 (= background): its validity is not used.
            label = ingest.open_scene(pair["label"], check_empty=False)
        except Exception as err:  # ingest.SceneError and friends carry one-line messages
            raise DataError(f"raster pair {idx}: {err}") from None
        if (scene.height, scene.width) != (label.height, label.width):
            raise DataError(f"raster pair {idx}: label {pair['label']} is "
                            f"{label.height}x{label.width} but image {pair['image']} is "
                            f"{scene.height}x{scene.width}")
        # Same policy as the segment job: uint8 passes through, other dtypes get the
        # scene-wide percentile stretch.
        radiometry = ingest.Radiometry.for_scene(scene, percentiles=tuple(src["percentiles"]))
        scenes.append({"image": pair["image"], "label": pair["label"], "bands": src.get("bands"),
                       "radiometry": radiometry.to_dict(), "threshold": src["threshold"]})
        tile = src["tile"]
        grid = ingest.TileGrid(scene.height, scene.width, tile, 0)
        for t in grid:
            w = t.read_window
            col0, row0 = int(w.col_off), int(w.row_off)
            inside_h = max(0, min(scene.height, row0 + int(w.height)) - max(0, row0))
            inside_w = max(0, min(scene.width, col0 + int(w.width)) - max(0, col0))
            if inside_h * inside_w < src["min_valid"] * int(w.height) * int(w.width):
                continue
            items.append({"kind": "raster", "key": f"{idx}:{t.index[0]}:{t.index[1]}",
                          "scene": idx, "window": [col0, row0, int(w.width), int(w.height)]})
    if not items:
        raise DataError("raster sources gave no tiles (scenes smaller than min_valid allows?)")
    return items, scenes


def _synthetic_items(src: dict) -> list[dict]:
    return [{"kind": "synthetic", "key": f"syn{i:05d}", "index": i, "size": src["size"],
             "seed": src["seed"], "width": list(src["width"])} for i in range(src["count"])]


def source_items(src: dict) -> tuple[list[dict], list[dict]]:
    kind = src["kind"]
    if kind == "pairs":
        return pairs_items(src), []
    if kind == "raster":
        return _raster_items(src)
    if kind == "synthetic":
        return _synthetic_items(src), []
    raise DataError(f"unknown data kind {kind!r}")


def split_items(items: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic split: items sorted by key, ranked by a seeded hash of the key; the first
    ``round(n * val_fraction)`` (at least 1, at most n - 1) go to validation. Adding items later
    moves few existing ones between the sets (rank by hash, not by position)."""
    if len(items) < 2:
        raise DataError(f"need at least 2 items to split into train/val, got {len(items)}")
    n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))

    def rank(item):
        return hashlib.sha1(f"{seed}:{item['key']}".encode()).hexdigest()

    ordered = sorted(items, key=lambda it: (rank(it), it["key"]))
    val_keys = {it["key"] for it in ordered[:n_val]}
    train = [it for it in items if it["key"] not in val_keys]
    val = [it for it in items if it["key"] in val_keys]
    return train, val


def _plan_members(mixture: dict, split: dict) -> tuple[list, list, list, list]:
    """``(train, val, scenes, groups)`` of a mixture: every member split (or validated) on its
    own, then merged (``jobs/training/mixture.py``)."""
    parts = []
    for m in mixture["members"]:
        try:
            train, val, scenes = _train_val(m["source"], m.get("val_source"), split)
        except DataError as err:
            raise DataError(f"mixture member {m['name']!r}: {err}") from None
        val = spread_subset(val, m.get("val_limit"), split["seed"])
        parts.append({"name": m["name"], "weight": m["weight"], "train": train, "val": val,
                      "scenes": scenes})
    return merge_members(parts)


def plan_data(data_cfg: dict) -> dict:
    """Resolve the data section into ``{"train": [...], "val": [...], "scenes": [...],
    "groups": [...], "summary"}``; ``groups`` lists the mixture's members (one ``all`` group
    for a single source), and items carry their group's index.

    Raises ``DataError`` (one line) when a source is missing, empty or inconsistent.
    """
    src = data_cfg["source"]
    if src["kind"] == "mixture":
        train, val, scenes, groups = _plan_members(src, data_cfg["split"])
    else:
        train, val, scenes = _train_val(src, data_cfg.get("val_source"), data_cfg["split"])
        groups = [{"name": "all", "weight": 1.0, "train_items": len(train),
                   "val_items": len(val)}]
    summary = {"source_kind": src["kind"], "train_items": len(train),
               "val_items": len(val), "val_keys_sha1": hashlib.sha1(
                   "\n".join(sorted(it["key"] for it in val)).encode()).hexdigest()[:12]}
    if src["kind"] == "pairs":
        summary["root"] = src["root"]
    elif src["kind"] == "raster":
        summary["scenes"] = [p["image"] for p in src["pairs"]]
    elif src["kind"] == "mixture":
        summary["groups"] = groups
    return {"train": train, "val": val, "scenes": scenes, "groups": groups,
            "samples_per_epoch": src.get("samples_per_epoch"), "summary": summary}


def _train_val(source: dict, val_source: dict | None, split: dict
               ) -> tuple[list[dict], list[dict], list[dict]]:
    """``(train, val, scenes)`` of one source: a separate validation source, else the split."""
    items, scenes = source_items(source)
    if val_source:
        val_items, val_scenes = source_items(val_source)
        for it in val_items:  # scene indexes of the val source follow the train source's
            if it["kind"] == "raster":
                it["scene"] += len(scenes)
            it["key"] = "val/" + it["key"]
        return items, val_items, scenes + val_scenes
    train, val = split_items(items, split["val_fraction"], split["seed"])
    return train, val, scenes


def check_item(plan: dict, item: dict) -> None:
    """Load one item (driver-side smoke check: readable, image/mask sizes agree)."""
    ItemLoader(plan["scenes"], cache=False).load(item)


# ----------------------------------------------------------------------------- loading (workers)

def _decode_image(data: bytes, uri: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
    except Exception as err:  # PIL raises many types for broken files
        raise DataError(f"unreadable image {uri}: {err}") from None


def _decode_mask(data: bytes, uri: str, threshold: float) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im)
    except Exception as err:
        raise DataError(f"unreadable mask {uri}: {err}") from None
    if arr.dtype == bool:
        return arr if arr.ndim == 2 else arr.any(axis=-1)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1)
    return arr > threshold


class ItemLoader:
    """Loads plan items; optional in-memory cache of decoded items (per process)."""

    def __init__(self, scenes: list[dict], cache: bool = True):
        self.scenes = scenes
        self.cache = cache
        self._cache: dict[str, tuple] = {}
        self._open: dict[int, tuple] = {}

    def load(self, item: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = item["key"]
        if self.cache and key in self._cache:
            return self._cache[key]
        out = self._load(item)
        if self.cache:
            self._cache[key] = out
        return out

    def _load(self, item):
        kind = item["kind"]
        if kind == "synthetic":
            img, mask = synth_item(item["index"], item["size"], item["seed"], tuple(item["width"]))
            return img, mask, np.ones_like(mask)
        if kind == "pairs":
            img = _decode_image(storage.read_bytes(item["image"]), item["image"])
            mask = _decode_mask(storage.read_bytes(item["mask"]), item["mask"], item["threshold"])
            if mask.shape != img.shape[1:]:
                raise DataError(f"mask {item['mask']} is {mask.shape[0]}x{mask.shape[1]} but "
                                f"image {item['image']} is {img.shape[1]}x{img.shape[2]}")
            return img, mask, np.ones_like(mask)
        if kind == "raster":
            return self._load_raster(item)
        raise DataError(f"unknown item kind {kind!r}")

    def _scene(self, idx: int):
        if idx not in self._open:

            meta = self.scenes[idx]
            self._open[idx] = (ingest.open_scene(meta["image"], bands=meta.get("bands"),
                                                 check_empty=False),
                               ingest.open_scene(meta["label"], check_empty=False),
                               ingest.Radiometry.from_dict(meta["radiometry"]))
        return self._open[idx]

    def _load_raster(self, item):
        from rasterio.windows import Window

        # samsp imports torch: the driver checks data without it
        from samsp.preprocess import to_three_bands

        scene, label, radiometry = self._scene(item["scene"])
        window = Window(*item["window"])
        data, valid = scene.read(window)
        img = radiometry.apply(data, valid)
        img = to_three_bands(img[None])[0]
        lab, _ = label.read(window)  # same grid: the image's validity covers padding
        thr = self.scenes[item["scene"]]["threshold"]
        mask = (lab[0] > thr) & valid
        return np.ascontiguousarray(img, dtype=np.uint8), mask, valid


# ----------------------------------------------------------------------------- torch datasets

class TrainDataset:
    """Augmented crops: ``samples_per_item`` per item per epoch, deterministic in (seed, epoch, i).

    ``__getitem__`` returns ``(image uint8[3,c,c], mask float32[1,c,c], valid float32[1,c,c])``
    as torch tensors.
    """

    def __init__(self, plan: dict, crop: int, aug: dict, seed: int, samples_per_item: int = 1,
                 cache: bool = True):
        self.items = plan["train"]
        self.loader = ItemLoader(plan["scenes"], cache=cache)
        self.crop, self.aug, self.seed = crop, aug, seed
        self.samples_per_item = samples_per_item
        self.epoch = 0
        # A mixture draws each sample's item by the members' weights; one source cycles its
        # items, as it always has.
        groups = plan.get("groups") or []
        self.weights = [g["weight"] for g in groups] if len(groups) > 1 else None
        self.by_group = group_index(self.items, len(groups)) if self.weights else None
        self.per_epoch = plan.get("samples_per_epoch") or len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch * self.samples_per_item

    def __getitem__(self, i: int):
        import torch

        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.weights:
            item = self.items[pick_item(self.by_group, self.weights, rng)]
        else:
            item = self.items[i % len(self.items)]
        img, mask, valid = self.loader.load(item)
        ci, cm, cv = augment(img, mask, valid, self.crop, self.aug, rng)
        return (torch.from_numpy(ci), torch.from_numpy(cm[None].astype(np.float32)),
                torch.from_numpy(cv[None].astype(np.float32)))


class ValDataset:
    """Whole validation images at native resolution (batch size 1: sizes may differ)."""

    def __init__(self, plan: dict, cache: bool = True):
        self.items = plan["val"]
        self.loader = ItemLoader(plan["scenes"], cache=cache)
        # Validation scores each group (mixture member) on its own.
        self.group_names = [g["name"] for g in plan.get("groups") or [{"name": "all"}]]

    def group(self, i: int) -> int:
        return self.items[i].get("group", 0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        img, mask, valid = self.loader.load(self.items[i])
        return torch.from_numpy(img), torch.from_numpy(mask), torch.from_numpy(valid)
