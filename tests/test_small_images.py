"""Images smaller than the model window (issue 31): padding is SAM's padding, never image.

A window larger than its image is padded; what the padding holds must not reach the model. Every
tiled forward (evaluation, training validation, the segment job's tiles, training crops) blanks
invalid pixels to 0 in normalised units (``samsp.preprocess.blank_invalid``) and never
self-prompts from them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.inference.sliding_window import SlidingWindow, bundle_forward
from samsp import load_bundle
from samsp.predict import TilePredictor
from tests.conftest import save_random_bundle, shared_data


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(save_random_bundle(tmp_path_factory.mktemp("b") / "micro", "vit_micro"))


def test_what_the_padding_holds_never_reaches_the_model(bundle):
    """The same 80x100 image padded to the 128 frame with zeros or with noise: one prediction."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1, 3, 80, 100), dtype=np.uint8)
    zeros = np.zeros((1, 3, 128, 128), np.uint8)
    noise = rng.integers(0, 255, (1, 3, 128, 128), dtype=np.uint8)
    valid = np.zeros((1, 128, 128), bool)
    valid[:, :80, :100] = True
    for padded in (zeros, noise):
        padded[:, :, :80, :100] = image
    predictor = TilePredictor(bundle, precision="fp32")
    a, b = (predictor.probabilities(p, valid) for p in (zeros, noise))
    for key in ("prob", "prob_first"):
        torch.testing.assert_close(a[key][:, :80, :100], b[key][:, :80, :100], rtol=0, atol=1e-6)


def test_a_small_image_is_seen_as_it_is_inside_a_bigger_one(bundle):
    """The sliding window pads an image smaller than the tile; its prediction equals the
    prediction of the same pixels given with their padding marked invalid explicitly."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, (3, 70, 90), dtype=np.uint8)
    window = SlidingWindow(bundle_forward(bundle, precision="fp32"), tile=128, overlap=16)
    got = window(small)
    big = np.zeros((3, 128, 128), np.uint8)
    big[:, :70, :90] = small
    valid = np.zeros((128, 128), bool)
    valid[:70, :90] = True
    want = window(big, valid)[:, :70, :90]
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.slow
def test_deepcrack_whole_and_cut_into_crops_agree():
    """DeepCrack test images (544x384) evaluated whole and as 3x3 crops (~181x128, smaller than
    the 256 window) stitched back, with the committed model: on all 237 images 0.797 / 0.744
    (``python -m bench.small_images``; 0.797 / 0.566 padded the old way). The issue's aim is a
    gap of 0.02; this guards the padding rule on a few images."""
    from PIL import Image

    from bench.small_images import whole_and_cut

    root = shared_data("deepcrack")
    model = load_bundle(str(Path(__file__).resolve().parents[1] / "models" / "samsp-crack-tiny"))
    window = SlidingWindow(bundle_forward(model, precision="fp32"), tile=256, overlap=32)
    whole, cut = [], []
    for name in sorted(p.name for p in (root / "test_img").iterdir())[:8]:
        img = np.asarray(Image.open(root / "test_img" / name).convert("RGB")).transpose(2, 0, 1)
        gt = np.asarray(Image.open(root / "test_lab" / (name[:-4] + ".png")).convert("L")) > 0
        w, c, _ = whole_and_cut(window, img, gt, model.meta.threshold)
        whole.append(w), cut.append(c)
    assert np.mean(cut) > np.mean(whole) - 0.06, (np.mean(whole), np.mean(cut))


@pytest.mark.parametrize("level, alarms", [(0.9, 1.0), (0.1, 0.0)])
def test_crack_free_crops_are_counted_as_false_alarms(level, alarms):
    """``bench.small_images`` scores the crops holding no crack pixel on their own: a model that
    marks everything raises an alarm on each of them, one that marks nothing on none."""
    from bench.small_images import QUIET_THRESHOLDS, pooled_scores, whole_and_cut_passes

    truth = np.zeros((96, 120), bool)
    truth[5:25, 10:12] = True  # a crack in the top-left crop only
    window = SlidingWindow(lambda tiles, valid: np.full((1, len(tiles), *tiles.shape[-2:]),
                                                        level, np.float32), tile=64, overlap=8)
    pooled: dict = {}
    whole_and_cut_passes(window, np.zeros((3, 96, 120), np.uint8), truth, 0.5, pooled)
    got = pooled_scores(pooled)
    assert got["clean_crops_n"] == 8
    assert got["clean_crops_alarm_share"] == alarms
    assert got["clean_crops_fp_rate"] == pytest.approx(alarms)
    assert got[f"clean_crops_alarm_share_at_{QUIET_THRESHOLDS[-1]}"] == alarms
