"""Tiles into SAM's input frame and predictions back out."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samsp import build_sam
from samsp.config import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from samsp.preprocess import (postprocess_logits, prepare_batch, prepare_targets, resized_shape,
                              to_three_bands)


def test_band_mapping():
    rng = np.random.default_rng(0)
    one = rng.integers(0, 255, (2, 1, 4, 5), dtype=np.uint8)
    assert (to_three_bands(one) == one).all() and to_three_bands(one).shape == (2, 3, 4, 5)
    two = np.stack([np.full((4, 5), 10), np.full((4, 5), 21)])[None].astype(np.uint8)
    mapped = to_three_bands(two)
    assert mapped.dtype == np.uint8 and mapped[0, :, 0, 0].tolist() == [10, 21, 16]  # rint(15.5)
    four = rng.integers(0, 255, (1, 4, 4, 5), dtype=np.uint8)
    assert (to_three_bands(four) == four[:, :3]).all()
    assert (to_three_bands(four, band_map=[3, 2, 1]) == four[:, [3, 2, 1]]).all()
    with pytest.raises(ValueError, match="band_map"):
        to_three_bands(four, band_map=[0, 1, 4])


def test_full_size_tile_matches_sams_own_preprocess():
    sam = build_sam("vit_micro")
    tile = np.random.default_rng(1).integers(0, 255, (1, 3, 128, 128), dtype=np.uint8)
    ours, size = prepare_batch(tile, 128, SAM_PIXEL_MEAN, SAM_PIXEL_STD)
    assert size == (128, 128)
    torch.testing.assert_close(ours[0], sam.preprocess(torch.from_numpy(tile[0]).float()))


def test_odd_tile_is_resized_padded_and_restored():
    tile = np.full((2, 4, 37, 53), 200, dtype=np.uint8)
    batch, size = prepare_batch(tile, 128, SAM_PIXEL_MEAN, SAM_PIXEL_STD)
    new_h, new_w = resized_shape(37, 53, 128)
    assert (new_h, new_w) == (89, 128) and size == (37, 53)
    assert batch.shape == (2, 3, 128, 128)
    assert (batch[:, :, new_h:, :] == 0).all()  # zero padding below, in normalised units
    expected = (200 - torch.tensor(SAM_PIXEL_MEAN)) / torch.tensor(SAM_PIXEL_STD)
    torch.testing.assert_close(batch[0, :, 40, 60], expected)
    logits = torch.full((2, 1, 128, 128), -10.0)
    logits[..., :new_h, :new_w] = 10.0  # foreground exactly on the valid region
    back = postprocess_logits(logits, size, 128)
    assert back.shape == (2, 1, 37, 53) and (back > 0).all()


def test_targets_follow_the_image_frame_and_mark_padding_invalid():
    masks = np.zeros((1, 37, 53), np.float32)
    masks[0, 10:20, 5:30] = 1
    nodata = np.ones((1, 37, 53), bool)
    nodata[0, :, :3] = False
    target, valid = prepare_targets(masks, 128, valid=nodata)
    assert target.shape == valid.shape == (1, 1, 128, 128)
    assert set(target.unique().tolist()) == {0.0, 1.0}
    assert valid[0, 0, 89:].sum() == 0 and valid[0, 0, :89, :5].sum() == 0
    assert valid[0, 0, :89, 10:].all()


def test_tensor_tiles_and_masks_give_the_numpy_results():
    # the training loop hands its loader's (pinned on GPU) tensors over as they are
    import torch

    from samsp.preprocess import prepare_batch, prepare_targets

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (2, 3, 40, 56), dtype=np.uint8)
    masks = rng.random((2, 40, 56)) > 0.5
    valid = rng.random((2, 40, 56)) > 0.2
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    a, size_a = prepare_batch(tiles, 64, mean, std)
    b, size_b = prepare_batch(torch.from_numpy(tiles), 64, mean, std)
    assert size_a == size_b and torch.equal(a, b)
    ta, oa = prepare_targets(masks, 64, valid)
    tb, ob = prepare_targets(torch.from_numpy(masks), 64, torch.from_numpy(valid))
    assert torch.equal(ta, tb) and torch.equal(oa, ob)
    g, _ = prepare_batch(torch.from_numpy(tiles[:, :1]), 64, mean, std)  # one band -> three
    assert g.shape == (2, 3, 64, 64)
