"""SamSP forward: one encoder call, K+1 passes, B masks (not B^2), parity with SAM's decoder."""
from __future__ import annotations

import pytest
import torch

from samsp import PROMPT_KINDS, SamSP, build_sam, mask_to_box
from samsp.decoder import decode_paired


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam("vit_micro")


def _images(batch: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_encoder_runs_once_and_every_pass_is_returned(sam, iterations):
    calls = []
    handle = sam.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = SamSP(sam, iterations=iterations, prompt="box")(_images(2))
    finally:
        handle.remove()
    assert len(calls) == 1
    assert len(out.logits) == len(out.low_res) == len(out.prompts) == len(out.iou) == iterations + 1
    assert all(lg.shape == (2, 1, 128, 128) for lg in out.logits)
    assert all(lr.shape == (2, 1, 32, 32) for lr in out.low_res)
    assert out.prompts[0] == {}
    assert out.final is out.logits[-1]


@pytest.mark.parametrize("prompt", PROMPT_KINDS)
def test_each_prompt_kind_gives_one_mask_per_image(sam, prompt):
    batch = 3
    model = SamSP(sam, iterations=2, prompt=prompt, n_points=3, n_negative=1)
    out = model(_images(batch, seed=2))
    for step in range(1, 3):
        previous_logits, previous_low = out.logits[step - 1], out.low_res[step - 1]
        used = out.prompts[step]
        assert out.logits[step].shape == (batch, 1, 128, 128)  # B masks, not B^2
        if "boxes" in used:
            assert torch.equal(used["boxes"], mask_to_box(previous_logits[:, 0] > 0))
        if "mask_logits" in used:
            assert torch.equal(used["mask_logits"], previous_low)
        if "point_coords" in used:
            assert used["point_coords"].shape == (batch, 4, 2)
            assert used["point_labels"].shape == (batch, 4)
            inside = previous_low[:, 0] > 0
            for b in range(batch):
                for (x, y), label in zip(used["point_coords"][b].tolist(), used["point_labels"][b].tolist()):
                    if label == 1:  # positive points lie in the previous pass's mask
                        assert inside[b, int(y) // 4, int(x) // 4]


def test_prompted_pass_differs_from_promptless_and_prompts_are_detached(sam):
    model = SamSP(sam, iterations=1, prompt="box+mask").train()
    out = model(_images(2))
    assert out.logits[1].requires_grad
    assert not any(v.requires_grad for v in out.prompts[1].values())
    assert not torch.equal(out.logits[0], out.logits[1])


def test_paired_decoder_matches_sams_decoder_image_by_image(sam):
    torch.manual_seed(3)
    batch = 3
    with torch.no_grad():
        embeddings = sam.image_encoder(_images(batch))
        pe = sam.prompt_encoder.get_dense_pe()
        boxes = torch.tensor([[10.0, 12, 80, 90], [0, 0, 128, 128], [50, 40, 60, 70]])
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=torch.randn(batch, 1, 32, 32))
        low, iou = decode_paired(sam.mask_decoder, embeddings, pe, sparse, dense)
        assert low.shape == (batch, 1, 32, 32) and iou.shape == (batch, 1)
        for i in range(batch):
            ref_low, ref_iou = sam.mask_decoder(embeddings[i:i + 1], pe, sparse[i:i + 1],
                                                dense[i:i + 1], multimask_output=False)
            torch.testing.assert_close(low[i:i + 1], ref_low, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(iou[i:i + 1], ref_iou, rtol=1e-5, atol=1e-5)


def test_passes_match_official_sam_forward(sam):
    """Pass 0 = SAM without prompts, pass 1 = SAM with the derived box, via Sam.forward."""
    raw = torch.rand(2, 3, 128, 128) * 255
    model = SamSP(sam, iterations=1, prompt="box")
    with torch.no_grad():
        out = model((raw - sam.pixel_mean) / sam.pixel_std)
        for i in range(2):
            record = {"image": raw[i], "original_size": (128, 128)}
            promptless = sam([record], multimask_output=False)[0]
            boxed = sam([{**record, "boxes": out.prompts[1]["boxes"][i:i + 1]}], multimask_output=False)[0]
            close = dict(rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out.low_res[0][i:i + 1], promptless["low_res_logits"], **close)
            torch.testing.assert_close(out.low_res[1][i:i + 1], boxed["low_res_logits"], **close)


def test_iterations_override_and_argument_checks(sam):
    model = SamSP(sam, iterations=1)
    assert len(model(_images(1), iterations=3).logits) == 4
    with pytest.raises(ValueError, match="unknown prompt"):
        SamSP(sam, prompt="scribble")
    with pytest.raises(ValueError, match=r"expected images \[B,3,128,128\]"):
        model(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("prompt", ["box", "points", "mask"])
def test_self_prompts_come_from_valid_pixels_only(sam, prompt):
    model = SamSP(sam, iterations=1, prompt=prompt, n_points=2, n_negative=2).eval()
    valid = torch.zeros(2, 1, 128, 128, dtype=torch.bool)
    valid[:, :, :80, :96] = True  # a resized tile in the top-left; the rest is padding
    with torch.no_grad():
        out = model(_images(2), valid=valid)
    used = out.prompts[1]
    if prompt == "box":
        boxes = used["boxes"]
        assert (boxes[:, 2] <= 95).all() and (boxes[:, 3] <= 79).all()
    elif prompt == "points":
        real = used["point_labels"] >= 0
        xy = used["point_coords"][real]
        assert (xy[:, 0] < 96).all() and (xy[:, 1] < 80).all()
    else:
        low = used["mask_logits"]  # [B,1,32,32]; padding rows 20+ and columns 24+
        assert (low[..., 20:, :] < 0).all() and (low[..., :, 24:] < 0).all()
    # without validity the promptless pass is the same; only the self-prompt changes
    with torch.no_grad():
        plain = model(_images(2))
    assert torch.equal(plain.logits[0], out.logits[0])
