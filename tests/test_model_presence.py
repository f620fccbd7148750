"""Window presence (samsp.presence): the IoU head trained alone as "does this window hold the
target", and the gate that blanks the windows it says do not -- in every inference path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.inference.sliding_window import SlidingWindow, bundle_forward
from jobs.training.config import TrainConfig
from samsp import SamSP, SamSPOutput, build_sam, configure_finetune, load_bundle, samsp_loss
from samsp.predict import TilePredictor
from samsp.presence import (GATED_LOGIT, gate_logits, presence_loss, presence_probability,
                            window_has_target)
from tests.conftest import REPO, save_random_bundle


def _model() -> SamSP:
    torch.manual_seed(0)
    return SamSP(build_sam("vit_micro"), iterations=1, prompt="box").train()


def _set_presence(model: SamSP, logit: float) -> None:
    """The IoU head's output = ``logit`` for every window (last layer zeroed, bias set)."""
    last = model.sam.mask_decoder.iou_prediction_head.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(logit)


def test_a_window_holds_the_target_only_through_its_valid_pixels():
    target = torch.zeros(3, 1, 8, 8)
    target[0, 0, 2, 2] = 1  # a target pixel in the image
    target[1, 0, 7, 7] = 1  # one in the padding only
    valid = torch.ones(3, 1, 8, 8)
    valid[1, 0, 6:, 6:] = 0
    assert window_has_target(target, valid).tolist() == [1.0, 0.0, 0.0]
    assert window_has_target(target).tolist() == [1.0, 1.0, 0.0]


def test_presence_mode_trains_the_iou_head_alone_and_every_mask_stays_the_same():
    model = _model()
    configure_finetune(model, "presence")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("sam.mask_decoder.iou_prediction_head.") for n in trainable)
    images = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    target = torch.zeros(4, 1, 128, 128)
    target[:2, :, 40:60, 40:44] = 1  # two windows with a "crack", two without
    model.eval()
    with torch.no_grad():
        before = model(images)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(30):
        parts = samsp_loss(model(images), target, dice_weight=0, bce_weight=0, distill_weight=0,
                           presence_weight=1.0)
        optimizer.zero_grad()
        parts.total.backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(images)
    for a, b in zip(before.logits, after.logits):
        torch.testing.assert_close(a, b)  # the masks are the model's own
    assert float(presence_loss(after, target)) < float(presence_loss(before, target))
    present = presence_probability(after)
    assert present[:2].min() > 0.5 > present[2:].max()


def test_the_gate_blanks_whole_windows_below_the_threshold_in_every_pass():
    logits = [torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)]
    out = SamSPOutput(logits=logits, low_res=[], prompts=[],
                      iou=[torch.zeros(3, 1), torch.tensor([[2.0], [-2.0], [0.0]])])
    gated = gate_logits(out, 0.6)  # presence 0.88, 0.12, 0.5: the last two go
    for before, after in zip(logits, gated):
        torch.testing.assert_close(after[0], before[0])
        assert (after[1:] == GATED_LOGIT).all()
    assert all(a is b for a, b in zip(gate_logits(out, None), logits))  # no gate, no change
    with pytest.raises(ValueError, match="presence threshold"):
        gate_logits(out, 1.0)


@pytest.fixture(scope="module")
def gated_bundles(tmp_path_factory):
    """The same random micro model saved as a bundle whose presence head says "absent"
    everywhere, once with a gate and once without."""
    from samsp import save_bundle

    root = tmp_path_factory.mktemp("presence")
    base = load_bundle(save_random_bundle(root / "base", "vit_micro", iterations=1))
    _set_presence(base.model, -5.0)  # presence 0.0067 on every window
    out = {}
    for name, gate in (("gated", 0.5), ("plain", None)):
        save_bundle(base.model, str(root / name), {"threshold": 0.5, "presence_threshold": gate})
        out[name] = str(root / name)
    return out


