"""The crack sweep reads photos tile by tile (issue 32, item 2).

``read_photo_batches`` reads each tile's window of the stored grid (EXIF orientation mapped back by
``ingest.orientation.stored_window``) instead of decoding the photo whole, and yields small output
batches; the driver (``Photo.add_tile``) stitches tiles that arrive in any order and batches and
fails a photo whose read broke mid-way. The old whole-image reader is kept here as the reference:
the new one must give exactly its tiles.
"""
from __future__ import annotations

import json
import random
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rasterio.windows import Window

from ingest import Radiometry, TileGrid, open_scene
from ingest.orientation import ORIENTATIONS, orient, oriented_shape, stored_window
from ingest.tiling import Tile
from jobs.crack_sweep import pipeline
from jobs.crack_sweep.pipeline import boundless_crop, read_photo_batches, read_photos
from tests.rounding import assert_masks_close

REPO = Path(__file__).resolve().parents[1]
ALL_ORIENTATIONS = sorted(ORIENTATIONS)


# ----------------------------------------------------------------------------- helpers

def _boundless(arr: np.ndarray, window: Window, fill=-1) -> np.ndarray:
    """``arr[H, W]`` cut to ``window``, ``fill`` outside: the plain definition, pixel by pixel."""
    r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    out = np.full((h, w), fill, arr.dtype)
    for i in range(h):
        for j in range(w):
            if 0 <= r0 + i < arr.shape[0] and 0 <= c0 + j < arr.shape[1]:
                out[i, j] = arr[r0 + i, c0 + j]
    return out


def _reference_tiles(uri: str, tile: int, overlap: int, orientation: int) -> dict:
    """The pre-issue-32 reader: decode whole, radiometry, orient, crop -> {tile index: (image,
    valid, spec)}."""
    scene = open_scene(uri, check_empty=False)
    data, valid = scene.read(Window(0, 0, scene.width, scene.height))
    rad = Radiometry.identity(scene.count) if scene.dtype == np.uint8 else Radiometry.fit(scene)
    img, valid = orient(rad.apply(data, valid), orientation), orient(valid, orientation)
    grid = TileGrid(valid.shape[0], valid.shape[1], tile, overlap)
    out = {}
    for t in grid:
        crop, ok = boundless_crop(img, valid, t.read_window)
        out[t.index] = (crop, ok, {"height": valid.shape[0], "width": valid.shape[1],
                                   "orientation": orientation, "tiles": len(grid),
                                   "radiometry": rad.to_dict()})
    return out


def _tiles_by_index(batches) -> dict:
    out = {}
    for b in batches:
        for k in range(len(b["scene"])):
            assert b["error"][k] == "", b["error"][k]
            t = Tile.from_dict(json.loads(b["tile"][k]))
            assert t.index not in out
            out[t.index] = (b["image"][k], b["valid"][k], json.loads(b["spec"][k]))
    return out


def _assert_same_tiles(new: dict, ref: dict) -> None:
    assert set(new) == set(ref)
    for idx, (img, ok, spec) in ref.items():
        np.testing.assert_array_equal(new[idx][0], img, err_msg=str(idx))
        np.testing.assert_array_equal(new[idx][1], ok, err_msg=str(idx))
        assert {k: new[idx][2][k] for k in spec} == spec


