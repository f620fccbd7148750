"""jobs/evaluate.py and its parts (eval_data, sliding_window, eval_scoring): sliding-window
stitching, metrics on hand-checkable cases, the CLI end to end on a tiny random bundle and a
synthetic pair folder."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from jobs import evaluate as ev
from jobs.evaluation import data as eval_data
from jobs.evaluation import scoring as eval_scoring
from jobs.evaluation.run import parse_thresholds, sweep_thresholds
from jobs.inference import sliding_window

# ----------------------------------------------------------------------------- stitching

def _echo_forward(tiles: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Two 'passes': channel 0 / 255 and channel 1 / 255 of each window."""
    x = tiles.astype(np.float32) / 255.0
    return np.stack([x[:, 0], x[:, 1]])


@pytest.mark.parametrize("stitch", ["core", "mean"])
@pytest.mark.parametrize("shape", [(70, 150), (40, 30), (64, 64)])
def test_sliding_window_reassembles_the_image(stitch, shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
    window = sliding_window.SlidingWindow(_echo_forward, tile=32, overlap=8, stitch=stitch,
                                          batch_size=3)
    prob = window(image)
    assert prob.shape == (2, *shape) and prob.dtype == np.float32
    np.testing.assert_allclose(prob[0], image[0] / 255.0, atol=1e-6)
    np.testing.assert_allclose(prob[1], image[1] / 255.0, atol=1e-6)


def test_mean_stitch_averages_overlapping_windows():
    calls = []

    def forward(tiles, valid):  # every window predicts its own call number
        out = np.zeros((1, len(tiles), *tiles.shape[-2:]), np.float32)
        for j in range(len(tiles)):
            calls.append(len(calls))
            out[0, j] = len(calls) - 1
        return out

    # One row of two windows: cores [0,12) and [12,24); read windows [0,16) and [8,24) (the
    # last one shifted inside the image).
    image = np.zeros((3, 12, 24), np.uint8)
    prob = sliding_window.SlidingWindow(forward, tile=16, overlap=4, stitch="mean")(image)[0]
    assert len(calls) == 2
    assert np.all(prob[:, :8] == 0) and np.all(prob[:, 16:] == 1)
    assert np.all(prob[:, 8:16] == 0.5)  # covered by both windows


# ----------------------------------------------------------------------------- metrics

def test_score_image_hand_checked():
    target = np.zeros((10, 10), bool)
    target[2, 2:6] = True  # 4 target pixels
    prob = np.zeros((2, 10, 10), np.float32)
    prob[0, 2, 3:9] = 0.9  # 6 predicted, 3 of them right
    prob[1] = np.where(target, 0.8, 0.1)  # exact
    p0, p1 = eval_scoring.score_image(prob, target, threshold=0.5, tolerance=2)
    assert p0["tp"] == 3 and p0["fp"] == 3 and p0["fn"] == 1
    assert p0["dice"] == pytest.approx(2 * 3 / (4 + 6))
    assert p0["iou"] == pytest.approx(3 / 7)
    assert p0["precision"] == pytest.approx(0.5)
    assert p0["recall"] == pytest.approx(0.75)
    # Within 2 px: predicted x=6,7 are near target x=5, x=8 is 3 px away -> 5/6; all targets found.
    assert p0["tol_precision"] == pytest.approx(5 / 6)
    assert p0["tol_recall"] == pytest.approx(1.0)
    assert p0["tol_f1"] == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert all(p1[m] == pytest.approx(1.0) for m in eval_scoring.METRICS)


def test_tolerant_f1_forgives_a_one_pixel_shift():
    target = np.zeros((12, 12), bool)
    target[:, 5] = True
    prob = np.zeros((12, 12), np.float32)
    prob[:, 6] = 1.0
    (row,) = eval_scoring.score_image(prob, target, 0.5, tolerance=2)
    assert row["dice"] == 0.0 and row["tol_f1"] == pytest.approx(1.0)
    (row,) = eval_scoring.score_image(prob, target, 0.5, tolerance=0.5)
    assert row["tol_f1"] == 0.0


def test_aggregate_means_and_pooled():
    rows = [dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, tol_precision=1.0, tol_recall=1.0,
                 tol_f1=1.0, tp=10, fp=0, fn=0),
            dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0, tol_precision=0.0, tol_recall=0.0,
                 tol_f1=0.0, tp=0, fp=0, fn=30)]
    agg = eval_scoring.aggregate(rows)
    assert agg["dice"] == 0.5 and agg["images"] == 2
    assert agg["dice_pooled"] == pytest.approx(20 / 50)
    assert agg["recall_pooled"] == pytest.approx(10 / 40)


