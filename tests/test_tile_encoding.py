"""The CUDA path's per-tile outputs (jobs/inference/tile_encoding.py) equal the numpy path's: the same
uint8 probability/mask bytes and the same statistics (checked here on CPU tensors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ingest.writer import NODATA, prob_to_u8
from jobs.inference.predictor import tile_statistics
from jobs.inference.tile_encoding import encode_tiles


def test_device_encoding_equals_the_numpy_path():
    rng = np.random.default_rng(0)
    prob = rng.random((3, 40, 48)).astype(np.float32)
    first = np.clip(prob + rng.normal(0, 0.2, prob.shape), 0, 1).astype(np.float32)
    valid = rng.random(prob.shape) > 0.1
    valid[2] = False  # a tile with no valid pixel at all
    prob[0, 0, :5] = [0.0, 1.0, 0.5, 0.25, 1 / 254 * 100.5]  # rounding edges
    cores = [(slice(4, 36), slice(4, 44)), (slice(0, 40), slice(0, 48)), (slice(4, 20), slice(0, 24))]
    pu8, mu8, stats = encode_tiles(torch.from_numpy(prob), torch.from_numpy(first),
                                   torch.from_numpy(valid), cores, 0.5)
    for i in range(3):
        ref_p = prob_to_u8(prob[i])
        ref_m = (prob[i] > 0.5).astype(np.uint8)
        ref_p[~valid[i]] = NODATA
        ref_m[~valid[i]] = NODATA
        assert np.array_equal(pu8[i], ref_p) and np.array_equal(mu8[i], ref_m)
        ref = tile_statistics(prob[i], first[i], valid[i], cores[i], 0.5)
        assert stats[i].keys() == ref.keys()
        for key in ("foreground_px", "valid_px"):
            assert stats[i][key] == ref[key]
        for key in ("disagreement", "margin"):
            assert stats[i][key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6)


def test_the_predictor_gpu_branch_gives_the_cpu_outputs(monkeypatch, tmp_path):
    # the branch the CUDA actors take, run on CPU tensors: same outputs as the numpy branch
    import json

    from ingest.tiling import TileGrid
    from jobs.inference.predictor import Predictor
    from samsp import SamSP, build_sam, save_bundle

    torch.manual_seed(0)
    save_bundle(SamSP(build_sam("vit_micro"), iterations=1), str(tmp_path / "b"),
                {"threshold": 0.5})
    grid = TileGrid(150, 170, 128, 16)
    tiles = [json.dumps(t.to_dict()) for t in grid]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (len(tiles), 3, 128, 128), dtype=np.uint8)
    valid = np.ones((len(tiles), 128, 128), bool)
    valid[-1, 100:, :] = False
    batch = {"scene": np.array(["s"] * len(tiles), dtype=object),
             "spec": np.array(["{}"] * len(tiles), dtype=object),
             "tile": np.array(tiles, dtype=object), "image": images, "valid": valid,
             "error": np.array([""] * len(tiles), dtype=object)}
    pred = Predictor(str(tmp_path / "b"), device="cpu", precision="fp32")
    cpu = pred.predict(batch)
    monkeypatch.setattr(Predictor, "on_gpu", property(lambda self: True))
    gpu = pred.predict(batch)
    assert np.array_equal(cpu["prob"], gpu["prob"]) and np.array_equal(cpu["mask"], gpu["mask"])
    for a, b in zip(cpu["stats"], gpu["stats"]):
        a, b = json.loads(a), json.loads(b)
        assert a["foreground_px"] == b["foreground_px"] and a["valid_px"] == b["valid_px"]
        assert a["margin"] == pytest.approx(b["margin"], rel=1e-5)
