"""``--blocks``: score only the spatial validation blocks of the split a bundle was trained with.

The bundle's provenance holds its training config; re-planning its data section
(``jobs.training.data.plan_data``, pure and seeded) gives the same validation windows the run
had, and ``jobs.training.geo_split`` the blocks they lie in. Pixels outside those blocks are not
scored (255 in errors.tif): the training windows and the buffer around the blocks would flatter
the model, which is what the spatial split is there to avoid.

A scene listing (``data.source.scenes``) is not planned again as it is: the blocks' ranks
depend on each scene's index, so an archive that grew since training would shift them (and score
training blocks). The split is rebuilt from the scenes training kept, in their order, as its
summary in the provenance records them (``data.scenes``, redacted): each recorded scene is
matched by its identity (``ingest.redact.uri_identity``: a re-signed href is the same scene) to
one the listing finds now, which gives the href to open. A recorded scene the listing no longer
finds, or a rebuilt split whose validation windows differ from training's (the recorded
``val_keys_sha1``), is refused with one line.

Scenes are matched to the training pairs by their path (relative paths resolved from the
current folder, as training resolved them from its own); without ``--image`` the training pairs
themselves are evaluated, each with its own label options.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ingest import storage, window_bounds
from ingest.redact import redact_uri, uri_identity
from jobs.runtime.errors import DataError, EvalError
from jobs.training.data import absolute_uri as training_path
from jobs.training.data import plan_data
from jobs.training.geo_split import block_sides, blocks_met
from jobs.training.scene_listing import listed_pairs

log = logging.getLogger("samsp.evaluate")


def _same_path(uri: str) -> str:
    """What names a scene here: a local path resolved; a URL's identity (redacted, without
    the parameters a re-signing changes: ``ingest.redact.uri_identity``)."""
    if storage.is_s3(uri) or "://" in uri:
        return uri_identity(uri)
    return os.path.realpath(uri)


@dataclass
class SceneBlocks:
    """The validation blocks of one training scene: ``side`` = (block height, width) px."""

    side: tuple[int, int]
    blocks: frozenset  # (i, j) block indexes

    def region(self, window) -> np.ndarray:
        """bool ``[h, w]`` of a window: True inside a validation block."""
        r0, c0, r1, c1 = window_bounds(window)
        bh, bw = self.side
        rows = np.arange(r0, r1) // bh
        cols = np.arange(c0, c1) // bw
        out = np.zeros((r1 - r0, c1 - c0), bool)
        for i, j in self.blocks:
            out[np.ix_(rows == i, cols == j)] = True
        return out


def _training_data(provenance: dict | None) -> dict:
    config = (provenance or {}).get("config") or {}
    data = config.get("data")
    if not data:
        raise EvalError("--blocks needs a bundle written by jobs/train.py (its provenance holds "
                        "the training config)")
    if data["source"].get("kind") != "raster" or not (data.get("split") or {}).get("spatial") \
            or data.get("val_source"):
        raise EvalError("--blocks needs a bundle trained on a raster source with a spatial split "
                        "(data.split.spatial); this one was not")
    if data["source"].get("scenes"):
        recorded = ((provenance or {}).get("data") or {}).get("scenes")
        if not recorded:
            raise EvalError("--blocks: the bundle's provenance records no scenes its listing "
                            "kept (data.scenes); its validation blocks cannot be rebuilt")
        data = dict(data, source=kept_listing_source(data["source"], recorded))
    return data


def kept_listing_source(src: dict, recorded: list[str]) -> dict:
    """A listing source (``data.source.scenes``) as the pairs training kept: each recorded
    scene (redacted, in training's order) matched by identity to a scene the listing finds now
    (its href: what opens); ``EvalError`` when one is no longer listed."""
    try:
        pairs, _ = listed_pairs(src["scenes"])
    except DataError as err:
        raise EvalError(f"--blocks: the bundle's training data: {err}") from None
    found: dict[str, dict] = {}
    for pair in pairs:
        found.setdefault(uri_identity(training_path(pair["image"])), pair)
    missing = [uri for uri in recorded if uri_identity(uri) not in found]
    if missing:
        raise EvalError(f"--blocks: the listing changed since training: {len(missing)} of the "
                        f"{len(recorded)} scene(s) training kept no longer listed (first: "
                        f"{missing[0]}); its validation blocks cannot be rebuilt")
    log.info("--blocks: the split rebuilt from the %d scene(s) training kept of its listing "
             "(which finds %d now)", len(recorded), len(pairs))
    return dict(src, scenes=None, pairs=[found[uri_identity(uri)] for uri in recorded])


def validation_blocks(provenance: dict | None) -> tuple[dict[str, SceneBlocks], list[dict]]:
    """``({scene path: its validation blocks}, the training pairs)`` of the split recorded in
    a bundle's ``provenance``."""
    data = _training_data(provenance)
    try:
        plan = plan_data(data)
    except DataError as err:
        raise EvalError(f"--blocks: the bundle's training data: {err}") from None
    want = ((provenance or {}).get("data") or {}).get("val_keys_sha1")
    if want and plan["summary"]["val_keys_sha1"] != want:
        raise EvalError(f"--blocks: the training split cannot be rebuilt: its validation windows "
                        f"differ from training's (val_keys_sha1 {plan['summary']['val_keys_sha1']}"
                        f", training's {want}: scenes, labels or tiling changed since)")
    sides = block_sides(plan["scenes"], data["split"]["spatial"], data["source"]["tile"])
    met: set = set().union(*(blocks_met(it, sides) for it in plan["val"]))
    out = {}
    for idx, scene in enumerate(plan["scenes"]):
        blocks = frozenset((i, j) for s, i, j in met if s == idx)
        out[_same_path(scene["image"])] = SceneBlocks(tuple(sides[idx]), blocks)
    # the scenes training kept, with their labels and options (a scene listing's included)
    pairs = [{"image": sc["image"], "label": sc["label"], **(sc.get("labels") or {})}
             for sc in plan["scenes"]]
    return out, pairs


def blocks_of(blocks: dict[str, SceneBlocks], image: str) -> SceneBlocks:
    found = blocks.get(_same_path(image))
    if found is None:
        raise EvalError(f"--blocks: {redact_uri(image)} is not a scene of the bundle's training "
                        f"data ({', '.join(sorted(blocks)) or 'none'})")
    return found


__all__ = ["SceneBlocks", "blocks_of", "validation_blocks"]
