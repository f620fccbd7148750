"""Photos smaller than the model window, ``small_images: fill`` (issue 31): such a photo is one
tile whose read window is the photo itself, and the model's frame upscales it until its longer
side fills the frame (SAM's resize-longest-side) -- in ``ingest.TileGrid``, the evaluation's
``SlidingWindow``, the crack sweep's reader, the segment job and ``samsp.segment_file``; the
bundle records the rule it was chosen with (``pad`` for older bundles)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ingest import TileGrid
from jobs.inference.sliding_window import SlidingWindow
from tests.conftest import save_random_bundle


# --------------------------------------------------------------------------- the grid rule

def test_a_small_scene_is_one_tile_of_itself_when_filled():
    pad = TileGrid(100, 50, 256, 32)
    fill = TileGrid(100, 50, 256, 32, small_images="fill")
    assert len(pad) == len(fill) == 1
    assert pad[0].to_dict()["read"] == [0, 0, 256, 256]  # col, row, width, height
    assert fill[0].to_dict()["read"] == [0, 0, 50, 100] == fill[0].to_dict()["core"]
    assert (fill.tile, fill.overlap, fill.core_size) == (100, 0, 100)  # the store's chunk
    assert fill != pad and "small_images='fill'" in repr(fill)


@pytest.mark.parametrize("shape", [(256, 100), (100, 256), (300, 80), (600, 700)])
def test_a_scene_with_a_side_as_long_as_the_tile_is_cut_as_before(shape):
    """Only a scene smaller than the tile on both axes is filled; others are tiled as with
    ``pad`` (their short side pads as before)."""
    a = TileGrid(*shape, 256, 32)
    b = TileGrid(*shape, 256, 32, small_images="fill")
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b] and a == b


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="small_images must be one of"):
        TileGrid(10, 10, 64, small_images="stretch")
    with pytest.raises(Exception, match="small_images must be one of"):
        SlidingWindow(lambda t, v: t, 64, small_images="stretch")


# --------------------------------------------------------------------------- the window

def _recording_window(small_images: str):
    seen = []

    def forward(tiles, valid):
        seen.append(tiles.shape)
        return np.full((2, *tiles.shape[:1], *tiles.shape[2:]), 0.7, np.float32)

    return SlidingWindow(forward, 256, 32, small_images=small_images), seen


def test_the_window_passes_a_small_photo_as_it_is_when_filled():
    window, seen = _recording_window("fill")
    out = window(np.zeros((3, 100, 50), np.uint8))
    assert seen == [(1, 3, 100, 50)] and out.shape == (2, 100, 50) and np.allclose(out, 0.7)
    window(np.zeros((3, 300, 80), np.uint8))  # one side over the tile: windows of the tile
    assert all(s[2:] == (256, 256) for s in seen[1:])
    window, seen = _recording_window("pad")
    window(np.zeros((3, 100, 50), np.uint8))
    assert seen == [(1, 3, 256, 256)]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from samsp import load_bundle

    return load_bundle(save_random_bundle(tmp_path_factory.mktemp("m") / "micro", "vit_micro"))


def test_a_filled_photo_is_what_sam_sees_of_it_alone(micro):
    """Filled, a 70 x 90 photo gets the model's prediction of that photo given alone (the frame
    resizes it to 100 x 128 and pads after normalising); padded, the prediction differs."""
    from jobs.inference.sliding_window import bundle_forward
    from samsp.predict import TilePredictor

    photo = np.random.default_rng(3).integers(0, 255, (3, 70, 90), dtype=np.uint8)
    forward = bundle_forward(micro, precision="fp32")
    filled = SlidingWindow(forward, 128, 16, small_images="fill")(photo)
    alone = TilePredictor(micro, precision="fp32")(photo[None])
    np.testing.assert_allclose(filled[-1], alone["prob"][0], atol=1e-5)
    np.testing.assert_allclose(filled[0], alone["prob_first"][0], atol=1e-5)
    padded = SlidingWindow(forward, 128, 16)(photo)
    assert np.abs(padded[-1] - filled[-1]).max() > 1e-3


# --------------------------------------------------------------------------- the bundle

def test_the_bundle_records_the_rule_and_older_bundles_pad(tmp_path):
    from jobs.inference.bundle_meta import read_bundle_meta
    from samsp import load_bundle

    uri = save_random_bundle(tmp_path / "b", "vit_micro")
    meta_path = Path(uri) / "bundle.json"
    meta = json.loads(meta_path.read_text())
    assert meta["small_images"] == "pad"
    del meta["small_images"]  # a bundle written before the field
    meta_path.write_text(json.dumps(meta))
    assert load_bundle(uri).meta.small_images == "pad"
    assert read_bundle_meta(uri).small_images == "pad"
    meta_path.write_text(json.dumps({**meta, "small_images": "fill"}))
    assert load_bundle(uri).meta.small_images == "fill"
    assert read_bundle_meta(uri).small_images == "fill"
    meta_path.write_text(json.dumps({**meta, "small_images": "zoom"}))
    with pytest.raises(ValueError, match="small_images"):
        read_bundle_meta(uri)


def test_a_finetune_keeps_its_base_bundles_rule_unless_set(tmp_path):
    from jobs.runtime.config import load_config
    from jobs.training.config import TrainConfig
    from jobs.training.model import settle_model

    uri = save_random_bundle(tmp_path / "b", "vit_micro")
    meta_path = Path(uri) / "bundle.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "small_images": "fill"}))
    settled, base = settle_model(load_config(TrainConfig, None, [f"model.checkpoint={uri}"]))
    assert settled.model.small_images == "fill" and base["kept"]["small_images"] == "fill"
    settled, _ = settle_model(load_config(TrainConfig, None, [f"model.checkpoint={uri}",
                                                              "model.small_images=pad"]))
    assert settled.model.small_images == "pad"


# --------------------------------------------------------------------------- the jobs

def _png(path: Path, height: int, width: int, seed: int = 0) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("orientation", [1, 6])
def test_the_sweep_reads_a_small_photo_as_one_tile_of_itself(tmp_path, micro, orientation):
    """The sweep's reader gives a 60 x 90 photo (as the viewer sees it) as one 60 x 90 tile; the
    model stage and the core cut give its mask at that size: the photo's prediction alone."""
    from jobs.crack_sweep.pipeline import keep_mask_cores, read_photos
    from jobs.inference.predictor import Predictor
    from samsp.predict import TilePredictor
    from tests.test_sweep_windowed_reads import _photo

    stored = (60, 90) if orientation == 1 else (90, 60)  # EXIF 6 turns the stored photo
    uri = str(_photo(tmp_path / "p.jpg", *stored, orientation=orientation))
    batch = read_photos({"scene": ["p"], "input": [uri]}, tile=128, overlap=16,
                        small_images="fill")
    assert batch["image"].shape == (1, 3, 60, 90) and batch["valid"].all()
    assert json.loads(batch["tile"][0])["read"] == [0, 0, 90, 60]
    out = keep_mask_cores(Predictor(micro, device="cpu", precision="fp32")(batch))
    alone = TilePredictor(micro, precision="fp32")(batch["image"])
    assert out["core"][0].shape == (60, 90)
    np.testing.assert_array_equal(out["core"][0], (alone["prob"][0] > 0.5).astype(np.uint8))
    padded = read_photos({"scene": ["p"], "input": [uri]}, tile=128, overlap=16)
    assert padded["image"].shape == (1, 3, 128, 128)


