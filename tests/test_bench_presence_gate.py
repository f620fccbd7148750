"""bench.presence_gate: one run scores every gate, and crack-free crops are counted as the
gate leaves them."""
from __future__ import annotations

import numpy as np
import torch

from bench.presence_gate import PRESENCE_SWEEP, clean_alarms, gate_sweep_forward
from jobs.inference.sliding_window import bundle_forward
from samsp import load_bundle
from tests.conftest import save_random_bundle


def test_each_plane_is_the_final_pass_gated_at_one_threshold(tmp_path):
    bundle = load_bundle(save_random_bundle(tmp_path / "micro", "vit_micro", iterations=1))
    last = bundle.model.sam.mask_decoder.iou_prediction_head.layers[-1]
    with torch.no_grad():  # presence sigmoid(-1.5) = 0.18 on every window
        last.weight.zero_()
        last.bias.fill_(-1.5)
    tiles = np.random.default_rng(0).integers(0, 255, (2, 3, 128, 128), dtype=np.uint8)
    planes = gate_sweep_forward(bundle)(tiles, None)
    plain = bundle_forward(bundle, presence_threshold=None, precision="fp32")(tiles, None)[-1]
    assert planes.shape == (len(PRESENCE_SWEEP), 2, 128, 128)
    for gate, plane in zip(PRESENCE_SWEEP, planes):
        if gate <= 0.18:
            np.testing.assert_allclose(plane, plain, atol=1e-6)
        else:
            assert not plane.any()


def test_clean_alarms_count_only_crack_free_crops_per_gate():
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True  # the top-left crop of a 3x3 cut holds a crack
    prob = np.zeros((2, 6, 6), np.float32)
    prob[0, 0:2, 2:4] = 0.9  # plane 0: an alarm on a crack-free crop
    prob[:, 0:2, 0:2] = 0.9  # both planes mark the cracked crop: not a false alarm
    clean, alarms = clean_alarms(prob, mask, 3, 0.5)
    assert clean == 8 and alarms.tolist() == [1, 0]


def test_the_results_page_gives_every_gate_a_row():
    from bench.presence_gate import markdown

    rows = [{"presence_threshold": g, "mean_dice": 0.6 - g / 10, "groups": {"a": 0.7, "a_cut3": 0.5},
             "clean_crops_alarm_share": None if g == 0.5 else 0.3 - g / 10} for g in (0.0, 0.9, 0.5)]
    page = markdown({"out/m": {"threshold": 0.55, "clean_crops": 10, "chosen": None, "rows": rows,
                               "note": "head trained on augmented crops"}})
    assert "### out/m" in page and "head trained on augmented crops" in page
    assert "| none | 0.6000 | 0.7000 | 0.5000 | 30.0 % |" in page
    assert "| 0.9 | 0.5100 | 0.7000 | 0.5000 | 21.0 % |" in page and "| 0.5 |" in page


def test_write_puts_the_chosen_gate_into_the_bundle_and_the_sweep_into_its_provenance(tmp_path):
    from bench.presence_gate import write_choice

    model = save_random_bundle(tmp_path / "micro", "vit_micro", iterations=1)
    rows = [{"presence_threshold": 0.0, "mean_dice": 0.5}]
    write_choice(model, {"chosen": 0.9, "cuts": {"deepcrack": 3}, "rows": rows})
    meta = load_bundle(model).meta  # still loads: the weights' checksum is untouched
    assert meta.presence_threshold == 0.9 and meta.threshold == 0.5
    record = meta.provenance["presence_selection"]
    assert record["before"] is None and record["rows"] == rows
    assert record["command"].endswith("--write --val-cut deepcrack=3")
