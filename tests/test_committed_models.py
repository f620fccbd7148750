"""The models committed under models/: each loads as a bundle (sha256 checked), fits the
repository's size limit, has its model card, and segments a tile."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from samsp import load_bundle
from samsp.predict import TilePredictor

MODELS = sorted(p for p in (Path(__file__).resolve().parents[1] / "models").iterdir() if p.is_dir())
MAX_BYTES = 20 * 1024 * 1024


def test_both_demo_models_are_committed():
    assert {p.name for p in MODELS} >= {"samsp-crack-tiny", "samsp-roads-tiny"}


@pytest.mark.parametrize("folder", MODELS, ids=lambda p: p.name)
def test_committed_model_loads_runs_and_is_documented(folder):
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size <= MAX_BYTES, f"{folder.name}: {size / 2**20:.1f} MiB > 20 MiB"
    card = (folder / "MODEL_CARD.md").read_text()
    for section in ("## How it was made", "## Data", "## Metrics", "## Limits"):
        assert section in card, f"{folder.name}/MODEL_CARD.md lacks {section!r}"
    bundle = load_bundle(str(folder))
    assert bundle.meta.weights_dtype == "float16"  # stored small, loads as float32
    assert bundle.meta.provenance  # where it came from
    size_px = bundle.meta.image_size
    tile = np.random.default_rng(0).integers(0, 255, (1, 3, size_px, size_px), dtype=np.uint8)
    out = TilePredictor(bundle, precision="fp32")(tile)
    assert out["prob"].shape == (1, size_px, size_px)
    assert np.isfinite(out["prob"]).all() and 0 <= out["prob"].min() <= out["prob"].max() <= 1
