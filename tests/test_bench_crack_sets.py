"""bench/crack_sets.py: the crack-free false-positive rate counts only blocks far from any crack,
and the study's run list and configs are what its docstring says."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from bench.crack_sets import BLOCK, crack_free_fp, planned_runs, run_config


def test_crack_free_blocks_exclude_the_crack_and_its_margin():
    h, w = 2 * BLOCK, 3 * BLOCK
    target = np.zeros((h, w), bool)
    target[10, 10] = True  # block (0, 0) holds a crack
    target[20, 2 * BLOCK - 1] = True  # in block (0, 1), within MARGIN of block (0, 2)
    valid = np.ones((h, w), bool)
    valid[BLOCK:, :BLOCK] = False  # block (1, 0) is padding: no pixels count
    pred = np.zeros((h, w), bool)
    pred[:BLOCK, :BLOCK] = True  # over the crack's block: not a crack-free false alarm
    pred[BLOCK + 5, BLOCK + 5] = True  # one false alarm in crack-free block (1, 1)
    fp, n = crack_free_fp(pred, target, valid)
    # crack-free: (1, 1) and (1, 2); (0, 1) holds a crack, (0, 2) is near it, (1, 0) is invalid
    assert (fp, n) == (1, 2 * BLOCK * BLOCK)
    assert crack_free_fp(pred, np.zeros_like(target), valid)[1] == 5 * BLOCK * BLOCK


def test_leave_one_out_configs_drop_the_held_set(tmp_path):
    sets = ["deepcrack", "crack500", "gaps384", "shadowcrack"]
    names = [r[0] for r in planned_runs(["loo", "arms"], sets)]
    assert names[:4] == [f"loo-{s}" for s in sets] and "arm-single" in names
    cfg = yaml.safe_load(run_config("loo-gaps384", 600, 3, "gaps384", sets, tmp_path).read_text())
    assert [m["name"] for m in cfg["data"]["source"]["members"]] == [
        "deepcrack", "crack500", "shadowcrack"]
    assert cfg["train"]["epochs"] * cfg["data"]["source"]["samples_per_epoch"] == 600 * 4
    assert all(m["source"]["root"].startswith("/") for m in cfg["data"]["source"]["members"])


def test_fine_tune_runs_start_from_the_bundle_and_leave_out_only_unseen_sets():
    runs = planned_runs(["loo"], ["deepcrack", "crack500", "gaps384"], init="samsp-crack-tiny",
                        loo_sets=["crack500", "gaps384"])
    assert [(n, held) for n, held, _ in runs] == [("ft-loo-crack500", "crack500"),
                                                 ("ft-loo-gaps384", "gaps384")]
    assert "model.checkpoint=samsp-crack-tiny" in runs[0][2]


def test_arms_run_seed_by_seed_with_the_unet_arm_among_them():
    from bench.crack_sets import UNET

    runs = planned_runs(["arms"], ["deepcrack"], seeds=(0, 1), unet=True)
    names = [n for n, _, _ in runs]
    assert names == ["arm-single", "arm-sp_box", "arm-sp_boxmask", "arm-unet",
                     "arm-single-s1", "arm-sp_box-s1", "arm-sp_boxmask-s1", "arm-unet-s1"]
    by_name = {n: o for n, _, o in runs}
    assert "train.seed=1" in by_name["arm-sp_box-s1"] and UNET in by_name["arm-unet-s1"]
    assert not any(o.startswith("train.seed") for o in by_name["arm-sp_box"])
    assert UNET not in by_name["arm-single"]


def test_arm_rows_average_seeds_and_keep_pass_zero():
    from bench.crack_sets import arm_rows, headlines

    def entry(d, d0=None):
        per = {"dice": d, "crack_free_fp_rate": 0.0,
               "dice_per_pass": [d0, d] if d0 is not None else [d]}
        return {"sets": {"deepcrack": dict(per), "crack500": dict(per)}, "mean_dice": d,
                "min_dice": d, "train_s": 100.0}

    data = {"models": {"arm-sp_box": entry(0.6, 0.5), "arm-sp_box-s1": entry(0.4, 0.3),
                       "arm-unet": entry(0.5), "loo-gaps384": dict(entry(0.1), held_out="gaps384"),
                       "committed": entry(0.9)}}
    rows = arm_rows(data)
    assert set(rows) == {"sp_box", "unet"}
    assert rows["sp_box"]["seeds"] == 2 and rows["sp_box"]["mean"] == pytest.approx(0.5)
    assert rows["sp_box"]["spread"] == pytest.approx(0.1414, abs=1e-3)
    assert rows["sp_box"]["pass0"]["crack500"] == pytest.approx(0.4)
    assert "pass0" not in rows["unet"] and rows["unet"]["spread"] is None
    keys = headlines(data, "committed", None)
    assert keys["crack_arm_dice_mean_sp_box"] == 0.5 and keys["crack_arm_dice_crack500_unet"] == 0.5


def test_leave_one_out_headlines_come_from_one_study():
    """Two leave-one-set-out studies (an old recipe, and one run with ``--name``) hold the
    same held-out sets: the headline keys are the named study's, never a mix of both."""
    from bench.crack_sets import headlines, markdown

    def held(set_name, d, study=None):
        return {"sets": {set_name: {"dice": d, "crack_free_fp_rate": 0.0}}, "held_out": set_name,
                "steps": 800, **({"study": study, "overrides": ["augment.fill_small=0.5"]}
                                 if study else {})}

    data = {"models": {"ft-loo-gaps384": held("gaps384", 0.3),
                       "ft-loo-crack500": held("crack500", 0.5),
                       "ft-loo-gaps384-new": held("gaps384", 0.4, "new"),
                       "ft-loo-crack500-new": held("crack500", 0.6, "new")}}
    old, new = headlines(data, "none", None), headlines(data, "none", None, "new")
    assert old["crack_loo_dice_mean"] == pytest.approx(0.4)
    assert new["crack_loo_dice_mean"] == pytest.approx(0.5) and new["crack_loo_dice_gaps384"] == 0.4
    text = markdown(data, new)
    assert "(study new): 2 held-out set(s) (crack500 0.600, gaps384 0.400), mean 0.500" in text
    assert "study new: augment.fill_small=0.5" in text