def _photo(path: Path, height: int, width: int, *, orientation: int = 1, alpha: bool = False,
           seed: int = 0) -> Path:
    """A textured photo (JPEG with an EXIF orientation, or PNG, RGBA when ``alpha``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = (yy * 7 + xx * 3) % 256
    arr = np.stack([base, (base + 85) % 256, (xx * 5) % 256], -1)
    arr = (arr + rng.integers(0, 30, arr.shape)).clip(0, 255).astype(np.uint8)
    if alpha:  # a transparent corner: invalid pixels inside the photo, not only padding
        a = np.full((height, width, 1), 255, np.uint8)
        a[: height // 3, : width // 4] = 0
        arr = np.concatenate([arr, a], -1)
    im = Image.fromarray(arr)
    if path.suffix == ".jpg":
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(path, exif=exif.tobytes(), quality=90)
    else:
        im.save(path)
    return path


class ReadSpy:
    """Wraps ``pipeline.open_scene``: records every window the reader asks its scenes for."""

    def __init__(self, monkeypatch):
        self.windows: list[Window] = []
        self.overviews: list[tuple[int, int]] = []
        real = pipeline.open_scene

        def spying_open(*args, **kwargs):
            scene = real(*args, **kwargs)  # open_scene's own 1-px readability check is not ours
            read, overview = scene.read, scene.read_overview

            def spy_read(window):
                self.windows.append(window)
                return read(window)

            def spy_overview(out_h, out_w):
                self.overviews.append((out_h, out_w))
                return overview(out_h, out_w)

            scene.read, scene.read_overview = spy_read, spy_overview
            return scene

        monkeypatch.setattr(pipeline, "open_scene", spying_open)


# ----------------------------------------------------------------------------- (a) window mapping

@pytest.mark.parametrize("orientation", [0, *ALL_ORIENTATIONS, 9])
def test_stored_window_is_the_inverse_of_orient_everywhere(orientation):
    """Every window (inside, on every edge, reaching past every border) of a 7 x 11 grid:
    ``orient(stored[stored_window(w)]) == orient(stored)[w]``, padding included."""
    H, W = 7, 11
    stored = np.arange(H * W).reshape(H, W)
    shown = orient(stored, orientation)
    assert shown.shape == oriented_shape(H, W, orientation)
    Ho, Wo = shown.shape
    for r0 in range(-3, Ho + 1):
        for c0 in range(-3, Wo + 1):
            for h, w in ((1, 1), (2, 5), (4, 3), (Ho + 4, Wo + 4)):
                win = Window(c0, r0, w, h)
                sw = stored_window(win, orientation, H, W)
                assert (int(sw.height), int(sw.width)) == ((w, h) if orientation in (5, 6, 7, 8)
                                                           else (h, w))
                np.testing.assert_array_equal(orient(_boundless(stored, sw), orientation),
                                              _boundless(shown, win),
                                              err_msg=f"{orientation} {win}")


@pytest.mark.parametrize("orientation,expected", [
    # viewer window rows 0-2, cols 0-3 of a stored 10 x 20 grid (viewer 20 x 10 when transposed)
    (1, Window(0, 0, 4, 3)), (2, Window(16, 0, 4, 3)), (3, Window(16, 7, 4, 3)),
    (4, Window(0, 7, 4, 3)), (5, Window(0, 0, 3, 4)), (6, Window(0, 6, 3, 4)),
    (7, Window(17, 6, 3, 4)), (8, Window(17, 0, 3, 4)),
])
def test_stored_window_of_the_top_left_corner(orientation, expected):
    """The viewer's top-left corner is stored at the corner its EXIF turn came from."""
    assert stored_window(Window(0, 0, 4, 3), orientation, 10, 20) == expected


@pytest.mark.parametrize("orientation", ALL_ORIENTATIONS)
def test_tiles_overhanging_right_and_bottom_map_to_padded_stored_windows(orientation):
    """A photo smaller than a tile: its single tile reaches past the viewer's right and bottom
    borders; the stored window reaches past the matching stored borders by the same amounts."""
    H, W, tile = 30, 50, 64
    Ho, Wo = oriented_shape(H, W, orientation)
    (t,) = list(TileGrid(Ho, Wo, tile, 8))
    assert (int(t.read_window.height), int(t.read_window.width)) == (tile, tile)
    sw = stored_window(t.read_window, orientation, H, W)
    r0, c0 = int(sw.row_off), int(sw.col_off)
    assert (int(sw.height), int(sw.width)) == (tile, tile)
    # the photo is inside the stored window; what sticks out is the tile's overhang
    assert r0 <= 0 and c0 <= 0 and r0 + tile >= H and c0 + tile >= W
    stored = np.arange(H * W).reshape(H, W)
    crop = orient(_boundless(stored, sw), orientation)
    np.testing.assert_array_equal(crop[:Ho, :Wo], orient(stored, orientation))
    assert (crop[Ho:] == -1).all() and (crop[:, Wo:] == -1).all()


