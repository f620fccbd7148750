"""The sweep's crack sizes in mm and width classes (jobs/crack_sweep/measure.py, ``measure:``)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from jobs.crack_sweep.config import SweepConfig
from jobs.crack_sweep.measure import (MeasureConfig, PixelSizes, physical_measurements,
                                      read_pixel_size_csv, remeasure_records, width_class)
from jobs.crack_sweep.pipeline import crack_measurements
from jobs.runtime.config import ConfigError, load_config
from tests.test_ingest_centerlines import crack


def measured(mask: np.ndarray, mm: float | None, cfg: MeasureConfig | None = None) -> dict:
    """What finalize_photo puts in a record: pixel metrics plus the mm columns."""
    metrics, lines = crack_measurements(mask.astype(bool))
    cfg = cfg or MeasureConfig(pixel_size_mm=mm)
    return {**metrics, **physical_measurements(
        metrics, [ln.line().length for ln in lines], [ln.width_max for ln in lines], mm,
        "global", cfg)}


@pytest.mark.parametrize("width_px,angle", [(3, 0), (5, 0), (7, 0), (5, 30)])
def test_known_crack_comes_back_in_mm(width_px, angle):
    mm = 0.2
    rec = measured(crack(300, 500, 40, 60, 400, width_px, angle), mm)
    assert rec["max_width_mm"] == pytest.approx(width_px * mm, abs=mm)  # +-1 px
    assert rec["mean_width_mm"] == pytest.approx(width_px * mm, abs=mm)
    # the centre-line stops about half a width short of each end (thinning): +-1 px beyond that
    assert abs(rec["skeleton_length_mm"] - 400 * mm) <= (width_px + 1) * mm
    assert rec["skeleton_length_mm"] == pytest.approx(rec["skeleton_length_px"] * mm, abs=0.5 * mm)
    assert rec["pixel_size_mm"] == mm and rec["max_width_mm"] == pytest.approx(rec["max_width_px"] * mm)


def test_width_class_thresholds():
    t, names = [0.3, 1.0], ["hairline", "fine", "wide"]
    assert [width_class(w, t, names) for w in (0.0, 0.29, 0.3, 0.999, 1.0, 7.0)] == [
        "hairline", "hairline", "fine", "fine", "wide", "wide"]
    assert width_class(5.0, [], ["any"]) == "any"


def test_each_line_gets_its_max_widths_class():
    m = (crack(200, 500, 20, 30, 300, 1, 0) | crack(200, 500, 20, 90, 200, 5, 0)
         | crack(200, 500, 20, 150, 100, 13, 0))
    rec = measured(m, 0.1)  # widths 0.1, 0.5, 1.3 mm
    assert (rec["cracks_hairline"], rec["cracks_fine"], rec["cracks_wide"]) == (1, 1, 1)
    assert rec["length_mm_hairline"] == pytest.approx(30.0, abs=0.2)
    assert rec["length_mm_fine"] == pytest.approx(20.0, abs=0.6)
    assert rec["length_mm_wide"] == pytest.approx(10.0, abs=1.4)
    assert rec["width_class"] == "wide"  # the image: its widest line's class
    cfg = MeasureConfig(pixel_size_mm=0.1, width_classes_mm=[2.0], class_names=["narrow", "open"])
    other = measured(m, 0.1, cfg)
    assert (other["cracks_narrow"], other["cracks_open"], other["width_class"]) == (3, 0, "narrow")


def test_no_pixel_size_leaves_the_mm_columns_empty():
    rec = measured(crack(100, 200, 10, 50, 100, 3, 0), None)
    assert rec["pixel_size_mm"] is None and rec["skeleton_length_mm"] is None
    assert rec["cracks_fine"] is None and rec["width_class"] is None
    assert rec["skeleton_length_px"] > 90  # pixels as before
    empty = measured(np.zeros((20, 20), np.uint8), 0.1)
    assert empty["cracks_wide"] == 0 and empty["width_class"] is None


def test_csv_lookup_and_fallback_with_a_warning(tmp_path, caplog):
    csv = tmp_path / "sizes.csv"
    csv.write_text("image,pixel_size_mm,note\nbridge_01,0.05,close\nwall.jpg,0.4,\n"
                   "s3://b/x/far.png,1.5,\n")
    sizes = PixelSizes(MeasureConfig(pixel_size_csv=str(csv), pixel_size_mm=0.2))
    assert sizes.lookup("bridge_01", "/p/bridge_01.jpg") == (0.05, "csv")  # by id
    assert sizes.lookup("wall", "/p/wall.jpg") == (0.4, "csv")  # by file name
    assert sizes.lookup("far", "s3://b/x/far.png") == (1.5, "csv")  # by URI
    with caplog.at_level(logging.WARNING, logger="samsp.sweep"):
        assert sizes.lookup("other", "/p/other.jpg") == (0.2, "global")
        assert sizes.lookup("other", "/p/other.jpg") == (0.2, "global")
    warned = [r.getMessage() for r in caplog.records if "not in measure.pixel_size_csv" in r.getMessage()]
    assert len(warned) == 1 and "other" in warned[0] and "0.2" in warned[0]  # once per photo
    no_default = PixelSizes(MeasureConfig(pixel_size_csv=str(csv)))
    assert no_default.lookup("other", "/p/other.jpg") == (None, "none")
    assert PixelSizes(MeasureConfig()).lookup("a", "a.jpg") == (None, "none")


@pytest.mark.parametrize("text,match", [
    ("name,size\na,0.1\n", "needs a header with columns image, pixel_size_mm"),
    ("image,pixel_size_mm\na,zero\n", "line 2: pixel_size_mm 'zero' is not a number"),
    ("image,pixel_size_mm\na,0.1\nb,-1\n", "line 3: pixel_size_mm must be > 0"),
    ("image,pixel_size_mm\na,0.1\na,0.2\n", "a listed twice"),
    ("image,pixel_size_mm\n,0.1\n", "line 2: empty image"),
    ("image,pixel_size_mm\n", "no rows"),
    ("", "needs a header"),
])
def test_malformed_csv_is_a_config_error(tmp_path, text, match):
    csv = tmp_path / "sizes.csv"
    csv.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        read_pixel_size_csv(str(csv))
    assert "measure.pixel_size_csv" in str(err.value) and str(csv) in str(err.value)
    assert read_pixel_size_csv  # a missing file too:
    with pytest.raises(ConfigError, match="cannot be read"):
        read_pixel_size_csv(str(tmp_path / "missing.csv"))


def test_malformed_csv_stops_the_sweep_before_any_work(tmp_path, caplog):
    from jobs import sweep

    csv = tmp_path / "sizes.csv"
    csv.write_text("image;mm\na;0.1\n")
    with caplog.at_level(logging.ERROR, logger="samsp.sweep"):
        rc = sweep.main(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--model",
                         str(tmp_path / "no-model"), "--set", f"measure.pixel_size_csv={csv}"])
    assert rc == sweep.EXIT_USAGE
    assert any("measure.pixel_size_csv" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out").exists()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="measure.class_names"):
        load_config(SweepConfig, None, ["measure.width_classes_mm=[0.2]"])
    with pytest.raises(ConfigError, match="measure.width_classes_mm"):
        load_config(SweepConfig, None, ["measure.width_classes_mm=[1.0, 0.3]"])
    with pytest.raises(ConfigError, match="measure.pixel_size_mm"):
        load_config(SweepConfig, None, ["measure.pixel_size_mm=0"])
    with pytest.raises(ConfigError, match="measure.class_names"):
        load_config(SweepConfig, None, ["measure.class_names=[a, a, b]"])
    cfg = load_config(SweepConfig, None, ["measure.pixel_size_mm=0.1"])
    assert cfg.measure.width_classes_mm == [0.3, 1.0]
    assert cfg.measure.class_names == ["hairline", "fine", "wide"]


def test_report_shows_mm_and_each_findings_class(tmp_path):
    import pandas as pd

    from jobs.crack_sweep.features import write_photo_features
    from jobs.crack_sweep.outputs import record_json
    from jobs.crack_sweep.report import write_report

    names = ["hairline", "fine", "wide"]
    m = crack(200, 500, 20, 30, 300, 1, 0) | crack(200, 500, 20, 90, 200, 5, 0)
    metrics, lines = crack_measurements(m.astype(bool))
    write_photo_features(str(tmp_path), "a", lines)
    cfg = MeasureConfig(pixel_size_mm=0.1)
    rec = {"id": "a", "input": "a.jpg", "status": "ok", "mask": "masks/a.png",
           "thumb": "thumbs/a.jpg", **measured(m, 0.1)}
    plain = {"id": "b", "input": "b.jpg", "status": "ok", "mask": "m", "thumb": "t",
             **measured(m[:100], None)}
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "a.json").write_bytes(record_json(rec))
    write_report(str(tmp_path), [rec, plain], 5, {}, class_names=names)
    table = pd.read_csv(tmp_path / "report.csv")
    assert {"skeleton_length_px", "skeleton_length_mm", "max_width_mm", "width_class",
            "cracks_fine", "length_mm_wide"} <= set(table.columns)
    row = table.set_index("id").loc["a"]
    assert row["width_class"] == "fine" and row["cracks_hairline"] == 1 and row["cracks_fine"] == 1
    assert pd.read_parquet(tmp_path / "report.parquet")["max_width_mm"].iloc[0] == pytest.approx(0.5)
    page = (tmp_path / "report.html").read_text()
    assert "<b>fine</b>" in page and "hairline 1, fine 1, wide 0" in page and "max width mm" in page

    import geopandas as gpd

    from jobs.crack_sweep.features import write_sweep_features

    assert write_sweep_features(str(tmp_path), [rec, plain], cfg) == 2  # b has no features file
    lines = gpd.read_parquet(tmp_path / "cracks.parquet").sort_values("max_width")
    assert list(lines["width_class"]) == ["hairline", "fine"]
    assert list(lines["max_width_mm"]) == pytest.approx(list(lines["max_width"] * 0.1))
    assert list(lines["length_mm"]) == pytest.approx(list(lines["length"] * 0.1))

    # a rerun with another pixel size measures the old record again, from its features file
    again = remeasure_records(str(tmp_path), {"a": dict(rec)},
                              PixelSizes(MeasureConfig(pixel_size_mm=0.3)), cfg)
    assert again["a"]["pixel_size_mm"] == 0.3
    assert again["a"]["max_width_mm"] == pytest.approx(1.5) and again["a"]["width_class"] == "wide"
    assert again["a"]["cracks_wide"] == 1 and again["a"]["cracks_fine"] == 1  # 1 px = 0.3 mm
    assert again["a"]["cracks_hairline"] == 0
    same = remeasure_records(str(tmp_path), {"a": dict(rec)}, PixelSizes(cfg), cfg)
    assert same["a"] == rec  # measured with these settings already: untouched


def test_sweep_yaml_states_the_defaults():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    assert load_config(SweepConfig, repo / "configs" / "sweep.yaml") == SweepConfig()
