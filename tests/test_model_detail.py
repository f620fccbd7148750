"""Detail branch and promptable pre-training (issue 17): off by default and exact when fresh,
saved in bundles beside SAM's official keys, trained in every mode; ground-truth prompts."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from samsp import SamSP, build_sam, configure_finetune, load_bundle, save_bundle
from samsp.detail import DetailBranch, detail_branch_for
from samsp.errors import BundleError
from samsp.prompts import BOX_JITTER_MAX_PX, mask_to_box, prompt_from_target


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam("vit_micro")


def _x(batch=2, size=128, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_a_fresh_detail_branch_predicts_exactly_what_sam_does(sam):
    plain = SamSP(sam, iterations=1).eval()
    with_detail = SamSP(sam, iterations=1, detail=detail_branch_for(sam)).eval()
    with torch.no_grad():
        a, b = plain(_x()), with_detail(_x())
    for p, q in zip(a.logits + a.low_res, b.logits + b.low_res):
        assert torch.equal(p, q)


def test_stride_two_detail_gives_finer_logits_and_keeps_the_prompt_grid(sam):
    model = SamSP(sam, iterations=1, prompt="mask", detail=detail_branch_for(sam, 16, 2)).eval()
    torch.nn.init.normal_(model.detail.fuse.weight, std=0.5)  # as if trained
    with torch.no_grad():
        out = model(_x())
        feats = model.detail(_x())
    assert feats.shape[-2:] == (64, 64)  # input / 2 (SAM's decoder: input / 4 = 32)
    assert out.low_res[0].shape[-2:] == (32, 32)  # mask prompts stay on SAM's grid
    assert out.prompts[1]["mask_logits"].shape[-2:] == (32, 32)
    assert out.logits[0].shape[-2:] == (128, 128)
    with pytest.raises(ValueError, match="output_stride"):
        DetailBranch(8, output_stride=8)


def test_bundle_keeps_official_keys_and_round_trips_the_detail_branch(sam, tmp_path):
    model = SamSP(sam, iterations=1, detail=detail_branch_for(sam, 16, 2)).eval()
    torch.nn.init.normal_(model.detail.fuse.weight, std=0.5)
    meta = save_bundle(model, str(tmp_path / "b"), {"threshold": 0.5})
    assert meta.detail == {"width": 16, "output_stride": 2}
    keys = set(load_file(str(tmp_path / "b" / "model.safetensors")))
    assert keys - {k for k in keys if k.startswith("detail.")} == set(sam.state_dict())
    loaded = load_bundle(str(tmp_path / "b")).model
    with torch.no_grad():
        for p, q in zip(model(_x()).logits, loaded(_x()).logits):
            assert torch.equal(p, q)
    # a bundle without a branch loads without one; one whose meta and weights disagree fails
    save_bundle(SamSP(sam, iterations=1), str(tmp_path / "plain"), {"threshold": 0.5})
    assert load_bundle(str(tmp_path / "plain")).model.detail is None
    meta_file = tmp_path / "plain" / "bundle.json"
    meta_file.write_text(meta_file.read_text().replace('"detail": null',
                                                       '"detail": {"width": 16, "output_stride": 2}'))
    with pytest.raises(BundleError, match="detail"):
        load_bundle(str(tmp_path / "plain"))


@pytest.mark.parametrize("mode", ["full", "decoder"])
def test_the_detail_branch_trains_in_every_mode_and_gets_gradient(mode):
    torch.manual_seed(0)
    sam = build_sam("vit_micro")
    model = SamSP(sam, iterations=1, detail=detail_branch_for(sam))
    configure_finetune(model, mode)
    assert all(p.requires_grad for p in model.detail.parameters())
    model(_x()).logits[-1].mean().backward()
    assert model.detail.fuse.weight.grad.abs().sum() > 0  # zero-initialised, not stuck


def test_ground_truth_boxes_are_jittered_within_sams_bounds():
    target = torch.zeros(3, 1, 128, 128)
    target[0, :, 40:60, 30:90] = 1
    target[1, :, 0:128, 0:128] = 1  # the whole frame
    valid = torch.ones(3, 1, 128, 128, dtype=torch.bool)
    valid[2, :, 64:, :] = False  # target[2] empty: the valid region's box
    exact = mask_to_box(target[:, 0] > 0.5, valid)
    gen = torch.Generator().manual_seed(0)
    boxes = prompt_from_target("box", target, valid, generator=gen)["boxes"]
    assert (boxes - exact).abs().max() <= BOX_JITTER_MAX_PX
    assert (boxes >= 0).all() and (boxes <= 127).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert not torch.equal(boxes, exact)  # really jittered
    again = prompt_from_target("box", target, valid, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["boxes"], boxes)  # deterministic per generator
    no_jitter = prompt_from_target("box", target, valid, jitter=0)["boxes"]
    assert torch.equal(no_jitter, exact)


def test_ground_truth_points_and_masks_outline_the_target():
    target = torch.zeros(1, 1, 128, 128)
    target[0, :, 40:80, 20:100] = 1
    pts = prompt_from_target("points", target, n_points=3, n_negative=1)
    for (x, y), label in zip(pts["point_coords"][0].tolist(), pts["point_labels"][0].tolist()):
        assert bool(target[0, 0, round(y), round(x)]) == (label == 1)
    low = prompt_from_target("mask", target)["mask_logits"]
    assert low.shape[-2:] == (32, 32)
    assert low[0, 0, 15, 15] > 0 and low[0, 0, 2, 2] < 0  # inside / outside


def test_pass_one_takes_the_given_prompt(sam):
    model = SamSP(sam, iterations=0).eval()  # even a K=0 model runs the prompted pass
    target = torch.zeros(2, 1, 128, 128)
    target[:, :, 10:50, 10:50] = 1
    prompt = prompt_from_target("box", target, jitter=0)
    with torch.no_grad():
        out = model(_x(), first_prompt=prompt)
    assert len(out.logits) == 2 and out.prompts[1] is prompt


def test_prompt_pretraining_needs_a_prompted_model():
    from jobs.runtime.config import ConfigError, load_config
    from jobs.training.config import TrainConfig

    with pytest.raises(ConfigError, match="prompt_pretraining needs model.iterations"):
        load_config(TrainConfig, None, ["train.prompt_pretraining=0.3", "model.iterations=0"])
    cfg = load_config(TrainConfig, None, ["train.prompt_pretraining=0.3",
                                          "model.detail_branch=true"])
    assert cfg.train.prompt_pretraining == 0.3 and cfg.model.detail_branch