@pytest.mark.parametrize("orientation", ALL_ORIENTATIONS)
def test_read_order_walks_the_stored_grid_top_to_bottom(orientation):
    """Whatever the orientation, the reader visits stored rows in order (a JPEG/PNG decoder never
    restarts) and still covers every tile of the viewer's grid once."""
    H, W = 300, 500
    Ho, Wo = oriented_shape(H, W, orientation)
    grid = TileGrid(Ho, Wo, 128, 16)
    pairs = pipeline.tiles_in_read_order(grid, orientation, H, W)
    assert sorted(t.index for t, _ in pairs) == sorted(t.index for t in grid)
    starts = [(int(w.row_off), int(w.col_off)) for _, w in pairs]
    assert starts == sorted(starts)


# ----------------------------------------------------------------------------- (b) same tiles

@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("size", [(150, 97), (45, 200)])  # not tile multiples; one < a tile
def test_jpeg_with_exif_orientation_gives_the_whole_image_tiles(tmp_path, orientation, size):
    uri = str(_photo(tmp_path / "p.jpg", *size, orientation=orientation))
    batches = list(read_photo_batches({"scene": ["p"], "input": [uri]}, tile=64, overlap=8,
                                      batch_tiles=3))
    assert all(len(b["scene"]) <= 3 for b in batches)
    new = _tiles_by_index(batches)
    assert next(iter(new.values()))[2]["orientation"] == orientation
    _assert_same_tiles(new, _reference_tiles(uri, 64, 8, orientation))


@pytest.mark.parametrize("orientation", ALL_ORIENTATIONS)
def test_png_with_alpha_in_every_orientation_gives_the_whole_image_tiles(tmp_path, monkeypatch,
                                                                          orientation):
    """Lossless RGBA (validity from alpha, plus padding) with each of the 8 orientations (GDAL
    reads no EXIF from PNG: the orientation is forced where the reader looks it up)."""
    uri = str(_photo(tmp_path / "p.png", 131, 77, alpha=True))
    monkeypatch.setattr(pipeline, "read_orientation", lambda _uri: orientation)
    new = _tiles_by_index(read_photo_batches({"scene": ["p"], "input": [uri]}, tile=64,
                                             overlap=12, batch_tiles=4))
    _assert_same_tiles(new, _reference_tiles(uri, 64, 12, orientation))


def test_16bit_tiff_stretch_is_the_same_per_tile(tmp_path):
    """Non-uint8 photos: the per-photo stretch (fitted on the decimated sample) applied per tile
    equals it applied to the whole photo."""
    import rasterio

    rng = np.random.default_rng(3)
    arr = rng.integers(200, 40000, (3, 90, 140)).astype(np.uint16)
    path = tmp_path / "p16.tif"
    with rasterio.open(path, "w", driver="GTiff", height=90, width=140, count=3,
                       dtype="uint16") as ds:
        ds.write(arr)
    new = _tiles_by_index(read_photo_batches({"scene": ["p"], "input": [str(path)]}, tile=64,
                                             overlap=8))
    _assert_same_tiles(new, _reference_tiles(str(path), 64, 8, 1))
    assert next(iter(new.values()))[2]["radiometry"]["mode"] == "stretch"


def test_read_photos_keeps_every_tile_in_one_batch(tmp_path):
    """``read_photos`` (tests, small scripts) = all of ``read_photo_batches``'s rows."""
    uris = [str(_photo(tmp_path / "a.jpg", 150, 97, orientation=6)),
            str(_photo(tmp_path / "b.png", 40, 70)), str(tmp_path / "missing.jpg")]
    batch = {"scene": ["a", "b", "m"], "input": uris}
    whole = read_photos(batch, tile=64, overlap=8)
    parts = list(read_photo_batches(batch, tile=64, overlap=8, batch_tiles=2))
    assert [len(p["scene"]) for p in parts][:-1] == [2] * (len(parts) - 1)
    assert list(whole["scene"]) == [s for p in parts for s in p["scene"]]
    assert list(whole["tile"]) == [t for p in parts for t in p["tile"]]
    assert [bool(e) for e in whole["error"]] == [False] * (len(whole["scene"]) - 1) + [True]