def test_a_bundles_gate_empties_its_windows_in_the_predictor_and_the_sliding_window(gated_bundles):
    tiles = np.random.default_rng(0).integers(0, 255, (2, 3, 128, 128), dtype=np.uint8)
    gated, plain = load_bundle(gated_bundles["gated"]), load_bundle(gated_bundles["plain"])
    assert gated.meta.presence_threshold == 0.5 and plain.meta.presence_threshold is None

    for key, prob in TilePredictor(gated).__call__(tiles).items():
        assert prob.max() < 1e-6, key  # prob and prob_first alike
    ungated = TilePredictor(gated, presence_threshold=None)(tiles)
    reference = TilePredictor(plain)(tiles)
    np.testing.assert_array_equal(ungated["prob"], reference["prob"])
    assert reference["prob"].max() > 0.01  # the gate, not the model, emptied them

    image = tiles[0]
    assert SlidingWindow(bundle_forward(gated), tile=128)(image).max() < 1e-6
    for bad in (0.0, 1.5, "bundles"):  # refused when built, not at the first batch
        with pytest.raises(ValueError, match="presence threshold"):
            TilePredictor(gated, presence_threshold=bad)
        with pytest.raises(ValueError, match="presence threshold"):
            bundle_forward(gated, presence_threshold=bad)
    np.testing.assert_array_equal(
        SlidingWindow(bundle_forward(gated, presence_threshold=None), tile=128)(image),
        SlidingWindow(bundle_forward(plain), tile=128)(image))


def test_the_presence_head_and_its_loss_are_configured_together(tmp_path):
    base = {"model": {"checkpoint": str(tmp_path / "bundle"), "finetune": "presence"}}
    with pytest.raises(ValueError, match="go together"):
        TrainConfig.model_validate(base)
    with pytest.raises(ValueError, match="go together"):
        TrainConfig.model_validate({"loss": {"presence_weight": 1.0}})
    with pytest.raises(ValueError, match="needs model.checkpoint"):
        TrainConfig.model_validate({"model": {"finetune": "presence"},
                                    "loss": {"presence_weight": 1.0}})
    cfg = TrainConfig.model_validate({**base, "loss": {"presence_weight": 1.0}})
    assert cfg.model.finetune == "presence" and cfg.model.presence_threshold is None
    presence = {**base, "loss": {"presence_weight": 1.0}}
    with pytest.raises(ValueError, match="tune_threshold=false"):  # the masks' threshold stays
        TrainConfig.model_validate({**presence, "train": {"tune_threshold": True}})
    with pytest.raises(ValueError, match="prompt_pretraining=0"):  # a GT prompt gives it away
        TrainConfig.model_validate({**presence, "train": {"prompt_pretraining": 0.3}})
    with pytest.raises(ValueError, match="presence_threshold is for finetune: presence"):
        TrainConfig.model_validate({"model": {"presence_threshold": 0.5}})


def test_predict_presence_gate_false_reaches_the_jobs_predictor_and_the_run_record(gated_bundles):
    from jobs.inference.bundle_meta import read_bundle_meta
    from jobs.inference.predictor import Predictor
    from jobs.runtime.config import load_config
    from jobs.segmentation.config import SegmentConfig
    from jobs.segmentation.record import record_difference, run_record

    assert Predictor(gated_bundles["gated"], device="cpu").predictor.presence_threshold == 0.5
    off = Predictor(gated_bundles["gated"], device="cpu", presence_gate=False)
    assert off.predictor.presence_threshold is None
    tiles = np.random.default_rng(0).integers(0, 255, (2, 3, 128, 128), dtype=np.uint8)
    assert Predictor(gated_bundles["gated"], device="cpu").predictor(tiles)["prob"].max() < 1e-6
    assert off.predictor(tiles)["prob"].max() > 0.01
    # a scene done with the gate is redone without it, and the reason names the setting
    config = str(REPO / "configs" / "segment.yaml")
    on_cfg = load_config(SegmentConfig, config, [])
    off_cfg = load_config(SegmentConfig, config, ["predict.presence_gate=false"])
    on, off = (run_record(c, "sha", 0.5, 256, 32, None, gated=True) for c in (on_cfg, off_cfg))
    assert "presence_gate" not in on  # records made before the option keep matching
    assert "predict.presence_gate" in record_difference(on, off)
    # a bundle without a gate gives the same outputs either way: nothing to redo
    assert run_record(off_cfg, "sha", 0.5, 256, 32, None) == on
    assert read_bundle_meta(gated_bundles["gated"]).presence_threshold == 0.5
    assert read_bundle_meta(gated_bundles["plain"]).presence_threshold is None
