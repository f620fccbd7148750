"""jobs/sweep.py: crack measurements, report ranking, and one end-to-end sweep on a local Ray."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jobs.crack_sweep.pipeline import boundless_crop, crack_metrics, zhang_suen_thinning
from jobs.crack_sweep.report import downsample_any, ranked_table
from tests.conftest import png_bomb

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- measurements

@pytest.mark.parametrize("width", [1, 3, 5, 7])
def test_straight_crack_width_and_length(width):
    m = np.zeros((40, 120), bool)
    m[20 - width // 2:20 - width // 2 + width, 10:110] = True
    s = crack_metrics(m)
    assert s["crack_px"] == 100 * width and s["cracks"] == 1
    assert s["max_width_px"] == pytest.approx(width)
    assert 100 - width - 2 <= s["skeleton_length_px"] <= 100  # thinning shortens the ends a bit
    assert s["mean_width_px"] == pytest.approx(width, rel=0.1)


def test_diagonal_crack_and_components():
    m = np.zeros((100, 100), bool)
    idx = np.arange(10, 90)
    m[idx, idx] = True               # 1-px diagonal, 8-connected
    m[5:8, 60:90] = True             # a second, separate crack 3 px wide
    s = crack_metrics(m)
    assert s["cracks"] == 2
    assert s["max_width_px"] == pytest.approx(3)
    skel = zhang_suen_thinning(m)
    assert skel[idx, idx].all()      # a 1-px line is its own skeleton
    assert crack_metrics(np.zeros((5, 5), bool)) == {
        "crack_px": 0, "crack_fraction": 0.0, "skeleton_length_px": 0, "max_width_px": 0.0,
        "max_width_raw_px": 0.0, "mean_width_px": 0.0, "cracks": 0, "networks": 0,
        "network_gap_px": 6, "valid_px": 25, "width_method": "centerline-p95"}
    valid = np.ones((100, 100), bool)
    valid[:50] = False
    assert crack_metrics(m, valid)["crack_fraction"] == pytest.approx(m.sum() / 5000)


def test_thin_cracks_survive_thumbnails_and_crops():
    m = np.zeros((300, 400), bool)
    m[150, :] = True                 # 1 px line, 8x downsampling must keep it
    small = downsample_any(m, 38, 50)
    assert small.shape == (38, 50) and small.any(axis=0).all() and small.sum() == 50
    img = np.arange(2 * 10 * 12, dtype=np.uint8).reshape(2, 10, 12)
    from rasterio.windows import Window

    crop, ok = boundless_crop(img, np.ones((10, 12), bool), Window(8, -2, 6, 6))
    assert crop.shape == (2, 6, 6) and ok[2:, :4].all() and not ok[:2].any() and not ok[:, 4:].any()
    np.testing.assert_array_equal(crop[:, 2:, :4], img[:, 0:4, 8:12])


def test_ranking_puts_failures_last():
    recs = [
        {"id": "a", "status": "ok", "crack_px": 10, "skeleton_length_px": 5, "max_width_px": 3.0},
        {"id": "b", "status": "ok", "crack_px": 50, "skeleton_length_px": 9, "max_width_px": 1.0},
        {"id": "c", "status": "failed", "error": "read CorruptSceneError: x"},
        {"id": "d", "status": "ok", "crack_px": 10, "skeleton_length_px": 7, "max_width_px": 1.0},
    ]
    t = ranked_table(recs)
    assert list(t["id"]) == ["b", "d", "a", "c"]
    assert list(t["rank"][:3]) == [1, 2, 3] and t["rank"].isna().iloc[3]


# ----------------------------------------------------------------------------- end to end

def _photos(folder: Path) -> dict[str, Path]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1)
    folder.mkdir()
    out = {}
    for name, (w, h), ext in (("wide", (300, 180), "jpg"), ("tall", (150, 260), "png"),
                              ("tiny", (90, 70), "jpg")):
        arr = rng.normal(140, 25, (h, w, 3)).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        ImageDraw.Draw(im).line([(5, 5), (w - 5, h - 8)], fill=(15, 15, 15), width=3)
        out[name] = folder / f"{name}.{ext}"
        im.save(out[name], quality=92)
    out["gray"] = folder / "gray.png"
    Image.fromarray(rng.integers(0, 255, (120, 140), dtype=np.uint8)).save(out["gray"])
    out["broken"] = folder / "broken.jpg"
    out["broken"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # a decompression bomb: a tiny PNG whose header declares 60000 x 60000 pixels
    out["bomb"] = Path(png_bomb(folder / "bomb.png"))
    (folder / "notes.txt").write_text("not a photo")
    return out


def _reference_mask(uri: str, bundle: str, tile: int = 128, overlap: int = 16) -> np.ndarray:
    import torch
    from rasterio.windows import Window

    from ingest import TileGrid, open_scene
    from samsp.predict import TilePredictor

    scene = open_scene(uri, check_empty=False)
    img, valid = scene.read(Window(0, 0, scene.width, scene.height))
    tp = TilePredictor(bundle)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the job's actor (predict.torch_threads=1)
    mask = np.zeros((scene.height, scene.width), np.uint8)
    for t in TileGrid(scene.height, scene.width, tile, overlap):
        crop, ok = boundless_crop(img, valid, t.read_window)
        p = tp(np.where(ok, crop, 0)[None], ok[None])["prob"][0]
        rs, cs = t.core_slices
        r0, c0 = int(t.core_window.row_off), int(t.core_window.col_off)
        core = ((p > tp.threshold) & ok)[rs, cs]
        mask[r0:r0 + core.shape[0], c0:c0 + core.shape[1]] = np.where(core, 255, 0)
    torch.set_num_threads(threads)
    return mask


def test_photos_are_read_and_thumbnailed_as_viewers_show_them(tmp_path):
    import io

    from PIL import Image

    from ingest import Radiometry, open_scene
    from jobs.crack_sweep.pipeline import read_photos
    from jobs.crack_sweep.report import overlay_thumb

    stored = np.zeros((40, 100, 3), np.uint8)
    stored[:4, :10] = 255  # a bright patch top-left of the stored grid
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 40 wide, 100 tall
    path = tmp_path / "portrait.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    out = read_photos({"scene": ["p"], "input": [str(path)]}, tile=64, overlap=8)
    spec = json.loads(out["spec"][0])
    assert (spec["height"], spec["width"], spec["orientation"]) == (100, 40, 6)
    assert not any(out["error"])
    first = out["image"][0]  # the top-left tile of the displayed photo
    # the stored top-left patch is now top-right: rows 0-9, columns 36-39
    assert first[0, :10, 36:40].mean() > 200 and first[0, 20:, :30].mean() < 30
    mask = np.zeros((100, 40), np.uint8)
    thumb = overlay_thumb(open_scene(str(path), check_empty=False), Radiometry.identity(3),
                          mask, 50, orientation=6)
    assert Image.open(io.BytesIO(thumb)).size == (20, 50)  # (w, h) as displayed


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_end_to_end_and_rerun(tmp_path):
    import pandas as pd
    from PIL import Image

    from tests.processes import run_in_session
    from tests.test_segment import job_env, make_bundle

    bundle = make_bundle(str(tmp_path / "bundle"))
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "sweep"
    env = job_env(SimpleNamespace(env=dict))  # no S3 here: local photos, local output

    def sweep(inputs):
        cmd = [sys.executable, str(REPO / "jobs" / "sweep.py"), "--input", *inputs, "--output",
               str(out), "--model", bundle, "--set", "ray.num_cpus=2", "--set",
               "predict.batch_size=4", "--set", "predict.torch_threads=1", "--set", "report.top_n=3",
               "--set", "measure.pixel_size_mm=0.5"]
        return run_in_session(cmd, env, REPO)

    rc, text = sweep([str(tmp_path / "photos")])
    assert rc == 1, text[-4000:]  # the broken JPEG and the bomb fail (the others finish)
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["segmented"] == 4 and summary["failed"] == 2 and summary["skipped"] == 0
    # one line per finished photo, counted; none of Ray Data's progress blocks (issue 33)
    done = re.findall(r"photo (\w+): done \((\d)/6\)", text)
    assert sorted(p for p, _ in done) == ["gray", "tall", "tiny", "wide"], text[-3000:]
    assert sorted(int(n) for _, n in done) == [1, 2, 3, 4]
    assert "Running Dataset" not in text and "Progress bars disabled" not in text

    table = pd.read_csv(out / "report.csv")
    parquet = pd.read_parquet(out / "report.parquet")
    assert list(parquet["id"]) == list(table["id"])
    ok = table[table["status"] == "ok"]
    assert set(ok["id"]) == {"wide", "tall", "tiny", "gray"}
    assert list(ok["crack_px"]) == sorted(ok["crack_px"], reverse=True)
    assert list(ok["rank"]) == [1, 2, 3, 4]
    bad = table[table["status"] == "failed"].set_index("id")["error"]
    assert set(bad.index) == {"broken", "bomb"} and "CorruptSceneError" in bad["broken"]
    assert "SceneTooLargeError" in bad["bomb"] and "60000x60000" in bad["bomb"]

    for rec in ok.to_dict("records"):
        mask = np.asarray(Image.open(out / rec["mask"]))
        w, h = Image.open(photos[rec["id"]]).size
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask, _reference_mask(str(photos[rec["id"]]), bundle))
        m = crack_metrics(mask == 255)
        for key in ("crack_px", "skeleton_length_px", "cracks"):
            assert rec[key] == m[key], key
        assert rec["max_width_px"] == pytest.approx(m["max_width_px"])
        assert rec["max_width_mm"] == pytest.approx(0.5 * rec["max_width_px"], abs=1e-3)
        assert rec["pixel_size_mm"] == 0.5 and (rec["width_class"] in ("hairline", "fine", "wide")
                                                or rec["crack_px"] == 0)
        thumb = Image.open(out / rec["thumb"])
        assert max(thumb.size) == min(256, max(w, h))

    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] == 3 * 256  # top_n=3 thumbnails in one row
    page = (out / "report.html").read_text()
    assert "thumbs/" in page and "broken" in page

    # rerun over the good photos: nothing recomputed (Ray not even started), the report still
    # covers every image under the output, including the earlier failure
    rc, text = sweep([str(p) for k, p in photos.items() if k not in ("broken", "bomb")])
    assert rc == 0, text[-3000:]
    assert json.loads(text.strip().splitlines()[-1])["skipped"] == 4
    assert "Started a local Ray" not in text
    again = pd.read_csv(out / "report.csv")
    assert list(again["id"]) == list(table["id"]) and list(again["crack_px"].fillna(-1)) == \
        list(table["crack_px"].fillna(-1))
