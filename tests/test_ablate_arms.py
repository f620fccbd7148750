"""bench/ablation/run.py's arms: every SAM arm's overrides make a valid training config (a typo in an
arm would otherwise surface only after its calibration, minutes into a background grid)."""
from __future__ import annotations

import pytest

from bench.ablation.run import _arm_table, arm_overrides, load_cfg

ARMS = _arm_table(0.5)


@pytest.mark.parametrize("name", sorted(a for a, arm in ARMS.items() if arm["kind"] == "sam"))
def test_every_sam_arm_builds_a_valid_training_config(name):
    cfg = load_cfg(arm_overrides(ARMS[name]))
    assert cfg.model.iterations == ARMS[name]["iterations"]
    assert cfg.loss.distill_weight == ARMS[name]["distill"]


def test_loss_option_arms_differ_from_their_base_only_in_the_loss():
    base = load_cfg(arm_overrides(ARMS["spsd_box_pp_detail"]))
    skel = load_cfg(arm_overrides(ARMS["spsd_box_pp_detail_skel"]))
    bce = load_cfg(arm_overrides(ARMS["spsd_box_pp_detail_bce05"]))
    assert (base.loss.skeleton_weight, skel.loss.skeleton_weight) == (0.0, 1.0)
    assert (base.loss.bce_weight, bce.loss.bce_weight) == (1.0, 0.5)
    for cfg in (skel, bce):
        assert cfg.model == base.model and cfg.train == base.train
