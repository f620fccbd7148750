"""Bundles as the jobs see them, without torch: where ``--model NAME`` points
(``resolve_bundle``, samsp/bundle_names.py: one resolver for segment, sweep, evaluate,
training's ``model.checkpoint`` and ``samsp.segment_file``), the bundles that can be found
(``find_bundles``, ``python -m jobs.models``), and what a driver needs from a ``bundle.json``
(``read_bundle_meta``: frame size, threshold, band map; the actors load and validate the full
bundle). Names: samsp/bundle_names.py's docstring.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ingest import SMALL_IMAGES, storage
from samsp.bundle_names import (META_FILE, MODELS_ENV, REPO_MODELS, BundleNotFoundError,
                                is_bare_name, is_bundle, model_roots, resolve_bundle)

CARD_FILE = "MODEL_CARD.md"


@dataclass(frozen=True)
class BundleInfo:
    """What the driver needs from ``bundle.json`` (the actors load and validate the full bundle)."""

    model_type: str
    image_size: int
    threshold: float
    band_map: tuple | None = None  # 0-based bands the model uses as R, G, B (None: samsp default)
    # the input contract (``bundle.json`` ``input``, samsp/contract.py) as a plain dict; None for
    # bundles written before it (unknown, never guessed): jobs/inference/contract_check.py
    input: dict | None = None
    # how an image smaller than the tile reaches the model (ingest.TileGrid small_images)
    small_images: str = "pad"
    # the window presence gate (samsp.presence); None: the bundle has none
    presence_threshold: float | None = None


def read_bundle_meta(uri: str) -> BundleInfo:
    """Read ``bundle.json`` only (with the Ray engine the driver never loads the weights, nor
    even imports torch: ~0.5 GB of driver RSS and seconds of start-up; ``samsp.load_bundle`` in
    each actor does the full validation. The local engine loads them in this process, in
    jobs/inference/model_preload.py)."""

    meta_uri = uri.rstrip("/") + "/bundle.json"
    try:
        raw = storage.read_bytes(meta_uri)
    except FileNotFoundError:
        raise ValueError(f"no model bundle at {uri}: bundle.json is missing") from None
    try:
        meta = json.loads(raw)
        info = BundleInfo(model_type=str(meta["model_type"]), image_size=int(meta["image_size"]),
                          threshold=float(meta.get("threshold", 0.5)),
                          band_map=tuple(int(b) for b in meta["band_map"]) if meta.get("band_map") else None,
                          input=meta["input"] if isinstance(meta.get("input"), dict) else None,
                          small_images=str(meta.get("small_images", "pad")),
                          presence_threshold=(float(meta["presence_threshold"])
                                              if meta.get("presence_threshold") is not None
                                              else None))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"invalid bundle.json in {uri}: {type(err).__name__}: {err}") from None
    if info.image_size <= 0 or not 0 < info.threshold < 1:
        raise ValueError(f"invalid bundle.json in {uri}: image_size {info.image_size}, "
                         f"threshold {info.threshold}")
    if info.small_images not in SMALL_IMAGES:
        raise ValueError(f"invalid bundle.json in {uri}: small_images {info.small_images!r}")
    if info.presence_threshold is not None and not 0 < info.presence_threshold < 1:
        raise ValueError(f"invalid bundle.json in {uri}: presence_threshold "
                         f"{info.presence_threshold}")
    return info


def find_bundles() -> list[dict]:
    """Every bundle of every model root, in lookup order: ``{"name", "uri", "root",
    "shadowed"}``; ``shadowed``: an earlier root has a bundle of that name (a name finds that
    one). An unreachable root is an entry with ``error`` instead."""
    found, seen = [], set()
    for root in model_roots():
        try:
            metas = storage.glob(storage.join(root, "*", META_FILE))
        except Exception as err:  # noqa: BLE001 - list the others; say which root failed
            found.append({"root": root, "error": f"{type(err).__name__}: {err}"})
            continue
        for meta in metas:
            uri = meta[: -len(META_FILE) - 1]
            name = uri.rstrip("/").rsplit("/", 1)[-1]
            found.append({"name": name, "uri": uri, "root": root, "shadowed": name in seen})
            seen.add(name)
    return found


def read_bundle_json(uri: str) -> dict:
    """``bundle.json`` of the folder ``uri`` as a dict (``ValueError`` when missing/invalid)."""
    try:
        return json.loads(storage.read_bytes(storage.join(uri, META_FILE)))
    except FileNotFoundError:
        raise ValueError(f"no model bundle at {uri}: {META_FILE} is missing") from None
    except ValueError as err:
        raise ValueError(f"invalid {META_FILE} in {uri}: {err}") from None


def describe_input(contract: dict | None) -> str:
    """The input contract (``bundle.json`` ``input``) in a few words; old bundles have none. A
    mixture is described member by member."""
    if not contract:
        return "contract unknown"
    members = contract.get("members")
    data = ("; ".join(f"{name}: {_describe_data(c)}" for name, c in members.items())
            if members else _describe_data(contract))
    return f"{data}; 1 = {contract.get('labels')}"


def _describe_data(contract: dict) -> str:
    """``uint16 x3, bands 3,2,1 (red,green,blue), stretch 2-98%, GSD 0.5 m``."""
    radiometry = contract.get("radiometry")
    if isinstance(radiometry, dict):
        pct = radiometry.get("percentiles")
        radiometry = (f"stretch {pct[0]:g}-{pct[1]:g}%" if radiometry.get("mode") == "stretch"
                      and pct else radiometry.get("mode"))
    parts = [f"{contract.get('dtype')} x{contract.get('channels')}"]
    bands, names = contract.get("bands"), contract.get("band_names")
    if isinstance(bands, list):
        parts.append(f"bands {','.join(map(str, bands))}"
                     + (f" ({','.join(names)})" if isinstance(names, list) else ""))
    gsd = contract.get("gsd_m")
    parts += [str(radiometry), "no GSD" if gsd is None else
              (f"GSD {gsd:g} m" if isinstance(gsd, (int, float)) else f"GSD {gsd}")]
    return ", ".join(parts)


__all__ = ["CARD_FILE", "META_FILE", "MODELS_ENV", "REPO_MODELS", "BundleInfo",
           "BundleNotFoundError", "describe_input", "find_bundles", "is_bare_name", "is_bundle",
           "model_roots", "read_bundle_json", "read_bundle_meta", "resolve_bundle"]
