"""TilePredictor: uint8 tiles of any size and band count in, probabilities out."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samsp.predict import TilePredictor
from tests.conftest import save_random_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return save_random_bundle(tmp_path_factory.mktemp("bundle") / "micro", "vit_micro", iterations=2)


@pytest.mark.parametrize("bands", [1, 3, 4])
def test_odd_tiles_of_any_band_count_give_probabilities(bundle_dir, bands):
    predictor = TilePredictor(bundle_dir)
    tiles = np.random.default_rng(bands).integers(0, 255, (2, bands, 37, 53), dtype=np.uint8)
    out = predictor(tiles)
    assert set(out) == {"prob", "prob_first"}
    for prob in out.values():
        assert prob.shape == (2, 37, 53) and prob.dtype == np.float32
        assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert predictor.threshold == 0.5


def test_predictor_matches_the_model_and_is_deterministic(bundle_dir):
    predictor = TilePredictor(bundle_dir, iterations=1, precision="fp32")
    tiles = np.random.default_rng(0).integers(0, 255, (3, 3, 128, 128), dtype=np.uint8)
    first, again = predictor(tiles), predictor(tiles)
    np.testing.assert_array_equal(first["prob"], again["prob"])
    model, meta = predictor.model, predictor.meta
    x = (torch.from_numpy(tiles).float() - torch.tensor(meta.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(
        meta.pixel_std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(x, iterations=1)
    np.testing.assert_allclose(first["prob"], torch.sigmoid(out.logits[-1])[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(first["prob_first"], torch.sigmoid(out.logits[0])[:, 0].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B,C,h,w\]"):
        predictor(tiles[0])