def test_parse_thresholds():
    assert parse_thresholds("0.1:0.5:0.1") == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert parse_thresholds("0.3,0.7") == [0.3, 0.7]
    with pytest.raises(eval_data.EvalError):
        parse_thresholds("0:1:0.5")


def test_sweep_picks_the_threshold_that_maximises_dice(tmp_path):
    root = _pairs(tmp_path / "val", n=2, size=(24, 40))

    def forward(tiles, valid):  # probability 0.6 on the (dark) crack, 0.4 elsewhere
        return np.where(tiles[:, :1] < 60, 0.6, 0.4).astype(np.float32).transpose(1, 0, 2, 3)

    items = eval_data.list_pairs(str(root), "custom")
    window = sliding_window.SlidingWindow(forward, tile=32, overlap=0)
    sweep = sweep_thresholds(window, items, [0.3, 0.5, 0.7])
    assert sweep["best"] == 0.5 and sweep["best_dice"] == pytest.approx(1.0)
    assert [r["threshold"] for r in sweep["table"]] == [0.3, 0.5, 0.7]
    assert sweep["table"][2]["dice"] == 0.0  # nothing predicted, crack present


# ----------------------------------------------------------------------------- CLI end to end

def _pairs(root, n=3, size=(90, 150)):
    """Pair folder ``images/*.png`` + ``masks/*.png``: grey texture with a dark diagonal band."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(1)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        mask = np.abs(yy - (xx * h / w) - 5 * i) < 3
        img = rng.integers(120, 200, (h, w, 3)).astype(np.uint8)
        img[mask] = 30
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"im{i}.png")
    return root


@pytest.fixture(scope="module")
def micro_bundle(tmp_path_factory):
    import torch

    import samsp

    torch.manual_seed(0)
    model = samsp.SamSP(samsp.build_sam("vit_micro"), iterations=2, prompt="box")
    uri = tmp_path_factory.mktemp("bundle") / "micro"
    samsp.save_bundle(model, str(uri), {"threshold": 0.5})
    return str(uri)


def test_cli_writes_table_summary_and_overlays(tmp_path, micro_bundle, capsys):
    data = _pairs(tmp_path / "data")
    out = tmp_path / "eval"
    rc = ev.main(["--model", micro_bundle, "--data", str(data), "--out", str(out),
                  "--tile", "64", "--overlap", "16", "--overlays", "1"])
    assert rc == 0
    assert "pass" in capsys.readouterr().out
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == eval_scoring.COLUMNS
    assert len(rows) == 3 * 3  # 3 images x passes 0..2
    assert sorted({r["image"] for r in rows}) == ["im0", "im1", "im2"]
    assert [r["pass"] for r in rows[:3]] == ["0", "1", "2"]
    assert [r["is_output"] for r in rows[:3]] == ["False", "False", "True"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["passes"]) == {"0", "1", "2"}
    assert summary["output"]["pass"] == 2 and summary["threshold_source"] == "bundle"
    assert summary["layout"] == "custom" and summary["images"] == 3
    for agg in summary["passes"].values():
        assert all(0.0 <= agg[m] <= 1.0 for m in eval_scoring.METRICS)
    # The output's mean is the mean of the final pass's rows.
    final = [float(r["dice"]) for r in rows if r["pass"] == "2"]
    assert summary["output"]["dice"] == pytest.approx(np.mean(final), abs=1e-5)
    pngs = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(pngs) == 2 and pngs[0].startswith("best_01") and pngs[1].startswith("worst_01")
    assert Image.open(out / "overlays" / pngs[0]).size == (2 * 150, 90)


def test_cli_iterations_override_and_sweep(tmp_path, micro_bundle):
    data = _pairs(tmp_path / "data", n=2)
    out = tmp_path / "eval"
    rc = ev.main(["--model", micro_bundle, "--data", str(data), "--out", str(out),
                  "--iterations", "0", "--sweep-data", str(data), "--sweep-thresholds", "0.3,0.6",
                  "--overlays", "0", "--stitch", "mean"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["passes"]) == ["0"] and summary["iterations"] == 0
    assert summary["threshold_source"] == "sweep" and summary["threshold"] in (0.3, 0.6)
    assert (out / "sweep.csv").exists()
    if summary["threshold"] != 0.5:
        assert "0.5" in summary["output_at"]


def test_cli_bad_inputs_fail_with_one_line(tmp_path, micro_bundle, capsys):
    assert ev.main(["--model", micro_bundle, "--data", str(tmp_path / "nope")]) == 2
    assert "cannot tell the layout" in capsys.readouterr().err
    data = _pairs(tmp_path / "data", n=2)
    assert ev.main(["--model", str(tmp_path / "nobundle"), "--data", str(data)]) == 2
    assert "bundle" in capsys.readouterr().err


def test_pair_folders_are_checked_once_against_the_input_contract(tmp_path, micro_bundle,
                                                                   capsys):
    """Photos decoded to 8-bit RGB against a bundle trained on stretched uint16 scenes: a
    4-band model fails the run before it loads (one line), a 3-band one warns in summary.json
    (the GSD is not checked: photos have none); --contract-check off checks nothing."""
    import shutil

    data = _pairs(tmp_path / "data", n=1)
    bundle = tmp_path / "scenes_bundle"
    shutil.copytree(micro_bundle, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    contract = {"labels": "road", "dtype": "uint16", "channels": 3, "bands": [1, 2, 3],
                "radiometry": {"mode": "stretch", "percentiles": [2.0, 98.0]},
                "band_names": None, "gsd_m": 0.5}

    def evaluate(contract: dict, out: str, *extra) -> int:
        (bundle / "bundle.json").write_text(json.dumps({**meta, "input": contract}))
        return ev.main(["--model", str(bundle), "--data", str(data), "--out",
                        str(tmp_path / out), "--tile", "64", "--iterations", "0",
                        "--overlays", "0", *extra])

    assert evaluate(contract, "three") == 0
    summary = json.loads((tmp_path / "three" / "summary.json").read_text())
    [warning] = summary["warnings"]
    assert warning.startswith("model was trained on uint16 scenes stretched 2-98 %; this uint8 "
                              "scene goes to it unchanged")
    four = dict(contract, channels=4, bands=[1, 2, 3, 4])
    assert evaluate(four, "four") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "model expects 4 bands of uint16 scenes; scene has 3 bands uint8" in err
    assert not (tmp_path / "four").exists()
    assert evaluate(four, "off", "--contract-check", "off") == 0
    summary = json.loads((tmp_path / "off" / "summary.json").read_text())
    assert summary["warnings"] == [] and summary["contract_check"] == "off"


def test_deepcrack_layout_is_detected():
    from tests.conftest import shared_data

    root = shared_data("deepcrack")
    items = eval_data.list_pairs(str(root), limit=2)
    assert len(items) == 2 and "test_img" in items[0]["image"]
    image, mask, valid = eval_data.load_item(items[0])
    assert image.shape == (3, 384, 544) and mask.shape == (384, 544) and 0 < mask.mean() < 0.2


def test_pooled_precision_of_an_empty_prediction_follows_the_per_image_convention():
    from samsp import metrics

    # nothing predicted, 30 target pixels: per-image precision is 0, and so is the pooled one
    assert eval_scoring.pooled(0, 0, 30)["precision_pooled"] == 0.0
    assert float(metrics.precision(np.zeros((1, 8, 8), bool), np.ones((1, 8, 8), bool))[0]) == 0.0
    assert eval_scoring.pooled(0, 0, 0)["precision_pooled"] == 1.0  # nothing to find, nothing found
    assert eval_scoring.pooled(5, 5, 30)["precision_pooled"] == 0.5