def test_a_sweep_fills_small_photos_of_every_size_beside_big_ones(tmp_path, micro):
    """The local-engine sweep with ``tiling.small_images=fill`` over two small photos of other
    sizes, a photo bigger than the tile and a broken file: every good photo gets its mask at its
    own size (the small ones batched beside the others' tiles), the broken one fails alone."""
    from PIL import Image

    from jobs import sweep

    photos = tmp_path / "in"
    photos.mkdir()
    sizes = {"a": (60, 90), "b": (70, 50), "big": (150, 200)}
    for name, (h, w) in sizes.items():
        _png(photos / f"{name}.png", h, w, seed=len(name))
    (photos / "broken.png").write_bytes(b"not a png")
    rc = sweep.main(["--input", str(photos), "--output", str(tmp_path / "out"), "--model",
                     micro.uri, "--set", "pipeline.engine=local", "--set",
                     "predict.device=cpu", "--set", "tiling.small_images=fill",
                     "--set", "predict.batch_size=4"])
    assert rc == sweep.EXIT_FAILED  # one photo failed, the others finished
    for name, size in sizes.items():
        assert np.asarray(Image.open(tmp_path / "out" / "masks" / f"{name}.png")).shape == size
    records = {json.loads(p.read_text())["id"]: json.loads(p.read_text())
               for p in (tmp_path / "out" / "records").glob("*.json")}
    assert {k: r["status"] for k, r in records.items()} == {"a": "ok", "b": "ok", "big": "ok",
                                                             "broken": "failed"}


