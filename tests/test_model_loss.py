"""samsp_loss parts, and a tiny SAM-SP that actually learns a synthetic shape task."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samsp import SamSP, SamSPOutput, build_sam, configure_finetune, samsp_loss
from samsp.metrics import mean_dice
from samsp.preprocess import prepare_batch, prepare_targets


def _output(*logits: torch.Tensor) -> SamSPOutput:
    return SamSPOutput(logits=list(logits), low_res=[], prompts=[{} for _ in logits])


def test_distillation_is_zero_when_passes_agree_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16)
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    agree = samsp_loss(_output(logits, logits.clone(), logits.clone()), target,
                       distill_weight=1.0, temperature=2.0)
    assert agree.distill.item() == 0.0
    torch.testing.assert_close(agree.total, agree.dice + agree.bce)
    differ = samsp_loss(_output(logits + 1.0, logits), target, distill_weight=1.0)
    assert differ.distill.item() > 0.0
    torch.testing.assert_close(differ.total, differ.dice + differ.bce + differ.distill)


def test_single_pass_has_no_distillation_and_parts_are_finite():
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    parts = samsp_loss(_output(logits), torch.ones(2, 1, 8, 8))
    assert parts.distill.item() == 0.0
    parts.total.backward()
    assert logits.grad is not None
    assert set(parts.as_dict()) == {"total", "dice", "bce", "distill"}


def test_distillation_only_pulls_earlier_passes():
    early = torch.randn(1, 1, 8, 8, requires_grad=True)
    final = torch.randn(1, 1, 8, 8, requires_grad=True)
    parts = samsp_loss(_output(early, final), torch.zeros(1, 1, 8, 8))
    parts.distill.backward()
    assert early.grad.abs().sum() > 0
    assert final.grad is None  # the teacher is detached


def test_invalid_pixels_do_not_count():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    valid = torch.zeros(2, 1, 8, 8)
    valid[..., :5, :6] = 1
    garbage = logits.clone()
    garbage[valid == 0] = 50.0
    a = samsp_loss(_output(logits, logits * 2), target, valid=valid)
    b = samsp_loss(_output(garbage, garbage * 2), target, valid=valid)
    torch.testing.assert_close(a.total, b.total)


def test_pass_weights():
    target = torch.ones(1, 1, 4, 4)
    good, bad = torch.full((1, 1, 4, 4), 10.0), torch.full((1, 1, 4, 4), -10.0)
    only_final = samsp_loss(_output(bad, good), target, pass_weights=[0, 1], distill_weight=0)
    assert only_final.total.item() < 0.01
    with pytest.raises(ValueError, match="2 passes but 3 pass weights"):
        samsp_loss(_output(bad, good), target, pass_weights=[1, 1, 1])


def _shapes(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs and rectangles on a dark noisy background, uint8 [n,3,S,S] + masks [n,S,S]."""
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.zeros((n, 3, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        if i % 2:
            cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
            radius = rng.uniform(0.1, 0.22) * size
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        else:
            y0, x0 = rng.integers(0.08 * size, 0.45 * size, 2)
            h, w = rng.integers(0.15 * size, 0.45 * size, 2)
            mask = np.zeros((size, size), bool)
            mask[y0:y0 + h, x0:x0 + w] = True
        images[i] = rng.uniform(0, 90)
        images[i][:, mask] = rng.uniform(160, 255)
        images[i] += rng.normal(0, 12, (3, size, size))
        masks[i] = mask
    return np.clip(images, 0, 255).astype(np.uint8), masks


@pytest.fixture
def one_thread():
    # The test machines are shared: with every core busy, torch's intra-op threads spin against
    # each other and this test slows down ~10x. One thread is fast and deterministic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_samsp_learns_synthetic_shapes(one_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sam = build_sam("vit_micro")
    model = SamSP(sam, iterations=1, prompt="box")
    size = model.image_size
    train_x, train_y = _shapes(8, size, rng)
    test_x, test_y = _shapes(4, size, rng)
    mean, std = sam.samsp_config.pixel_mean, sam.samsp_config.pixel_std
    images, _ = prepare_batch(train_x, size, mean, std)
    target, valid = prepare_targets(train_y.astype(np.float32), size)
    held_out, _ = prepare_batch(test_x, size, mean, std)

    def dice_on(x, y):
        model.eval()
        with torch.no_grad():
            out = model(x)
        model.train()
        return [mean_dice((lg[:, 0] > 0).numpy(), y) for lg in (out.logits[0], out.logits[-1])]

    before = dice_on(held_out, test_y)
    optimizer = torch.optim.Adam(configure_finetune(model, "full"), lr=3e-3)
    model.train()
    losses = []
    for _ in range(30):
        parts = samsp_loss(model(images), target, valid=valid, distill_weight=0.5)
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
        losses.append(parts.total.item())
    after = dice_on(held_out, test_y)
    assert losses[-1] < 0.5 * losses[0]
    assert after[1] > before[1] + 0.3 and after[1] > 0.75, (before, after)
    assert after[0] > 0.75  # distillation: the promptless pass learns too


def test_soft_skeleton_thins_a_thick_line_to_its_centre():
    from samsp.loss import soft_skeleton

    mask = torch.zeros(1, 1, 32, 64)
    mask[..., 10:17, 4:60] = 1  # 7 px thick
    skel = soft_skeleton(mask) > 0.5
    rows = skel[0, 0, :, 10:50].any(dim=1).nonzero().flatten().tolist()
    assert rows and min(rows) >= 12 and max(rows) <= 14  # the centre rows only
    assert skel[0, 0, 13, 10:50].all()  # unbroken along the line
    assert not (skel & (mask == 0)).any()


def test_skeleton_recall_rewards_covering_the_centre_line_not_the_area():
    from samsp import samsp_loss
    from samsp.loss import skeleton_recall_loss
    from samsp.model import SamSPOutput

    target = torch.zeros(2, 1, 32, 32)
    target[0, :, 14:17, 2:30] = 1  # a thin crack
    big = torch.full_like(target, 20.0)  # everything foreground
    none = torch.full_like(target, -20.0)
    assert float(skeleton_recall_loss(big, target)) < 1e-6
    assert float(skeleton_recall_loss(none, target)) == pytest.approx(1.0)  # image 1 skipped
    out = SamSPOutput(logits=[none, none], low_res=[], prompts=[{}, {}])
    plain = samsp_loss(out, target)
    assert plain.skeleton is None and "skeleton" not in plain.as_dict()
    with_skel = samsp_loss(out, target, skeleton_weight=0.5)
    assert float(with_skel.skeleton) == pytest.approx(1.0)
    assert float(with_skel.total) == pytest.approx(float(plain.total) + 0.5)
