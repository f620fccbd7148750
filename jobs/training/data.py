"""Training data: sources, a deterministic split, per-worker datasets (augmentation:
jobs/training/augment.py).

The driver calls ``plan_data(cfg.data)`` once: it lists the pair folders / opens the rasters and
checks their labels (jobs/training/raster_source.py) / fixes the synthetic set, checks that the
data is there, and splits it deterministically (at random, or by spatial blocks:
jobs/training/geo_split.py). The plan is a plain JSON-able dict handed to every Ray Train
worker, so all workers see the same items and the same split, and a missing folder or unreadable
scene fails before any worker starts.

Workers build ``TrainDataset`` (random augmented crops) and ``ValDataset`` (whole images at native
resolution; validation windows them with ``jobs/inference/sliding_window.py``) from the plan. With
``data.streaming``, Ray Data tasks draw, load and augment the training samples through the same
``TrainDataset`` instead (``jobs/training/streaming.py``).

Every item loads as ``(image uint8[3,H,W], mask bool[H,W], valid bool[H,W])``.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import PurePosixPath

import numpy as np

from ingest import storage
from ingest.storage import fs_for, join
from jobs.runtime.errors import DataError
from jobs.training.augment import augment
from jobs.training.geo_split import block_sides, spatial_split
from jobs.training.mixture import (group_index, member_augment, member_groups, merge_members,
                                   pick_item, spread_subset)
from jobs.training.raster_source import load_window, open_raster, positive_windows, raster_items
from jobs.training.scene_listing import listed_pairs, listing_facts, recorded_scenes, recorded_uri
from jobs.training.synthetic import synth_item
from jobs.training.window_sampling import epoch_positions, sampling_facts

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

def absolute_uri(uri: str) -> str:
    """Local paths made absolute on the driver: Ray Train workers run in another directory."""
    if _is_remote(uri):
        return uri
    return os.path.abspath(os.path.expanduser(uri[7:] if uri.startswith("file://") else uri))


def pairs_items(src: dict) -> list[dict]:
    """The items of a ``pairs`` source (``PairsData`` as a dict): every image with the mask of
    the same stem, sorted by image name; ``DataError`` when a folder is missing or empty or an
    image has no mask."""
    root = absolute_uri(src["root"])
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


def _raster_items(src: dict, facts: dict | None = None) -> tuple[list[dict], list[dict]]:
    """A ``raster`` source's windows and scenes (``jobs/training/raster_source.py``), its local
    paths made absolute first (workers run elsewhere). Listed scenes (``scenes``,
    jobs/training/scene_listing.py) become pairs first; ``facts`` then gets the listing's
    account (``listing``) and the scenes kept (``scenes``)."""
    listing, left_out = src.get("scenes"), None
    if listing:
        pairs, left_out = listed_pairs(listing)
        listed = len(pairs) + len(left_out)  # STAC items without the asset are left out already
    else:
        pairs = src["pairs"]
    pairs = [dict(p, image=absolute_uri(p["image"]), label=absolute_uri(p["label"]),
                  aoi=absolute_uri(p["aoi"]) if p.get("aoi") else None) for p in pairs]
    items, scenes = raster_items(dict(src, pairs=pairs), left_out)
    if listing:
        facts = {} if facts is None else facts
        facts["listing"] = listing_facts(listing, listed, len(scenes), left_out)
        facts["scenes"] = [sc["image"] for sc in scenes]
        if left_out:
            logging.getLogger("samsp.train").warning(
                "data.source.scenes: %d of %d listed scenes left out (each logged above with "
                "its reason)", len(left_out), listed)
    return items, scenes


def _synthetic_items(src: dict) -> list[dict]:
    return [{"kind": "synthetic", "key": f"syn{i:05d}", "index": i, "size": src["size"],
             "seed": src["seed"], "width": list(src["width"])} for i in range(src["count"])]


def source_items(src: dict, facts: dict | None = None) -> tuple[list[dict], list[dict]]:
    """``(items, scenes)`` of one source; ``facts`` (a dict) gets a scene listing's account."""
    kind = src["kind"]
    if kind == "pairs":
        return pairs_items(src), []
    if kind == "raster":
        return _raster_items(src, facts)
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


