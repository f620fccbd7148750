"""Mixtures of training sets: merging the members' items into one plan, and drawing each training
sample's item by the members' weights.

A mixture plan is an ordinary plan (``jobs/training/data.py``) whose items carry ``group`` (an
index into ``groups``) and keys prefixed ``<member>/``, plus ``groups``: the members' names,
weights and item counts -- and, after a member with ``val_cut``, its validation-only group
(marked ``cut``, weight 0, no training items; ``member_groups`` leaves these out). Sampling is a
pure function of a generator, so a sample stays reproducible in ``(seed, epoch, i)`` as every
other training crop is.
"""
from __future__ import annotations

import hashlib

import numpy as np


def spread_subset(items: list[dict], limit: int | None, seed: int) -> list[dict]:
    """At most ``limit`` of ``items``, ranked by a seeded hash of the key (a spread over the set,
    not its first files), returned in their original order."""
    if limit is None or len(items) <= limit:
        return items

    def rank(item):
        return hashlib.sha1(f"{seed}:{item['key']}".encode()).hexdigest()

    keep = {it["key"] for it in sorted(items, key=lambda it: (rank(it), it["key"]))[:limit]}
    return [it for it in items if it["key"] in keep]


def _tag(items: list[dict], group: int, name: str, scene_offset: int) -> list[dict]:
    out = []
    for it in items:
        it = dict(it, group=group, key=f"{name}/{it['key']}")
        if it["kind"] == "raster":
            it["scene"] += scene_offset
        out.append(it)
    return out


def merge_members(members: list[dict]) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """One plan's ``(train, val, scenes, groups)`` from per-member parts.

    ``members``: dicts with ``name``, ``weight``, ``train``, ``val`` (item lists) and ``scenes``
    (the raster scenes those items index, train's and val's together). Raster items' scene
    indexes are shifted into the merged scene list. A member with ``val_cut`` n gets a second,
    validation-only group ``<name>_cut<n>``: its validation items again, marked ``cut``.
    """
    train, val, scenes, groups = [], [], [], []
    for m in members:
        offset, g = len(scenes), len(groups)
        train += _tag(m["train"], g, m["name"], offset)
        val += _tag(m["val"], g, m["name"], offset)
        scenes += m["scenes"]
        groups.append({"name": m["name"], "weight": float(m["weight"]),
                       "train_items": len(m["train"]), "val_items": len(m["val"])})
        if m.get("empty_crops") is not None:
            groups[-1]["empty_crops"] = float(m["empty_crops"])
        if m.get("val_cut"):
            name = f"{m['name']}_cut{m['val_cut']}"
            val += _tag([dict(it, cut=m["val_cut"], image_key=f"{m['name']}/{it['key']}")
                         for it in m["val"]], g + 1, name, offset)
            groups.append({"name": name, "weight": 0.0, "train_items": 0,
                           "val_items": len(m["val"]), "cut": m["val_cut"]})
    return train, val, scenes, groups


def member_augment(aug: dict, group: dict | None) -> dict:
    """The augmentation of a sample of ``group``: ``aug`` with the member's own
    ``empty_crops``, where it has one."""
    own = (group or {}).get("empty_crops")
    return aug if own is None else {**aug, "empty_crops": own}


def member_groups(groups: list[dict]) -> list[dict]:
    """The groups that are mixture members (one per member, in order): not ``val_cut`` ones."""
    return [g for g in groups if not g.get("cut")]


def group_index(items: list[dict], n_groups: int) -> list[list[int]]:
    """Positions of each group's items in ``items`` (items without ``group`` are group 0)."""
    out: list[list[int]] = [[] for _ in range(n_groups)]
    for i, it in enumerate(items):
        out[it.get("group", 0)].append(i)
    return out


def pick_item(by_group: list[list[int]], weights: list[float], rng: np.random.Generator) -> int:
    """A training item's position: a group drawn with probability ``weight / sum``, then one of
    its items uniformly. Groups without items are never drawn."""
    w = np.array([wt if idx else 0.0 for wt, idx in zip(weights, by_group)], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("no group has training items")
    g = int(rng.choice(len(w), p=w / w.sum()))
    members = by_group[g]
    return members[int(rng.integers(0, len(members)))]
