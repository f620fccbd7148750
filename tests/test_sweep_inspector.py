"""The crack sweep as an inspector reads it: ranking (``report.sort_by``), the centre-line max
width away from junctions and blobs, crack networks, each photo's own ``seconds``, and the local
engine (``pipeline.engine: local``) writing what the Ray engine writes."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jobs.crack_sweep.config import SweepConfig
from jobs.crack_sweep.cracks import (WIDTH_METHOD, crack_measurements, crack_metrics,
                                     crack_networks, skeleton_nodes)
from jobs.crack_sweep.measure import MeasureConfig, physical_measurements, severity
from jobs.crack_sweep.report import rank_columns, ranked_table, write_report
from jobs.runtime.config import ConfigError, load_config
from tests.test_ingest_centerlines import crack

REPO = Path(__file__).resolve().parents[1]


def stroke(m: np.ndarray, r0: float, c0: float, r1: float, c1: float, width: float) -> np.ndarray:
    """Draw a straight crack of ``width`` px (round caps) from (r0, c0) to (r1, c1) into ``m``."""
    yy, xx = np.mgrid[:m.shape[0], :m.shape[1]]
    d = np.array([r1 - r0, c1 - c0], float)
    t = np.clip(((yy - r0) * d[0] + (xx - c0) * d[1]) / (d @ d), 0, 1)
    m |= np.hypot(yy - (r0 + t * d[0]), xx - (c0 + t * d[1])) <= width / 2
    return m


def disk(m: np.ndarray, r: float, c: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:m.shape[0], :m.shape[1]]
    m |= np.hypot(yy - r, xx - c) <= radius
    return m


# ----------------------------------------------------------------------------- max width

@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 9])
@pytest.mark.parametrize("vertical", [False, True])
def test_a_straight_crack_has_its_width(width, vertical):
    m = np.zeros((80, 300), bool)
    m[40 - width // 2:40 - width // 2 + width, 20:280] = True
    m = m.T.copy() if vertical else m
    s = crack_metrics(m)
    assert s["max_width_px"] == pytest.approx(width, abs=1)
    if width % 2:  # odd widths are exact (2·d − 1 on the pixel grid)
        assert s["max_width_px"] == width and s["max_width_raw_px"] == width
    assert s["cracks"] == s["networks"] == 1 and s["width_method"] == WIDTH_METHOD


@pytest.mark.parametrize("angle", [14, 30, 45])
def test_a_slanted_crack_is_within_a_pixel(angle):
    s = crack_metrics(crack(300, 500, 40, 60, 380, 5, angle).astype(bool))
    assert s["max_width_px"] == pytest.approx(5, abs=1)


@pytest.mark.parametrize("width", [3, 5])
def test_a_y_junction_does_not_inflate_max_width(width):
    """Three short arms meeting in a filled corner (as predicted masks round their junctions):
    the distance transform there is the fillet's, not a crack's -- and on arms this short it is
    more than 5 % of the centre-line, so a percentile alone would report it (11 px)."""
    m = np.zeros((120, 120), bool)
    for r1, c1 in ((60, 10), (110, 90), (10, 90)):
        stroke(m, 60, 60, r1, c1, width)
    disk(m, 60, 60, 8)
    s = crack_metrics(m)
    assert s["max_width_raw_px"] >= 15  # what the report used to say
    assert s["max_width_px"] == pytest.approx(width, abs=1)
    assert s["cracks"] == s["networks"] == 1


def test_a_narrow_y_junction_does_not_inflate_max_width():
    m = np.zeros((300, 300), bool)
    for r1, c1 in ((20, 150), (280, 170), (60, 280)):
        stroke(m, 150, 150, r1, c1, 7)
    s = crack_metrics(m)
    assert s["max_width_raw_px"] > 8
    assert s["max_width_px"] == pytest.approx(7, abs=1)


@pytest.mark.parametrize("width", [1, 3, 5])
def test_a_blob_at_the_end_does_not_set_max_width(width):
    """A 100-px crack ending in a 31-px blob (a stain, a spall): the percentile alone would
    report ~20 px."""
    m = stroke(np.zeros((120, 200), bool), 60, 20, 60, 120, width)
    disk(m, 60, 130, 15)
    metrics, lines = crack_measurements(m)
    assert metrics["max_width_raw_px"] >= 25
    assert metrics["max_width_px"] == pytest.approx(width, abs=1)
    # the line carries it too: cracks.parquet and the width classes use this width
    assert max(ln.width_max for ln in lines) == metrics["max_width_px"]


def test_a_lone_blob_gets_its_median_width():
    """No pixel away from an end: the median over its centre-line, not nothing."""
    s = crack_metrics(disk(np.zeros((60, 60), bool), 30, 30, 6))
    assert 0 < s["max_width_px"] <= s["max_width_raw_px"]


def test_skeleton_nodes_of_a_t_and_of_a_diagonal():
    t = np.zeros((9, 9), bool)
    t[2, 1:8] = True  # the bar
    t[3:8, 4] = True  # the stem
    junctions, ends = skeleton_nodes(t)
    assert list(zip(*np.nonzero(junctions))) == [(2, 4)]
    assert sorted(zip(*np.nonzero(ends))) == [(2, 1), (2, 7), (7, 4)]
    d = np.eye(8, dtype=bool)  # a diagonal: two ends, no junction
    junctions, ends = skeleton_nodes(d)
    assert not junctions.any() and sorted(zip(*np.nonzero(ends))) == [(0, 0), (7, 7)]


# ----------------------------------------------------------------------------- networks

@pytest.mark.parametrize("gap,networks", [(1, 1), (2, 1), (6, 1), (7, 2), (12, 2)])
def test_pieces_a_small_gap_apart_are_one_network(gap, networks):
    m = np.zeros((40, 200), bool)
    m[18:21, 10:90] = True
    m[18:21, 90 + gap:180] = True  # ``gap`` background columns between the pieces
    s = crack_metrics(m)
    assert s["cracks"] == 2 and s["networks"] == networks and s["network_gap_px"] == 6


def test_network_gap_is_configurable():
    m = np.zeros((40, 200), bool)
    m[18:21, 10:90] = True
    m[18:21, 92:180] = True  # 2 px apart
    assert crack_networks(m, 0) == 2 and crack_networks(m, 2) == 1 and crack_networks(m, 1) == 2
    m[30:33, 10:40] = True  # 9 px below: its own network at the default gap
    assert crack_networks(m) == 2 and crack_networks(m, 20) == 1 and crack_networks(m[:0]) == 0
    cfg = load_config(SweepConfig, None, ["measure.network_gap_px=2"])
    assert crack_metrics(m, network_gap_px=cfg.measure.network_gap_px)["networks"] == 2


# ----------------------------------------------------------------------------- severity

def test_severity_is_class_rank_times_length():
    cfg = MeasureConfig()
    # lines of 100 px at widths 2 px (hairline below 3 px), 5 px (fine) and 12 px (wide)
    score, basis = severity([100, 100, 100], [2, 5, 12], None, cfg)
    assert (score, basis) == (100 * 1 + 100 * 2 + 100 * 3, "px")
    # with a pixel size: classes in mm (0.05 mm/px: 0.1, 0.25, 0.6 mm -> hairline, hairline,
    # fine) and lengths in mm (5 mm each)
    score, basis = severity([100, 100, 100], [2, 5, 12], 0.05, cfg)
    assert (score, basis) == (pytest.approx(5 + 5 + 10), "mm")
    assert severity([], [], None, cfg) == (0, "px")


def test_px_classes_follow_the_mm_ones_unless_set():
    assert MeasureConfig().px_thresholds == [3.0, 10.0]
    cfg = MeasureConfig(width_classes_mm=[2.0], class_names=["narrow", "open"])
    assert cfg.px_thresholds == [20.0]  # no px classes to keep in step with the mm ones
    assert MeasureConfig(width_classes_px=[4, 8]).px_thresholds == [4, 8]
    with pytest.raises(ConfigError, match="measure.width_classes_px"):
        load_config(SweepConfig, None, ["measure.width_classes_px=[4]"])
    with pytest.raises(ConfigError, match="measure.width_classes_px"):
        load_config(SweepConfig, None, ["measure.width_classes_px=[8, 4]"])


def test_a_record_gets_its_severity():
    m = crack(200, 500, 20, 30, 300, 1, 0) | crack(200, 500, 20, 90, 200, 5, 0)
    metrics, lines = crack_measurements(m.astype(bool))
    lengths, widths = [ln.line().length for ln in lines], [ln.width_max for ln in lines]
    cfg = MeasureConfig()
    rec = physical_measurements(metrics, lengths, widths, None, "none", cfg)
    hair, fine = sorted(zip(widths, lengths))
    assert rec["severity_basis"] == "px"
    assert rec["severity"] == pytest.approx(1 * hair[1] + 2 * fine[1], abs=0.01)
    rec = physical_measurements(metrics, lengths, widths, 0.1, "global", cfg)
    assert rec["severity_basis"] == "mm"  # 0.1 mm and 0.5 mm: hairline and fine
    assert rec["severity"] == pytest.approx(0.1 * (hair[1] + 2 * fine[1]), abs=0.01)


# ----------------------------------------------------------------------------- ranking

def _records():
    base = {"status": "ok", "mask": "m", "thumb": "t", "input": "x"}
    return [
        {**base, "id": "pixels", "crack_px": 900, "skeleton_length_px": 100, "max_width_px": 2.0,
         "severity": 150.0, "networks": 3},
        {**base, "id": "long", "crack_px": 500, "skeleton_length_px": 400, "max_width_px": 1.0,
         "severity": 400.0, "networks": 1},
        {**base, "id": "wide", "crack_px": 600, "skeleton_length_px": 50, "max_width_px": 9.0,
         "severity": 150.0, "networks": 1},
        {"id": "bad", "status": "failed", "error": "read CorruptSceneError: x"},
        {**base, "id": "old", "crack_px": 10, "skeleton_length_px": 5, "max_width_px": 30.0},
    ]


@pytest.mark.parametrize("sort_by,order", [
    ("pixels", ["pixels", "wide", "long", "old", "bad"]),
    ("length", ["long", "pixels", "wide", "old", "bad"]),
    ("max_width", ["old", "wide", "pixels", "long", "bad"]),
    # a tie (150) goes to crack pixels; a record of an earlier run without a severity: last
    ("severity", ["long", "pixels", "wide", "old", "bad"]),
])
def test_ranking_by_each_key(sort_by, order):
    t = ranked_table(_records(), sort_by=sort_by)
    assert list(t["id"]) == order
    assert list(t["rank"][:4]) == [1, 2, 3, 4] and t["rank"].isna().iloc[4]


def test_length_and_width_rank_in_mm_when_every_image_has_a_pixel_size():
    recs = [r for r in _records() if r["status"] == "ok"]
    sizes = {"pixels": 0.1, "long": 0.01, "wide": 0.1, "old": 0.1}
    for r in recs:
        mm = sizes[r["id"]]
        r.update(pixel_size_mm=mm, skeleton_length_mm=r["skeleton_length_px"] * mm,
                 max_width_mm=r["max_width_px"] * mm)
    t = ranked_table(recs, sort_by="length")
    assert t.attrs["ranked_by"] == "skeleton_length_mm"
    assert list(t["id"]) == ["pixels", "wide", "long", "old"]  # 10 mm, 5 mm, 4 mm, 0.5 mm
    recs[0]["pixel_size_mm"] = None  # one image without: px for every image
    assert rank_columns(ranked_table(recs), "max_width")[0] == "max_width_px"


def test_sort_by_is_a_config_choice():
    for key in ("pixels", "length", "max_width", "severity"):
        assert load_config(SweepConfig, None, [f"report.sort_by={key}"]).report.sort_by == key
    assert SweepConfig().report.sort_by == "pixels"
    with pytest.raises(ConfigError, match="report.sort_by"):
        load_config(SweepConfig, None, ["report.sort_by=max_width_px"])


def test_report_files_follow_the_ranking(tmp_path):
    import pandas as pd

    summary = write_report(str(tmp_path), _records(), 2, {"model": "m"}, sort_by="severity")
    assert summary["ranked_by"] == "severity" and summary["top"] == ["long", "pixels"]
    for table in (pd.read_csv(tmp_path / "report.csv"),
                  pd.read_parquet(tmp_path / "report.parquet")):
        assert list(table["id"]) == ["long", "pixels", "wide", "old", "bad"]
        assert {"max_width_raw_px", "networks", "severity", "severity_basis"} <= set(table.columns)
    page = (tmp_path / "report.html").read_text()
    assert "Ranked by <b>severity" in page and "Top 2 by severity" in page
    assert "report.sort_by</code>: severity" in page
    assert page.index("long") < page.index("pixels<br>")


# ----------------------------------------------------------------------------- seconds

def test_read_rows_carry_their_read_seconds(tmp_path):
    from jobs.crack_sweep.pipeline import keep_mask_cores, read_photos
    from tests.test_sweep_windowed_reads import _photo

    batch = read_photos({"scene": ["a", "m"], "input": [str(_photo(tmp_path / "a.png", 150, 97)),
                                                        str(tmp_path / "missing.png")]},
                        tile=64, overlap=8)
    read_s = [json.loads(s)["read_s"] for s in batch["spec"]]
    assert all(s >= 0 for s in read_s) and read_s[0] > 0  # the first tile opened the photo
    assert batch["error"][-1] and "read_s" in json.loads(batch["spec"][-1])
    n = len(batch["tile"])
    masks = np.zeros((n, 64, 64), np.uint8)
    out = keep_mask_cores({**{k: batch[k] for k in ("scene", "spec", "tile", "error")},
                           "mask": masks, "stats": np.array(["{}"] * n, dtype=object),
                           "predict_s": np.full(n, 0.25)})
    assert list(out["predict_s"]) == [0.25] * n


def test_a_photo_adds_up_its_own_stages():
    from ingest import TileGrid
    from jobs.crack_sweep.run import Photo, failed_record

    grid = TileGrid(100, 130, 64, 8)
    rows = []
    for i, t in enumerate(grid):
        rs, cs = t.core_slices
        spec = {"input": "x", "height": 100, "width": 130, "tiles": len(grid), "read_s": 0.5}
        rows.append({"scene": "x", "spec": json.dumps(spec), "tile": json.dumps(t.to_dict()),
                     "error": "", "stats": "{}", "predict_s": 0.25,
                     "core": np.ones((rs.stop - rs.start, cs.stop - cs.start), np.uint8)})
    ph = Photo("x", "x")
    assert [ph.add_tile(r) for r in (*rows, rows[0])].count(True) == 1  # a duplicate: once
    assert ph.read_s == pytest.approx(0.5 * len(grid))
    assert ph.predict_s == pytest.approx(0.25 * len(grid))
    bad = Photo("y", "y")
    bad.add_tile(rows[0])
    bad.add_tile(dict(rows[1], error="read OSError: gone",
                      spec=json.dumps({"height": 0, "width": 0, "tiles": 1, "read_s": 2.0})))
    assert failed_record(bad, "run")["seconds"] == pytest.approx(0.5 + 0.25 + 2.0 + 0.25)


# ----------------------------------------------------------------------------- earlier records

def test_records_of_earlier_runs_are_measured_again(tmp_path):
    from PIL import Image

    from jobs.crack_sweep.measure import PixelSizes, remeasure_records
    from jobs.crack_sweep.outputs import record_json
    from jobs.crack_sweep.records import read_records, upgrade_records

    m = stroke(np.zeros((120, 320), bool), 60, 20, 60, 250, 3)
    disk(m, 60, 260, 15)
    (tmp_path / "masks").mkdir()
    (tmp_path / "records").mkdir()
    Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    old = {"id": "a", "input": "a.jpg", "status": "ok", "crack_px": int(m.sum()),
           "crack_fraction": 0.5, "valid_px": 7, "skeleton_length_px": 260, "max_width_px": 31.0,
           "mean_width_px": 4.0, "cracks": 1, "mask": "masks/a.png", "thumb": "thumbs/a.jpg",
           "measured_with": [None, [0.3, 1.0], ["hairline", "fine", "wide"]]}
    (tmp_path / "records" / "a.json").write_bytes(record_json(old))
    cfg = MeasureConfig()
    records = upgrade_records(str(tmp_path), read_records(str(tmp_path)), cfg.network_gap_px)
    records = remeasure_records(str(tmp_path), records, PixelSizes(cfg), cfg)
    rec = json.loads((tmp_path / "records" / "a.json").read_text())
    assert rec == records["a"]
    assert rec["max_width_px"] == pytest.approx(3, abs=1) and rec["max_width_raw_px"] >= 25
    assert rec["networks"] == 1 and rec["width_method"] == WIDTH_METHOD
    assert rec["severity_basis"] == "px" and rec["severity"] > 0
    assert (rec["crack_fraction"], rec["valid_px"]) == (0.5, 7)  # not in the PNG: kept
    assert (tmp_path / "features" / "a.parquet").exists()
    again = upgrade_records(str(tmp_path), {"a": dict(rec)}, cfg.network_gap_px)
    assert again["a"] == rec  # current already: untouched


# ----------------------------------------------------------------------------- local engine

class StandInPredictor:
    """The model stage without a model: mask = band 0 > 100 (what Predictor returns)."""

    def __init__(self, model_uri, threshold=None, device="cpu", torch_threads=0,
                 precision="auto", own_bundle=None, presence_gate=True):
        self.threshold = threshold
        self.presence_gate = presence_gate

    def __call__(self, batch: dict) -> dict:
        n = len(batch["tile"])
        masks = np.zeros((n, *batch["valid"].shape[-2:]), np.uint8)
        for i in range(n):
            if not batch["error"][i]:
                masks[i] = (np.asarray(batch["image"][i])[0] > 100) & batch["valid"][i]
        return {"scene": batch["scene"], "spec": batch["spec"], "tile": batch["tile"],
                "mask": masks, "prob": masks, "error": batch["error"],
                "stats": np.array(['{"disagreement": 0.0}'] * n, dtype=object),
                "predict_s": np.full(n, 0.01)}


def _local_job(tmp_path, inputs, overrides=()):
    from jobs.crack_sweep.measure import PixelSizes
    from jobs.crack_sweep.run import Photo, SweepRun

    cfg = load_config(SweepConfig, None, ["pipeline.engine=local", "predict.device=cpu",
                                          "ray.num_cpus=2", *overrides])
    job = SweepRun(cfg, PixelSizes(cfg.measure), str(tmp_path / "no-bundle"),
                   str(tmp_path / "out"), "run", inputs=inputs, tile=64, overlap=8)
    return job, {Path(u).stem: Photo(Path(u).stem, u) for u in inputs}


def test_local_engine_segments_in_process(tmp_path, monkeypatch):
    from jobs.crack_sweep import local_engine
    from jobs.crack_sweep.run import segment_photos, write_sweep_report
    from tests.test_sweep_windowed_reads import _photo

    monkeypatch.setattr(local_engine, "Predictor", StandInPredictor)
    ray_before = "ray" in sys.modules
    inputs = [str(_photo(tmp_path / "a.png", 150, 97)), str(_photo(tmp_path / "b.jpg", 90, 200,
                                                                   orientation=6, seed=1)),
              str(tmp_path / "broken.jpg")]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    job, photos = _local_job(tmp_path, inputs, ["report.sort_by=length"])
    assert segment_photos(job, photos) == (1, sum(p.spec["tiles"] for p in photos.values()
                                                  if not p.errors))
    summary = write_sweep_report(job)
    assert summary["ranked_by"] == "skeleton_length_px"
    out = tmp_path / "out"
    for sid in ("a", "b"):
        rec = json.loads((out / "records" / f"{sid}.json").read_text())
        assert rec["status"] == "ok" and rec["crack_px"] > 0
        assert rec["seconds"] == pytest.approx(rec["read_s"] + rec["predict_s"]
                                               + rec["finalize_s"], abs=0.003)
        assert rec["predict_s"] == pytest.approx(0.01 * rec["tiles"], abs=1e-3)
    assert json.loads((out / "records" / "b.json").read_text())["height"] == 200  # turned
    bad = json.loads((out / "records" / "broken.json").read_text())
    assert bad["status"] == "failed" and "CorruptSceneError" in bad["error"]
    assert ("ray" in sys.modules) == ray_before  # the local engine never imports Ray


def test_local_engine_fails_every_photo_when_the_model_does_not_load(tmp_path):
    from jobs.crack_sweep.run import segment_photos
    from tests.test_sweep_windowed_reads import _photo

    inputs = [str(_photo(tmp_path / "a.png", 70, 60)), str(_photo(tmp_path / "b.png", 60, 70))]
    job, photos = _local_job(tmp_path, inputs)
    assert segment_photos(job, photos) == (2, 0)
    for sid in ("a", "b"):
        rec = json.loads((tmp_path / "out" / "records" / f"{sid}.json").read_text())
        assert rec["status"] == "failed" and rec["error"].startswith("pipeline: ")
        assert "no-bundle" in rec["error"]


def test_readers_hand_over_every_row_once(tmp_path):
    from jobs.crack_sweep.local_engine import PhotoReader, read_threads
    from jobs.crack_sweep.pipeline import grouped_batches
    from jobs.crack_sweep.pipeline import photo_rows
    from tests.test_sweep_windowed_reads import _photo

    photos = [(f"p{i}", str(_photo(tmp_path / f"p{i}.png", 100 + 20 * i, 90, seed=i)))
              for i in range(5)]
    kwargs = {"tile": 64, "overlap": 8}
    reader = PhotoReader(photos, kwargs, threads=3, depth=2)  # a queue shorter than a photo
    try:
        got = sorted((r["scene"], r["tile"]) for b in grouped_batches(reader.rows(), 3)
                     for r in [{"scene": s, "tile": t} for s, t in zip(b["scene"], b["tile"])])
    finally:
        reader.close()
    want = sorted((r["scene"], r["tile"]) for sid, uri in photos
                  for r in photo_rows({"scene": [sid], "input": [uri]}, **kwargs))
    assert got == want
    assert read_threads(SweepConfig().pipeline) == 2  # read_cpus 1.0 / read_task_cpus 0.5


def test_engine_is_a_config_choice():
    assert SweepConfig().pipeline.engine == "ray"
    assert load_config(SweepConfig, None, ["pipeline.engine=local"]).pipeline.engine == "local"
    with pytest.raises(ConfigError, match="pipeline.engine"):
        load_config(SweepConfig, None, ["pipeline.engine=dask"])


@pytest.mark.ray
@pytest.mark.slow
def test_local_and_ray_engines_write_the_same_bytes(tmp_path):
    """The same 3 photos (and a broken one) through both engines: masks, thumbnails, features,
    contact sheet byte for byte; records and report equal but for run id and timings."""
    import pandas as pd
    from PIL import Image

    from tests.processes import run_in_session
    from tests.test_segment import job_env, make_bundle

    bundle = make_bundle(str(tmp_path / "bundle"))
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name, (w, h) in (("wide", (300, 180)), ("tall", (150, 260)), ("tiny", (90, 70))):
        Image.fromarray(rng.normal(140, 25, (h, w, 3)).clip(0, 255).astype(np.uint8)).save(
            folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    def sweep(engine: str) -> tuple[Path, str]:
        out = tmp_path / engine
        cmd = [sys.executable, str(REPO / "jobs" / "sweep.py"), "--input", str(folder),
               "--output", str(out), "--model", bundle, "--set", f"pipeline.engine={engine}",
               "--set", "ray.num_cpus=2", "--set", "predict.batch_size=4", "--set",
               "predict.torch_threads=1", "--set", "report.sort_by=severity"]
        rc, text = run_in_session(cmd, job_env(SimpleNamespace(env=dict)), REPO)
        assert rc == 1, text[-4000:]  # the broken JPEG
        assert json.loads(text.strip().splitlines()[-1])["segmented"] == 3
        return out, text

    local, text = sweep("local")
    assert "local engine:" in text and "Started a local Ray" not in text
    ray_out, _ = sweep("ray")
    files = sorted(p.relative_to(local) for p in local.rglob("*")
                   if p.is_file() and p.parts[-2] in ("masks", "thumbs", "features"))
    assert len(files) == 9
    for rel in [*files, Path("cracks.parquet"), Path("contact_sheet.png")]:
        assert (local / rel).read_bytes() == (ray_out / rel).read_bytes(), rel
    timing = {"run_id", "seconds", "read_s", "predict_s", "finalize_s"}
    for rec_path in (local / "records").glob("*.json"):
        a, b = (json.loads(p.read_text()) for p in (rec_path, ray_out / "records" / rec_path.name))
        assert {k: v for k, v in a.items() if k not in timing} == \
            {k: v for k, v in b.items() if k not in timing}, rec_path.name
    a, b = (pd.read_csv(o / "report.csv").drop(columns=["seconds", "run_id"])
            for o in (local, ray_out))
    pd.testing.assert_frame_equal(a, b)
    assert list(a["severity"].dropna()) == sorted(a["severity"].dropna(), reverse=True)