# ----------------------------------------------------------------------------- (c) bounded reads

@pytest.mark.parametrize("orientation", [1, 6])
def test_a_3000x2000_photo_is_never_read_whole(tmp_path, monkeypatch, orientation):
    uri = str(_photo(tmp_path / "big.jpg", 2000, 3000, orientation=orientation))
    spy = ReadSpy(monkeypatch)
    tile, n = 256, 0
    for b in read_photo_batches({"scene": ["big"], "input": [uri]}, tile=tile, overlap=32,
                                batch_tiles=16):
        assert len(b["scene"]) <= 16 and not any(b["error"])
        n += len(b["scene"])
    Ho, Wo = oriented_shape(2000, 3000, orientation)
    assert n == len(TileGrid(Ho, Wo, tile, 32)) == len(spy.windows)
    assert all(int(w.height) <= tile and int(w.width) <= tile for w in spy.windows)
    assert sum(int(w.height) * int(w.width) for w in spy.windows) == n * tile * tile
    assert not spy.overviews  # uint8: no radiometry fit


def test_16bit_radiometry_fit_reads_decimated(tmp_path, monkeypatch):
    """A 3000 x 2000 16-bit photo: the stretch is fitted on a decimated read (the scene's
    overview read, <= 4.2 Mpx), every other read is one tile."""
    import rasterio

    path = tmp_path / "big16.tif"
    with rasterio.open(path, "w", driver="GTiff", height=2000, width=3000, count=1,
                       dtype="uint16", tiled=True) as ds:
        ds.write(np.arange(3000, dtype=np.uint16)[None, None, :].repeat(2000, 1))
    spy = ReadSpy(monkeypatch)
    rows = sum(len(b["scene"]) for b in read_photo_batches(
        {"scene": ["b"], "input": [str(path)]}, tile=512, overlap=64))
    assert rows == len(spy.windows) == len(TileGrid(2000, 3000, 512, 64))
    assert all(int(w.height) <= 512 and int(w.width) <= 512 for w in spy.windows)
    assert len(spy.overviews) == 1 and spy.overviews[0][0] * spy.overviews[0][1] <= 1 << 22


def _streaming_peak(uri: str) -> int:
    """Python-side peak bytes (numpy arrays included) while streaming a photo's batches."""
    batches = read_photo_batches({"scene": ["p"], "input": [uri]}, tile=128, overlap=16,
                                 batch_tiles=8)
    tracemalloc.start()
    try:
        for b in batches:
            del b
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_about_one_batch_of_tiles(tmp_path):
    """Streaming an RGB PNG in 128 px tiles, 8 a batch: the peak does not grow with the photo
    (4x the pixels, about the same peak) and stays far below the 18 MB a decoded 3000 x 2000
    photo takes (the old reader held it twice: ~56 MB)."""
    small = _streaming_peak(str(_photo(tmp_path / "small.png", 1000, 1500)))
    big = _streaming_peak(str(_photo(tmp_path / "big.png", 2000, 3000)))
    assert big < 3_000_000, big  # 8 tiles = 0.5 MB (+ a GDAL read's copy, the tile list)
    assert big < 1.5 * small, (small, big)


