"""What a driver needs from a bundle's ``bundle.json``, read without torch: the model's frame
size, threshold and band map (the actors load and validate the full bundle)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from ingest import storage


@dataclass(frozen=True)
class BundleInfo:
    """What the driver needs from ``bundle.json`` (the actors load and validate the full bundle)."""

    model_type: str
    image_size: int
    threshold: float
    band_map: tuple | None = None  # 0-based bands the model uses as R, G, B (None: samsp default)


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
                          band_map=tuple(int(b) for b in meta["band_map"]) if meta.get("band_map") else None)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"invalid bundle.json in {uri}: {type(err).__name__}: {err}") from None
    if info.image_size <= 0 or not 0 < info.threshold < 1:
        raise ValueError(f"invalid bundle.json in {uri}: image_size {info.image_size}, "
                         f"threshold {info.threshold}")
    return info