def _plan_members(mixture: dict, split: dict, images: dict | None = None
                  ) -> tuple[list, list, list, list, dict]:
    """``(train, val, scenes, groups, splits)`` of a mixture: every member split (or validated)
    on its own, then merged (``jobs/training/mixture.py``); ``splits``: each member's split;
    ``images`` (a dict) gets each raster member's kept images (:func:`kept_images`)."""
    parts, splits, facts = [], {}, []
    for m in mixture["members"]:
        facts.append({})
        try:
            train, val, scenes, splits[m["name"]] = _train_val(m["source"], m.get("val_source"),
                                                               split, facts[-1])
        except DataError as err:
            raise DataError(f"mixture member {m['name']!r}: {err}") from None
        val = spread_subset(val, m.get("val_limit"), split["seed"])
        parts.append({"name": m["name"], "weight": m["weight"], "train": train, "val": val,
                      "scenes": scenes, "val_cut": m.get("val_cut", 0),
                      "empty_crops": m.get("empty_crops")})
    train, val, scenes, groups = merge_members(parts)
    for group, member in zip(member_groups(groups), facts):  # its listings, as plan_data's
        group.update(listing_summary(member))
    if images is not None:
        for m, member in zip(mixture["members"], facts):
            if m["source"]["kind"] == "raster":
                images[m["name"]] = kept_images(m["source"], member["source"])
    return train, val, scenes, groups, splits


def kept_images(src: dict, facts: dict) -> list[str]:
    """The images of the scenes a ``raster`` source kept, in plan order, as the workers open
    them (a listing's hrefs may be signed: outputs record them redacted, ``recorded_scenes``);
    ``facts``: the source's, as ``source_items`` filled them."""
    return list(facts["scenes"]) if src.get("scenes") else [p["image"] for p in src["pairs"]]


def _recorded_label_facts(facts: dict) -> dict:
    """A scene's label facts as the summary records them: their layers' URIs redacted."""
    return {k: recorded_uri(v) if k in ("labels", "aoi") and isinstance(v, str) else v
            for k, v in facts.items()}


def listing_summary(facts: dict) -> dict:
    """The summary keys of a source's (and its validation source's) scene listings."""
    return {f"{'val_' if role == 'val_source' else ''}listing": f["listing"]
            for role, f in facts.items() if "listing" in f}


def plan_data(data_cfg: dict) -> dict:
    """Resolve the data section into ``{"train": [...], "val": [...], "scenes": [...],
    "groups": [...], "images", "summary"}``; ``groups`` lists the mixture's members (one ``all``
    group for a single source), and items carry their group's index. ``images``: the images of
    the scenes each raster source kept (``source``, or a mixture's member names), for the
    bundle's input contract. ``summary`` (the bundle's data provenance, summary.json, printed)
    records the split: its kind, block size and counts, and the kept scenes -- every URI in it
    redacted (``scene_listing.recorded_uri``: no signature of a presigned href).

    Raises ``DataError`` (one line) when a source is missing, empty or inconsistent.
    """
    src = data_cfg["source"]
    facts: dict = {}
    images: dict = {}
    if src["kind"] == "mixture":
        train, val, scenes, groups, split = _plan_members(src, data_cfg["split"], images)
    else:
        train, val, scenes, split = _train_val(src, data_cfg.get("val_source"),
                                               data_cfg["split"], facts)
        if src["kind"] == "raster":
            images["source"] = kept_images(src, facts["source"])
        groups = [{"name": "all", "weight": 1.0, "train_items": len(train),
                   "val_items": len(val)}]
    whole_val = [it for it in val if not it.get("cut")]  # val_cut copies are not more images
    summary = {"source_kind": src["kind"], "train_items": len(train),
               "val_items": len(whole_val), "val_keys_sha1": hashlib.sha1(
                   "\n".join(sorted(it["key"] for it in whole_val)).encode()).hexdigest()[:12],
               "split": split}
    if src["kind"] == "pairs":
        summary["root"] = recorded_uri(src["root"])
    elif src["kind"] == "raster":
        summary["scenes"] = recorded_scenes(images["source"])  # redacted: hrefs may be signed
        summary["labels"] = [_recorded_label_facts(sc["label_facts"]) for sc in scenes
                             if "label_facts" in sc]
    elif src["kind"] == "mixture":
        summary["groups"] = groups
    summary.update(listing_summary(facts))  # scene listings (source, val_source)
    fraction = src.get("positive_fraction") if src["kind"] == "raster" else None
    if fraction is not None:
        # one bool per training window (jobs/training/window_sampling.py)
        for it, flag in zip(train, positive_windows(train, scenes)):
            it["positive"] = flag
        summary["sampling"] = sampling_facts([it["positive"] for it in train], fraction)
        if summary["sampling"]["fallback"]:
            logging.getLogger("samsp.train").warning("data.source.positive_fraction: %s",
                                                     summary["sampling"]["fallback"])
    return {"train": train, "val": val, "scenes": scenes, "groups": groups,
            "samples_per_epoch": src.get("samples_per_epoch"), "positive_fraction": fraction,
            "images": images, "summary": summary}


