"""Self-prompt builders: boxes, points and the per-kind prompt dicts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samsp import mask_to_box, mask_to_points
from samsp.prompts import make_self_prompt, points_from_logits


def _mask(h, w, *cells):
    m = torch.zeros(h, w, dtype=torch.bool)
    for y0, y1, x0, x1 in cells:
        m[y0:y1, x0:x1] = True
    return m


def test_mask_to_box_hand_made_cases_in_one_batch():
    h, w = 10, 12
    masks = torch.stack([
        _mask(h, w),  # empty -> full frame
        _mask(h, w, (3, 4, 5, 6)),  # single pixel at y=3, x=5
        _mask(h, w, (0, h, 0, w)),  # everything, touching all borders
        _mask(h, w, (h - 1, h, w - 1, w)),  # bottom-right corner pixel
        _mask(h, w, (2, 5, 1, 3), (7, 9, 8, 10)),  # two blobs: box spans both
        _mask(h, w, (0, 1, 4, 9)),  # a line on the top border
    ])
    boxes = mask_to_box(masks)
    assert boxes.dtype == torch.float32 and boxes.shape == (6, 4)
    expected = torch.tensor([  # inclusive ends, SAM's convention
        [0, 0, w - 1, h - 1],
        [5, 3, 5, 3],
        [0, 0, w - 1, h - 1],
        [w - 1, h - 1, w - 1, h - 1],
        [1, 2, 9, 8],
        [4, 0, 8, 0],
    ], dtype=torch.float32)
    assert torch.equal(boxes, expected)
    assert torch.equal(mask_to_box(masks.unsqueeze(1)), expected)  # [B,1,H,W] too


def test_mask_to_box_matches_segment_anythings_own_boxes():
    from segment_anything.utils.amg import batched_mask_to_box

    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(16, 24, 20, generator=gen) > 0.97
    masks[0] = False  # SAM gives 0,0,0,0 for an empty mask; ours differs there on purpose
    assert torch.equal(mask_to_box(masks)[1:], batched_mask_to_box(masks)[1:].float())


def test_mask_to_box_uses_valid_pixels_only():
    h, w = 16, 16
    valid = torch.zeros(3, h, w, dtype=torch.bool)
    valid[:, :10, :12] = True  # the resized tile; the rest is padding
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, 2:4, 3:5] = True  # inside the valid region
    masks[0, 14, 15] = True  # a foreground logit over padding: ignored
    # masks[1] empty -> the box of the valid region, not the padded frame
    valid[2] = False  # nothing valid -> the full frame
    boxes = mask_to_box(masks, valid)
    assert boxes.tolist() == [[3, 2, 4, 3], [0, 0, 11, 9], [0, 0, w - 1, h - 1]]


def test_points_avoid_invalid_pixels_and_fill_an_all_foreground_mask():
    mask = np.ones((2, 32, 32), dtype=bool)
    mask[1, 8:20, 8:20] = False
    valid = np.zeros_like(mask)
    valid[:, :24, :24] = True  # padding on the bottom/right
    coords, labels = mask_to_points(mask, n_positive=4, n_negative=2, valid=valid)
    # all foreground: four distinct positives, no negatives (no valid background)
    assert labels[0].tolist() == [1, 1, 1, 1, -1, -1]
    xy = coords[0, :4].astype(int)
    assert len({tuple(p) for p in xy.tolist()}) == 4
    assert valid[0, xy[:, 1], xy[:, 0]].all()
    # negatives land in the valid background (the hole), never in the padding
    assert (labels[1] == 0).sum() == 2
    for (x, y), label in zip(coords[1].astype(int).tolist(), labels[1].tolist()):
        assert valid[1, y, x]
        assert mask[1, y, x] == (label == 1)


def test_mask_prompt_is_background_where_the_input_holds_no_image():
    low = torch.full((1, 1, 8, 8), 3.0)
    full = torch.nn.functional.interpolate(low, (32, 32), mode="bilinear")
    valid = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    valid[..., :16, :] = True  # top half valid: low-res rows 0-3
    prompt = make_self_prompt("box+mask", full, low, valid=valid)
    assert torch.all(prompt["mask_logits"][..., :4, :] == 3.0)
    assert torch.all(prompt["mask_logits"][..., 4:, :] < 0)
    assert prompt["boxes"].tolist() == [[0, 0, 31, 15]]


def test_mask_to_box_has_no_gradient_and_rejects_bad_shapes():
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    boxes = mask_to_box(logits > 0)
    assert not boxes.requires_grad
    with pytest.raises(ValueError, match=r"\[B,H,W\]"):
        mask_to_box(torch.zeros(8, 8, dtype=torch.bool))


def test_points_sit_at_component_maxima_largest_first():
    mask = np.zeros((1, 32, 32), dtype=bool)
    mask[0, 2:9, 2:9] = True  # small square, centre (5, 5)
    mask[0, 14:29, 10:25] = True  # large square, centre (21, 17)
    coords, labels = mask_to_points(mask, n_positive=2)
    assert labels.tolist() == [[1, 1]]
    assert coords[0, 0].tolist() == [17, 21]  # x, y of the large square's centre
    assert coords[0, 1].tolist() == [5, 5]


def test_points_fill_extra_slots_inside_the_mask_and_pad_the_rest():
    mask = np.zeros((2, 32, 32), dtype=bool)
    mask[0, 4:28, 2:30] = True  # one big component, 4 points wanted
    coords, labels = mask_to_points(mask, n_positive=4, n_negative=2)
    assert labels[0].tolist() == [1, 1, 1, 1, 0, 0]
    xy = coords[0, :4].astype(int)
    assert mask[0, xy[:, 1], xy[:, 0]].all()
    assert len({tuple(p) for p in xy.tolist()}) == 4  # distinct
    negatives = coords[0, 4:].astype(int)
    assert not mask[0, negatives[:, 1], negatives[:, 0]].any()
    # Empty mask: every entry is SAM's "not a point" padding.
    assert labels[1].tolist() == [-1] * 6


def test_points_from_low_res_logits_land_inside_the_full_resolution_mask():
    low = torch.full((2, 1, 16, 16), -5.0)
    low[0, 0, 3:7, 9:14] = 5.0
    coords, labels = points_from_logits(low, image_size=64, n_positive=2, n_negative=1)
    assert coords.shape == (2, 3, 2) and labels.shape == (2, 3)
    full = torch.nn.functional.interpolate(low, (64, 64), mode="bilinear") > 0
    for (x, y), label in zip(coords[0].tolist(), labels[0].tolist()):
        if label == 1:
            assert full[0, 0, round(y), round(x)]
        elif label == 0:
            assert not full[0, 0, round(y), round(x)]
    assert labels[0].tolist() == [1, 1, 0]
    assert coords[0, 0].tolist() != coords[0, 1].tolist()
    assert labels[1].tolist() == [-1, -1, -1]


@pytest.mark.parametrize("kind,keys", [
    ("box", {"boxes"}),
    ("mask", {"mask_logits"}),
    ("box+mask", {"boxes", "mask_logits"}),
    ("points", {"point_coords", "point_labels"}),
])
def test_self_prompt_kinds_hold_the_right_entries_detached(kind, keys):
    low = torch.randn(3, 1, 8, 8, requires_grad=True)
    full = torch.nn.functional.interpolate(low, (32, 32), mode="bilinear")
    prompt = make_self_prompt(kind, full, low, n_points=3)
    assert set(prompt) == keys
    assert not any(v.requires_grad for v in prompt.values())
    if "boxes" in prompt:
        assert torch.equal(prompt["boxes"], mask_to_box(full[:, 0] > 0))
    if "mask_logits" in prompt:
        assert torch.equal(prompt["mask_logits"], low.detach())
    if "point_coords" in prompt:
        assert prompt["point_coords"].shape == (3, 3, 2)
    with pytest.raises(ValueError, match="unknown prompt kind"):
        make_self_prompt("scribble", full, low)