def test_a_photo_failing_mid_way_ends_with_one_error_row(tmp_path, monkeypatch):
    """Tiles read before the failure go out; then one error row says where it broke; the next
    photo is read as usual."""
    real = pipeline.read_tile
    calls = {"n": 0}

    def flaky(scene, rad, orientation, window):
        calls["n"] += 1
        if "bad" in scene.uri and calls["n"] == 4:
            raise OSError("disk went away")
        return real(scene, rad, orientation, window)

    monkeypatch.setattr(pipeline, "read_tile", flaky)
    uris = [str(_photo(tmp_path / "bad.png", 200, 200)), str(_photo(tmp_path / "ok.png", 60, 60))]
    rows = [r for b in read_photo_batches({"scene": ["bad", "ok"], "input": uris}, tile=64,
                                          overlap=8, batch_tiles=2)
            for r in zip(b["scene"], b["error"])]
    assert rows[:3] == [("bad", "")] * 3
    assert rows[3][0] == "bad" and "OSError: disk went away" in rows[3][1]
    assert "after 3 tile(s)" in rows[3][1]
    assert rows[4:] == [("ok", "")] * len(TileGrid(60, 60, 64, 8))


# ----------------------------------------------------------------------------- driver

def _model_rows(batches, threshold: int = 128) -> list[dict]:
    """What reaches the driver: a stand-in model (mask = band 0 > threshold) + keep_mask_cores,
    row by row."""
    rows = []
    for b in batches:
        masks = [((np.asarray(im)[0] > threshold) & ok).astype(np.uint8)
                 for im, ok in zip(b["image"], b["valid"])]
        mcol = np.empty(len(masks), dtype=object)
        mcol[:] = masks
        out = pipeline.keep_mask_cores({"scene": b["scene"], "spec": b["spec"], "tile": b["tile"],
                                        "error": b["error"], "mask": mcol,
                                        "stats": np.array(['{"disagreement": 0.0}'] * len(masks),
                                                          dtype=object)})
        rows += [{k: out[k][i] for k in out} for i in range(len(masks))]
    return rows


def test_driver_stitches_tiles_arriving_in_any_order_and_batch(tmp_path, monkeypatch):
    from jobs.crack_sweep.run import Photo

    monkeypatch.setattr(pipeline, "read_orientation", lambda _uri: 6)
    uris = {"a": str(_photo(tmp_path / "a.png", 230, 170)), "b": str(_photo(tmp_path / "b.png",
                                                                             90, 300, seed=1))}
    rows = _model_rows(read_photo_batches({"scene": list(uris), "input": list(uris.values())},
                                          tile=64, overlap=8, batch_tiles=5))
    random.Random(0).shuffle(rows)
    photos = {sid: Photo(sid, uri) for sid, uri in uris.items()}
    done = [sid for r in rows if photos[r["scene"]].add_tile(r) for sid in [r["scene"]]]
    assert sorted(done) == ["a", "b"]
    for sid, uri in uris.items():
        ph = photos[sid]
        assert ph.complete and not ph.failed and not ph.errors
        scene = open_scene(uri, check_empty=False)
        data, valid = scene.read(Window(0, 0, scene.width, scene.height))
        expected = orient(((data[0] > 128) & valid).astype(np.uint8), 6)
        np.testing.assert_array_equal(ph.mask, expected)


def _core_rows(grid: TileGrid, height: int, width: int) -> list[dict]:
    """Driver rows of an all-ones mask: one per tile of ``grid``."""
    spec = json.dumps({"input": "x", "height": height, "width": width, "tiles": len(grid)})
    rows = []
    for t in grid:
        rs, cs = t.core_slices
        rows.append({"scene": "x", "spec": spec, "tile": json.dumps(t.to_dict()), "error": "",
                     "stats": "{}", "core": np.ones((rs.stop - rs.start, cs.stop - cs.start),
                                                    np.uint8)})
    return rows