def _train_val(source: dict, val_source: dict | None, split: dict, facts: dict | None = None
               ) -> tuple[list[dict], list[dict], list[dict], dict]:
    """``(train, val, scenes, split facts)`` of one source: a separate validation source, else
    the spatial split (raster sources that ask for it), else the random split. ``facts`` gets
    the scene listings' accounts (``source``, ``val_source``)."""
    facts = {} if facts is None else facts
    items, scenes = source_items(source, facts.setdefault("source", {}))
    if val_source:
        val_items, val_scenes = source_items(val_source, facts.setdefault("val_source", {}))
        for it in val_items:  # scene indexes of the val source follow the train source's
            if it["kind"] == "raster":
                it["scene"] += len(scenes)
            it["key"] = "val/" + it["key"]
        return items, val_items, scenes + val_scenes, {"kind": "val_source"}
    spatial = split.get("spatial")
    if spatial is not None and source["kind"] == "raster":
        tile = source["tile"]
        train, val, facts = spatial_split(items, block_sides(scenes, spatial, tile),
                                          split["val_fraction"], split["seed"],
                                          spatial.get("buffer_windows", 1) * tile)
        facts.update({k: spatial.get(k) for k in ("block_m", "buffer_windows")})
        return train, val, scenes, facts
    train, val = split_items(items, split["val_fraction"], split["seed"])
    return train, val, scenes, {"kind": "random", "val_fraction": split["val_fraction"],
                                "seed": split["seed"]}


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
        key = item.get("image_key", item["key"])  # a val_cut copy shares its image's entry
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
        # Opened once per process: the image, its label raster or vector label reader (which
        # keeps the layers' metadata, never their features) and the radiometry -- the most
        # recently used 16 scenes kept (a scene listing may hold thousands). An evicted scene
        # is dropped, not closed (another thread may still read it: it closes with its last
        # reference). Each step is one atomic dict operation, so threads may share a loader.
        keep = 16
        opened = self._open.pop(idx, None)
        if opened is None:
            opened = open_raster(self.scenes[idx])
        self._open[idx] = opened  # the most recently used last
        for old in list(self._open)[:-keep]:
            self._open.pop(old, None)
        return opened

    def _load_raster(self, item):
        return load_window(self._scene(item["scene"]), self.scenes[item["scene"]], item)


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
        groups = self.groups = plan.get("groups") or []
        self.weights = ([g["weight"] for g in groups] if len(member_groups(groups)) > 1
                        else None)
        self.by_group = group_index(self.items, len(groups)) if self.weights else None
        self.per_epoch = plan.get("samples_per_epoch") or len(self.items)
        # data.source.positive_fraction: each epoch's windows drawn by their positive flags
        # (jobs/training/window_sampling.py); None: they cycle
        self.positive_fraction = None if self.weights else plan.get("positive_fraction")
        self._positions: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch * self.samples_per_item

    def draw(self, epoch: int, i: int) -> tuple[int, np.random.Generator]:
        """Sample ``i`` of ``epoch``: its item's position in ``items`` and the generator its
        augmentation continues with -- a function of (seed, epoch, i) alone (the streaming
        path, jobs/training/streaming.py, draws its samples with it too)."""
        rng = np.random.default_rng([self.seed, epoch, i])
        if self.weights:
            return pick_item(self.by_group, self.weights, rng), rng
        if self.positive_fraction is not None:
            return int(self.positions(epoch)[i]), rng
        return i % len(self.items), rng

    def positions(self, epoch: int) -> np.ndarray:
        """The window of each sample of ``epoch`` with a positive fraction (the last epoch's
        kept: one int per sample)."""
        if self._positions is None or self._positions[0] != epoch:
            flags = [bool(it.get("positive")) for it in self.items]
            self._positions = (epoch, epoch_positions(flags, len(self), self.positive_fraction,
                                                      self.seed, epoch))
        return self._positions[1]

    def augmented(self, item: dict, rng: np.random.Generator):
        """``(image uint8[3,c,c], mask bool[c,c], valid bool[c,c])``: ``item`` loaded and
        augmented with ``rng`` (its mixture member's ``empty_crops``, where it has one)."""
        img, mask, valid = self.loader.load(item)
        return augment(img, mask, valid, self.crop, self.member_aug(item), rng)

    def member_aug(self, item: dict) -> dict:
        return member_augment(self.aug, self.groups[item.get("group", 0)] if self.groups
                              else None)

    def __getitem__(self, i: int):
        import torch

        pos, rng = self.draw(self.epoch, i)
        ci, cm, cv = self.augmented(self.items[pos], rng)
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

    def cut(self, i: int) -> int:
        """``n`` when item ``i`` is scored as ``n`` x ``n`` crops stitched back (``val_cut``)."""
        return self.items[i].get("cut", 0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        img, mask, valid = self.loader.load(self.items[i])
        return torch.from_numpy(img), torch.from_numpy(mask), torch.from_numpy(valid)
