"""bench/recipe_budget_report.py: arms chosen on validation, seeds averaged, run records imported."""
import json

from bench import recipe_budget_report as rep


def _result(arm, seed, dice, val, pooled=0.8, kind="sam"):
    return {"arm": arm, "seed": seed, "what": arm, "kind": kind, "steps": 100, "train_s": 60.0,
            "threshold": 0.5, "val_dice": val, "test_images": 3, "bundle": "/tmp/x",
            "test": {"dice": dice, "dice_pooled": pooled, "precision": 0.9, "recall": 0.7},
            "test_passes": {"0": {"dice": dice and dice - 0.001}}}


def _write_runs(root, study, results):
    for r in results:
        d = root / study / "runs" / f"{r['arm']}-s{r['seed']}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(r))


def test_import_keeps_finished_runs_without_local_paths(tmp_path):
    unfinished = _result("spsd_box", 1, None, None)
    _write_runs(tmp_path / "runs", "deepcrack", [_result("spsd_box", 0, 0.7, 0.6), unfinished])
    records = tmp_path / "records"
    assert rep.import_runs(tmp_path / "runs", records) == 1
    rec = json.loads((records / "deepcrack" / "spsd_box-s0.json").read_text())
    assert rec["test"]["dice"] == 0.7 and "bundle" not in rec


def test_best_arms_are_chosen_on_validation_and_seeds_averaged(tmp_path):
    runs = tmp_path / "runs"
    _write_runs(runs, "deepcrack", [
        _result("spsd_box", 0, 0.80, 0.70), _result("spsd_box", 1, 0.78, 0.70),
        _result("spsd_mask", 0, 0.90, 0.60),  # best on test, worse on validation
        _result("single", 0, 0.75, 0.65), _result("unet", 0, 0.81, 0.8, kind="unet")])
    _write_runs(runs, "deepcrack60", [_result("single_detail", 0, 0.82, 0.75, pooled=0.85),
                                      _result("unet", 0, 0.83, 0.77, pooled=0.86, kind="unet")])
    records = tmp_path / "records"
    rep.import_runs(runs, records)
    res, md = rep.report(records)
    assert res["i17_10min_deepcrack_spsd_best_arm"] == "spsd_box"
    assert res["dice_deepcrack_spsd_best"] == 0.79 and res["deepcrack"]["spsd_box"]["spread"] == 0.01
    assert res["dice_deepcrack_single"] == 0.75 and res["dice_deepcrack_unet"] == 0.81
    assert res["i17_10min_dice_deepcrack_spsd_best"] == res["dice_deepcrack_spsd_best"]
    assert res["deepcrack_best_60min_arm"] == "unet"
    assert res["dice_pooled_deepcrack_best_60min"] == 0.86
    assert res["dice_deepcrack_sam_60min"] == 0.82
    assert "roads" not in md.split("Headline")[0].lower()  # no roads runs: no roads table


def test_committed_records_rebuild_the_committed_results():
    res, _ = rep.report()
    committed = json.loads((rep.REPO / "bench" / "results" / "results_recipe_budget.json").read_text())
    assert {k: v for k, v in res.items()} == committed