@pytest.mark.slow
def test_the_segment_job_fills_a_small_photo_as_segment_file_does(tmp_path):
    """``tiling.small_images=fill``: the segment job's mask of a 60 x 90 PNG (no georeferencing)
    equals ``samsp.segment_file``'s with the same rule, and its store is one 90-px chunk; a
    georeferenced scene of the same size still pads."""
    from samsp import segment_file
    from tests.test_segment import job_env, read_raster, run_job
    from tests.test_segment_file import LOCAL
    from tests.test_segment_reruns import _bundle

    model = _bundle(tmp_path / "model", 0)
    photo = _png(tmp_path / "small.png", 60, 90)
    res = run_job([photo], str(tmp_path / "out"), model, job_env(SimpleNamespace(env=dict)),
                  extra=[*LOCAL, "--set", "tiling.small_images=fill"])
    assert res.rc == 0, res.out[-3000:]
    mask = read_raster(str(tmp_path / "out" / "small" / "mask.tif"))[0]
    filled = segment_file(photo, model, precision="fp32", device="cpu", small_images="fill")
    padded = segment_file(photo, model, precision="fp32", device="cpu")
    np.testing.assert_array_equal(filled.mask, mask)
    assert (padded.mask != filled.mask).any()
    status = json.loads((tmp_path / "out" / "small" / "status.json").read_text())
    assert status["tiles"] == 1 and status["model_input"]["small_images"] == "fill"
    import zarr

    store = zarr.open_group(str(tmp_path / "out" / "small" / "mask.zarr"), mode="r")
    assert store["mask"].chunks == (90, 90) and store["mask"].shape == (60, 90)


# --------------------------------------------------------------------------- training crops

def test_training_shows_a_small_photo_filled_as_inference_runs_it():
    """``augment.fill_small``: a 60 x 120 photo becomes a 128 x 256 upscale at the crop's
    top-left, the rest invalid padding, its crack still labelled; a photo as big as the crop
    never; off (0), the random generator is not drawn (earlier configs keep their crops)."""
    from jobs.training.augment import drawn_crop

    img = np.full((3, 60, 120), 200, np.uint8)
    mask = np.zeros((60, 120), bool)
    mask[30, :] = True  # a 1-px crack across
    valid = np.ones((60, 120), bool)
    aug = {"scale": (0.5, 2.0), "fill_small": 1.0}
    ci, cm, cv = drawn_crop(img, mask, valid, 256, aug, np.random.default_rng(0))
    assert cv[:128, :].all() and not cv[128:, :].any()
    assert (ci[:, :128] == 200).all() and (ci[:, 128:] == 0).all()
    assert cm[60:66, :].any(axis=0).all() and not cm[128:].any()  # the crack, 2x wider, kept
    rng = np.random.default_rng(0)
    big = np.zeros((3, 256, 300), np.uint8)
    ci, _, cv = drawn_crop(big, np.zeros((256, 300), bool), np.ones((256, 300), bool), 256,
                           aug, rng)
    assert ci.shape == (3, 256, 256) and cv.all()  # a random crop inside the photo
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    drawn_crop(img, mask, valid, 256, {"scale": (0.5, 2.0)}, a)
    drawn_crop(img, mask, valid, 256, {"scale": (0.5, 2.0), "fill_small": 0.0}, b)
    assert a.random() == b.random()