@pytest.mark.parametrize("error_first", [False, True])
def test_driver_fails_a_photo_whose_read_broke_mid_way(error_first):
    """All tiles but one of a photo and its read error (before them or after: rows arrive in any
    order): the photo fails once, is never complete, and later rows do not touch it."""
    from jobs.crack_sweep.run import Photo, failed_record

    good = _core_rows(TileGrid(100, 100, 64, 8), 100, 100)[:-1]
    bad = dict(good[0], spec=json.dumps({"input": "x", "height": 0, "width": 0, "tiles": 1}),
               error="read CorruptSceneError: truncated (after 3 tile(s))")
    rows = [bad, *good] if error_first else [*good, bad]
    ph = Photo("x", "x")
    ends = [ph.add_tile(r) for r in rows]
    assert ends.count(True) == 1 and ends[rows.index(bad)]
    assert ph.failed and not ph.complete and ph.mask is None
    rec = failed_record(ph, "run")
    assert rec["status"] == "failed" and "after 3 tile(s)" in rec["error"]
    assert rec["width"] == (None if error_first else 100)
    assert ph.add_tile(good[0]) is False and ph.mask is None


def test_driver_counts_a_duplicated_tile_once():
    """A tile row seen twice (a retried read task) is stitched and counted once; a complete photo
    ignores rows that come after."""
    from jobs.crack_sweep.run import Photo

    rows = _core_rows(TileGrid(50, 130, 64, 8), 50, 130)
    assert len(rows) == 3
    ph = Photo("x", "x")
    assert [ph.add_tile(r) for r in (rows[0], rows[0], rows[1], rows[2])] == [False] * 3 + [True]
    assert ph.complete and (ph.mask == 1).all()
    assert ph.add_tile(dict(rows[0], error="late")) is False and not ph.errors


# ----------------------------------------------------------------------------- (d) end to end

@pytest.mark.ray
@pytest.mark.slow
def test_sweep_streams_a_many_tile_photo_and_a_rotated_one(tmp_path):
    """jobs/sweep.py on a photo of more tiles than one read batch (READ_BATCH_TILES) and an EXIF
    rotated JPEG: both ok, masks in the viewer's frame and equal to whole-image inference."""
    import torch
    from PIL import Image

    from samsp.predict import TilePredictor
    from tests.processes import run_in_session
    from tests.test_segment import job_env, make_bundle

    bundle = make_bundle(str(tmp_path / "bundle"))
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = {"many": _photo(folder / "many.png", 470, 620),
              "turned": _photo(folder / "turned.jpg", 150, 260, orientation=8)}
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "jobs" / "sweep.py"), "--input", str(folder), "--output",
           str(out), "--model", bundle, "--set", "ray.num_cpus=2", "--set", "predict.batch_size=4",
           "--set", "predict.torch_threads=1"]
    rc, text = run_in_session(cmd, job_env(SimpleNamespace(env=dict)), REPO)
    assert rc == 1, text[-4000:]
    summary = json.loads(text.strip().splitlines()[-1])
    assert (summary["segmented"], summary["failed"]) == (2, 1), summary

    tp = TilePredictor(bundle)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for sid, path in photos.items():
            rec = json.loads((out / "records" / f"{sid}.json").read_text())
            assert rec["status"] == "ok", rec
            ref = _reference_tiles(str(path), 128, 16, rec["orientation"])
            if sid == "many":
                assert len(ref) > pipeline.READ_BATCH_TILES
            expected = np.zeros((rec["height"], rec["width"]), np.uint8)
            for idx, (crop, ok, _spec) in ref.items():
                t = TileGrid(rec["height"], rec["width"], 128, 16).tile_at(*idx)
                p = tp(np.where(ok, crop, 0)[None], ok[None])["prob"][0]
                core = ((p > tp.threshold) & ok)[t.core_slices]
                r0, c0 = int(t.core_window.row_off), int(t.core_window.col_off)
                expected[r0:r0 + core.shape[0], c0:c0 + core.shape[1]] = np.where(core, 255, 0)
            # the sweep batched the tiles, the reference runs one at a time: equal but for
            # pixels whose probability rounds across the threshold
            assert_masks_close(np.asarray(Image.open(out / rec["mask"])), expected)
    finally:
        torch.set_num_threads(threads)
    bad = json.loads((out / "records" / "broken.json").read_text())
    assert bad["status"] == "failed" and "CorruptSceneError" in bad["error"]