def test_leave_one_out_headlines_average_a_recipes_seeds():
    """A recipe run with two seeds (two studies): each held-out set's headline is the mean
    over the seeds, the mean carries the seeds' spread, and seeds that left out different
    sets are refused rather than averaged."""
    from bench.crack_sets import headlines, markdown

    def held(set_name, d, study):
        return {"sets": {set_name: {"dice": d, "crack_free_fp_rate": 0.0}}, "held_out": set_name,
                "steps": 800, "study": study, "overrides": []}

    data = {"models": {"a-g": held("gaps384", 0.4, "r"), "a-c": held("crack500", 0.6, "r"),
                       "b-g": held("gaps384", 0.3, "r-s1"), "b-c": held("crack500", 0.5, "r-s1"),
                       "c-g": held("gaps384", 0.9, "other")}}
    keys = headlines(data, "none", None, ["r", "r-s1"])
    assert keys["crack_loo_dice_gaps384"] == pytest.approx(0.35)
    assert keys["crack_loo_dice_mean"] == pytest.approx(0.45)
    assert keys["crack_loo_seeds"] == 2 and keys["crack_loo_study"] == "r,r-s1"
    assert keys["crack_loo_dice_mean_spread"] == pytest.approx(0.0707, abs=1e-3)
    assert "over 2 seeds (studies r, r-s1)" in markdown(data, keys)
    with pytest.raises(ValueError, match="not the same held-out sets"):
        headlines(data, "none", None, ["r", "other"])


def test_study_options_refused_where_they_would_mislead(capsys):
    """A headline study with no run, and study names on the arms (whose rows group seeds by
    name), fail with one line before anything is read or trained."""
    from bench.crack_sets import main

    with pytest.raises(SystemExit):
        main(["report", "--committed", "none", "--loo-study", "no-such-study"])
    assert "no leave-one-set-out run of that study" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["runs", "--runs", "arms", "--name", "x"])
    assert "--runs loo only" in capsys.readouterr().err


def test_select_chooses_rule_and_threshold_on_the_bundles_validation_data(tmp_path):
    """``select``: each rule scored on the bundle's own validation split (members by name, at
    every threshold of training's sweep), the best mean chosen; ``--write`` puts that rule and
    threshold into bundle.json -- weights untouched, the choice and its command in its
    provenance."""
    import json

    from bench.crack_sets import selection_lines, select_rule, write_choice
    from jobs.training.config import TrainConfig
    from jobs.training.validation import THRESHOLD_SWEEP
    from samsp import load_bundle
    from tests.conftest import save_random_bundle
    from tests.test_train_mixture import _member, _pairs

    _pairs(tmp_path / "a", 7, size=(40, 60), value=90)
    _pairs(tmp_path / "b", 7, size=(60, 30), value=160)
    data = TrainConfig.model_validate({"data": {"source": {"kind": "mixture", "members": [
        _member(tmp_path / "a", "a"), _member(tmp_path / "b", "b")]}}}).data
    uri = save_random_bundle(tmp_path / "m", "vit_micro")
    path = tmp_path / "m" / "bundle.json"
    meta = json.loads(path.read_text())
    meta["provenance"] = {"config": {"data": data.model_dump(mode="json")}}
    path.write_text(json.dumps(meta))
    choice = select_rule(uri, cuts={"a": 2})  # a's images also cut in 2 x 2 crops: a group
    assert set(choice["rules"]) == {"pad", "fill"}
    for rule in choice["rules"].values():
        assert set(rule["sets"]) == {"a", "b", "a_cut2"} and rule["threshold"] in THRESHOLD_SWEEP
        assert rule["mean_dice"] == pytest.approx(np.mean(list(rule["sets"].values())))
        assert rule["mean_dice"] == pytest.approx(max(rule["mean_by_threshold"]), abs=1e-4)
    best = choice["rules"][choice["chosen"]]
    assert best["mean_dice"] == max(r["mean_dice"] for r in choice["rules"].values())
    write_choice(uri, choice)
    after = load_bundle(uri).meta
    assert (after.small_images, after.threshold) == (choice["chosen"], best["threshold"])
    assert after.prompt_threshold == 0.5  # the self-prompts keep the threshold they ran with
    assert after.weights_sha256 == meta["weights_sha256"]
    assert after.provenance["small_images_selection"]["before"] == {"small_images": "pad",
                                                                    "threshold": 0.5}
    assert after.provenance["small_images_selection"]["command"].endswith("--val-cut a=2")
    lines = selection_lines({"selections": {uri: choice}})
    assert sum("(chosen)" in line for line in lines) == 1
