"""What the evaluation reads: image/mask pair folders (DeepCrack, EPFL or images/masks; local or
s3://, listed and binarised as the training job's ``pairs`` source), the training split a bundle
was trained with, and ``EvalError``, the one error the evaluation tools raise."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ingest.storage import fs_for
from jobs.runtime.errors import EvalError
from jobs.training.config import PAIR_LAYOUTS, PairsData
from jobs.training.data import DataError, ItemLoader, pairs_items, plan_data

LAYOUTS = ("auto", "deepcrack", "deepcrack_test", "epfl", "custom")


def _isdir(uri: str) -> bool:

    fs, path = fs_for(uri)
    try:
        return bool(fs.isdir(path))
    except Exception:  # noqa: BLE001 - unreachable remote = not there
        return False


def detect_layout(root: str) -> str:
    """The pair layout of ``root``: DeepCrack test (or train) folders, EPFL, or images/masks."""

    for layout in ("deepcrack_test", "deepcrack", "epfl"):
        image_dir, mask_dir, _ = PAIR_LAYOUTS[layout]
        if _isdir(root.rstrip("/") + "/" + image_dir) and _isdir(root.rstrip("/") + "/" + mask_dir):
            return layout
    if _isdir(root.rstrip("/") + "/images") and _isdir(root.rstrip("/") + "/masks"):
        return "custom"
    raise EvalError(f"cannot tell the layout of {root}: expected test_img/test_lab, "
                    f"train_img/train_lab, images/groundtruth or images/masks (or pass --layout)")


def list_pairs(root: str, layout: str = "auto", image_dir: str | None = None,
               mask_dir: str | None = None, threshold: float | None = None,
               limit: int | None = None) -> list[dict]:
    """Image/mask pairs under ``root`` (local or s3://), matched by stem, sorted by image name.

    The same listing (and mask binarisation) as the training job's ``pairs`` source.
    """
    from pydantic import ValidationError

    if layout == "auto":
        layout = detect_layout(root)
    try:
        src = PairsData(root=root, layout=layout, image_dir=image_dir, mask_dir=mask_dir,
                        threshold=threshold, limit=None)
        items = pairs_items(src.model_dump())
    except ValidationError as err:
        raise EvalError(f"data: {err.errors()[0]['msg']}") from None
    except DataError as err:
        raise EvalError(str(err)) from None
    return items[:limit] if limit else items


def load_item(item: dict, scenes: Sequence[dict] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image uint8[3,H,W], mask bool[H,W], valid bool[H,W])`` of a pair/raster item."""

    try:
        return ItemLoader(list(scenes), cache=False).load(item)
    except DataError as err:
        raise EvalError(str(err)) from None


def validation_items(bundle_meta) -> tuple[list[dict], list[dict]]:
    """The validation split the bundle was trained with (from its provenance config).

    Returns ``(items, scenes)`` as ``jobs.training.data.plan_data`` gives them.
    """

    config = (bundle_meta.provenance or {}).get("config")
    if not config or "data" not in config:
        raise EvalError("--sweep-on val needs a bundle written by jobs/train.py (its provenance "
                        "holds the training config); use --sweep-data instead")
    try:
        plan = plan_data(config["data"])
    except DataError as err:
        raise EvalError(f"bundle's validation data: {err}") from None
    return [it for it in plan["val"] if not it.get("cut")], plan["scenes"]  # once each
