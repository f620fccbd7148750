"""Training data without Ray: pair folders (local and S3), binarisation, split, augmentation,
raster tiles through ingest, and the driver-side pre-flight errors of jobs/train.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jobs.runtime.config import ConfigError, load_config
from jobs.training.augment import augment, clean_window_start, crop_window
from jobs.training.config import TrainConfig
from jobs.inference.sliding_window import SlidingWindow
from jobs.training.data import (DataError, ItemLoader, TrainDataset, plan_data, split_items,
                                synth_item)
from tests.conftest import shared_data


def _write_pairs(root, n=6, size=(40, 56), layout=("train_img", "train_lab"), one_bit=(0,),
                 missing_mask=None):
    img_dir, lab_dir = root / layout[0], root / layout[1]
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    masks = {}
    for i in range(n):
        stem = f"{1000 + i}"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(img_dir / f"{stem}.jpg")
        m = np.zeros(size, bool)
        m[5 + i: 9 + i, :] = True
        masks[stem] = m
        if i == missing_mask:
            continue
        if i in one_bit:  # DeepCrack test masks: 1-bit {0,1}
            Image.fromarray(m).convert("1").save(lab_dir / f"{stem}.png")
        else:
            Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(lab_dir / f"{stem}.png")
    return masks


def _data_cfg(source, val_fraction=0.34):
    return {"source": source, "val_source": None, "split": {"val_fraction": val_fraction, "seed": 0}}


def test_pair_folders_split_and_binarisation(tmp_path, s3_env):
    masks = _write_pairs(tmp_path / "dc")
    src = TrainConfig.model_validate(
        {"data": {"source": {"kind": "pairs", "root": str(tmp_path / "dc"), "layout": "deepcrack"}}}
    ).data.source.model_dump()
    assert (src["image_dir"], src["mask_dir"], src["threshold"]) == ("train_img", "train_lab", 0)
    plan = plan_data(_data_cfg(src))
    assert len(plan["train"]) == 4 and len(plan["val"]) == 2
    assert not {i["key"] for i in plan["train"]} & {i["key"] for i in plan["val"]}
    assert plan == plan_data(_data_cfg(src))  # deterministic
    loader = ItemLoader(plan["scenes"])
    for item in plan["train"] + plan["val"]:  # 8-bit {0,255} and 1-bit {0,1} masks alike
        img, mask, valid = loader.load(item)
        assert img.shape == (3, 40, 56) and img.dtype == np.uint8 and valid.all()
        np.testing.assert_array_equal(mask, masks[item["key"]])

    # the same folder from S3 gives the same items
    import fsspec

    fs = fsspec.filesystem("s3", **s3_env.storage_options())
    fs.put(str(tmp_path / "dc") + "/", f"{s3_env.bucket}/data/dc/", recursive=True)
    src_s3 = dict(src, root=f"s3://{s3_env.bucket}/data/dc")
    plan_s3 = plan_data(_data_cfg(src_s3))
    assert [i["key"] for i in plan_s3["val"]] == [i["key"] for i in plan["val"]]
    img, mask, _ = ItemLoader([]).load(plan_s3["val"][0])
    np.testing.assert_array_equal(mask, masks[plan_s3["val"][0]["key"]])

    # EPFL-style anti-aliased masks: custom threshold
    epfl = TrainConfig.model_validate(
        {"data": {"source": {"kind": "pairs", "root": "x", "layout": "epfl"}}}).data.source
    assert (epfl.image_dir, epfl.mask_dir, epfl.threshold) == ("images", "groundtruth", 127)

    # errors: missing folder, image without mask
    with pytest.raises(DataError, match="data folder not found"):
        plan_data(_data_cfg(dict(src, root=str(tmp_path / "nope"))))
    _write_pairs(tmp_path / "bad", n=3, missing_mask=1)
    with pytest.raises(DataError, match="have no mask"):
        plan_data(_data_cfg(dict(src, root=str(tmp_path / "bad"))))


def test_split_is_stable_and_hash_ranked():
    items = [{"key": f"k{i:03d}"} for i in range(100)]
    train, val = split_items(items, 0.15, seed=0)
    assert len(val) == 15 and len(train) == 85
    assert {v["key"] for v in split_items(items[::-1], 0.15, 0)[1]} == {v["key"] for v in val}
    assert {v["key"] for v in split_items(items, 0.15, seed=1)[1]} != {v["key"] for v in val}
    # adding items keeps most of the old validation set
    _, val2 = split_items(items + [{"key": f"n{i}"} for i in range(10)], 0.15, seed=0)
    assert len({v["key"] for v in val} & {v["key"] for v in val2}) >= 12
    with pytest.raises(DataError):
        split_items(items[:1], 0.2, 0)


def test_empty_crops_draw_clean_background_and_min_positive_draws_cracks():
    """A crack across one side of a big image: ``min_positive`` crops hold it, ``empty_crops``
    crops (the share asked) hold none -- the crack-free windows a sweep mostly sees."""
    img = np.full((3, 400, 400), 120, np.uint8)
    mask = np.zeros((400, 400), bool)
    mask[:, 100:103] = True  # a thin vertical crack, left of centre
    base = dict(scale=(1.0, 1.0), hflip=False, vflip=False, rot90=False, brightness=0,
                contrast=0, saturation=0, gamma=0, min_positive=0.001)
    full = np.ones_like(mask)
    cracked = [augment(img, mask, full, 128, base, np.random.default_rng(i))[1].any()
               for i in range(40)]
    mixed = [augment(img, mask, full, 128, dict(base, empty_crops=0.5),
                     np.random.default_rng(i))[1].any() for i in range(200)]
    everything = [augment(img, mask, full, 128, dict(base, empty_crops=1.0),
                          np.random.default_rng(i))[1].any() for i in range(40)]
    assert sum(cracked) >= 30        # redrawn towards the crack (1 draw: ~40 %)
    assert not any(everything)       # always a clean window where one exists
    assert 0.35 < 1 - np.mean(mixed) < 0.65


def test_crops_of_earlier_configs_are_unchanged_by_empty_crops():
    """Off (0 or absent), ``empty_crops`` draws nothing from the generator: a recipe's crops, and
    the draws after them, are those of the code before it (digest recorded from that code)."""
    import hashlib

    img = (np.arange(3 * 300 * 260) % 251).astype(np.uint8).reshape(3, 300, 260)
    mask = np.zeros((300, 260), bool)
    mask[:, 40:43] = True
    aug = dict(scale=(1.0, 1.0), hflip=True, vflip=True, rot90=True, brightness=0, contrast=0,
               saturation=0, gamma=0, min_positive=0.01, small_image=0.3)
    for variant in (aug, dict(aug, empty_crops=0.0)):
        digest = hashlib.sha256()
        for i in range(12):
            rng = np.random.default_rng(i)
            for part in augment(img, mask, np.ones_like(mask), 96, variant, rng):
                digest.update(part.tobytes())
            digest.update(rng.integers(0, 2**31, 1).tobytes())
        assert digest.hexdigest() == ("7466dfb4298a36ff56ff149d1955f6ad"
                                      "1c0c261cd496d40ce930e5e6b454e83c")


def test_empty_crops_of_a_small_cracked_photo_are_padded_clean_patches_or_keep_the_crack():
    """A photo smaller than the crop, crossed by its crack, has no clean window: a clean patch
    of it becomes a small photo (valid top-left, the rest padding, as inference pads one). Where
    no patch of a third of the window is clean either, the crop keeps its crack and label --
    why the share of crack-free crops reached stays under ``empty_crops``
    (``python -m bench.crack_free``)."""
    img = np.full((3, 90, 90), 100, np.uint8)
    mask = np.zeros((90, 90), bool)
    mask[:, 40:44] = True
    aug = dict(scale=(1.0, 1.0), hflip=False, vflip=False, rot90=False, brightness=0,
               contrast=0, saturation=0, gamma=0, empty_crops=1.0, empty_crops_search="positions")
    for i in range(10):
        ci, cm, cv = augment(img, mask, np.ones_like(mask), 128, aug, np.random.default_rng(i))
        assert ci.shape == (3, 128, 128) and not cm.any()
        rows, cols = np.flatnonzero(cv.any(1)), np.flatnonzero(cv.any(0))
        assert rows[0] == cols[0] == 0 and cols[-1] < 46 and cv[:rows[-1] + 1, :cols[-1] + 1].all()
        assert (ci[:, ~cv] == 0).all() and (ci[:, cv] == 100).all()
    windows_only = dict(aug, empty_crops_search="windows")  # no padded patches: keeps it
    for i in range(5):
        _, cm, _ = augment(img, mask, np.ones_like(mask), 128, windows_only,
                           np.random.default_rng(i))
        assert cm.sum() == mask.sum()
    grid = np.zeros((90, 90), bool)
    grid[::30] = grid[:, ::30] = True        # no clean patch of 43 px (a third of 128)
    for i in range(10):
        ci, cm, cv = augment(img, grid, np.ones_like(grid), 128, aug, np.random.default_rng(i))
        assert cm.sum() == grid.sum() and not (cm & ~cv).any()


def _cracked_grid(size=400, step=100, clean=(250, 400)):
    """Cracks every ``step`` px both ways, except over one clean square ``clean`` (rows and
    columns from..to): a photo whose only crack-free 128-px windows sit in one corner."""
    mask = np.zeros((size, size), bool)
    for k in range(step // 2, size, step):
        mask[k:k + 2, :] = mask[:, k:k + 2] = True
    a, b = clean
    mask[a:b, a:b] = False
    return mask


def test_empty_crops_find_the_one_clean_corner_random_draws_miss():
    """``windows`` (and ``positions``) pick among every clean window, so a crack-free crop
    exists whenever a clean window does; the fewest of 8 random draws (``draws``, the default)
    mostly keeps a crack."""
    mask = _cracked_grid()
    img = np.full((3, 400, 400), 120, np.uint8)
    full = np.ones_like(mask)
    aug = dict(scale=(1.0, 1.0), hflip=False, vflip=False, rot90=False, brightness=0,
               contrast=0, saturation=0, gamma=0, empty_crops=1.0, empty_crops_search="windows")
    by_positions = [augment(img, mask, full, 128, aug, np.random.default_rng(i))[1].any()
                    for i in range(30)]
    by_draws = [augment(img, mask, full, 128, dict(aug, empty_crops_search="draws"),
                        np.random.default_rng(i))[1].any() for i in range(30)]
    assert not any(by_positions)
    assert sum(by_draws) >= 20
    # uniform among the clean windows: both ends of the clean corner are reached
    starts = {clean_window_start(mask, full, 128, np.random.default_rng(i)) for i in range(200)}
    assert all(250 <= y <= 272 and 250 <= x <= 272 for y, x in starts)
    assert {y for y, _ in starts} >= {250, 272} and {x for _, x in starts} >= {250, 272}


def test_clean_window_search_at_the_edges():
    """Windows wider than the image cover the whole axis at a random offset (as
    ``random_crop``); a window at least half padding-invalid is not a clean crop; no clean
    window gives None."""
    mask = np.zeros((60, 300), bool)
    mask[:, 10:12] = True                    # a crack near the left
    full = np.ones_like(mask)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y0, x0 = clean_window_start(mask, full, 100, rng)
        assert -40 <= y0 <= 0 and 12 <= x0 <= 200
    half_nodata = full.copy()
    half_nodata[:, 150:] = False             # the clean right part is nodata
    for _ in range(20):
        y0, x0 = clean_window_start(mask, half_nodata, 100, rng)
        assert 12 <= x0 <= 100               # at least 50 of its 100 columns valid
    assert clean_window_start(np.ones((50, 50), bool), np.ones((50, 50), bool), 20, rng) is None
    assert clean_window_start(mask, full, 400, rng) is None   # every window spans the crack


def test_joint_augmentation_keeps_image_and_mask_aligned():
    # the mask is exactly "channel 0 is bright": any misaligned geometric op breaks that
    rng = np.random.default_rng(1)
    img = np.zeros((3, 64, 80), np.uint8)
    mask = rng.random((64, 80)) < 0.2
    img[0] = np.where(mask, 250, 10)
    img[1] = np.arange(80, dtype=np.uint8)[None, :]
    aug = dict(scale=(1.0, 1.0), hflip=True, vflip=True, rot90=True, brightness=0, contrast=0,
               saturation=0, gamma=0, min_positive=0)
    seen = set()
    for i in range(24):
        ci, cm, cv = augment(img, mask, np.ones_like(mask), 48, aug, np.random.default_rng(i))
        assert ci.shape == (3, 48, 48) and cm.shape == cv.shape == (48, 48)
        np.testing.assert_array_equal(cm, ci[0] > 128)
        seen.add(int(np.sign(np.diff(ci[1].astype(int), axis=1).sum())))
        seen.add(int(np.sign(np.diff(ci[1].astype(int), axis=0).sum())) * 10)
    assert len(seen) >= 3  # flips/rotations really happen
    # rescale + crop beyond the image: padding is invalid, mask stays inside valid
    jit = dict(aug, scale=(0.5, 0.5), brightness=0.3, contrast=0.3, saturation=0.3, gamma=0.3)
    ci, cm, cv = augment(img, mask, np.ones_like(mask), 256, jit, np.random.default_rng(0))
    assert ci.shape == (3, 256, 256) and 0 < cv.mean() < 1 and not (cm & ~cv).any()
    assert (ci[:, ~cv] == 0).all()
    # the dataset is deterministic in (seed, epoch, index)
    plan = {"train": [{"kind": "synthetic", "key": "s0", "index": 0, "size": 64, "seed": 0,
                       "width": [1, 3]}], "val": [], "scenes": []}
    ds = TrainDataset(plan, 48, dict(aug, scale=(0.8, 1.2)), seed=0)
    a, b = ds[0], ds[0]
    ds.set_epoch(1)
    c = ds[0]
    assert all((x == y).all() for x, y in zip(a, b)) and not (a[0] == c[0]).all()


def test_validation_windows_round_trip_and_synthetic():
    img, mask = synth_item(3, 100, seed=0)
    assert img.shape == (3, 100, 100) and mask.any() and (synth_item(3, 100, 0)[1] == mask).all()
    seen = []

    def echo(tiles, valid):  # pass 0: the mask channel; every window's validity is recorded
        seen.append(valid)
        return tiles[None, :, 0].astype(np.float32)

    # Validation's windows: 48 px crops, no overlap, padded past the border (3 x 3 of them).
    window = SlidingWindow(echo, 48, overlap=0, stitch="core", batch_size=4, edge="pad")
    full = np.ones((100, 100), bool)
    out = window(mask[None].astype(np.uint8), valid=full)
    assert (out[0] == mask).all()
    tile_valid = np.concatenate(seen)
    assert tile_valid.shape == (9, 48, 48) and 0 < tile_valid.mean() < 1  # padding is invalid
    assert tile_valid[0].all() and not tile_valid[-1][4:].any()
    seen.clear()
    window(mask[None].astype(np.uint8))  # no mask: every image pixel valid, padding still not
    assert (np.concatenate(seen) == tile_valid).all()


def test_raster_pairs_through_ingest(tmp_path):
    base = shared_data("spacenet", "buildings_SN4_Atlanta")
    cfg = TrainConfig.model_validate({"data": {"source": {
        "kind": "raster", "tile": 256,
        "pairs": [{"image": str(base / "sample_geotiff.tif"),
                   "label": str(base / "sample_fp_mask_from_geojson.tif")}]}}})
    plan = plan_data(cfg.data.model_dump(mode="json"))
    assert plan["scenes"][0]["radiometry"]["mode"] == "stretch"  # uint16 PAN
    loader = ItemLoader(plan["scenes"])
    img, mask, valid = loader.load(plan["train"][0])
    assert img.shape == (3, 256, 256) and img.dtype == np.uint8 and (img[0] == img[2]).all()
    assert 0 < mask.mean() < 0.5 and valid.all()
    bad = cfg.data.model_dump(mode="json")
    bad["source"]["pairs"][0]["label"] = str(tmp_path / "missing.tif")
    with pytest.raises(DataError, match="raster pair 0"):
        plan_data(bad)


def test_preflight_errors_before_any_worker(tmp_path, capsys):
    """Bad config, missing data, mismatched base checkpoint: exit 2 with the reason, no Ray."""
    import ray
    import torch

    from jobs import train
    from samsp import build_sam

    ray_before = ray.is_initialized()  # another module's session fixture may have started it

    def run(*sets):
        args = ["--config", "configs/train_tiny.yaml", "--check"]
        for s in sets:
            args += ["--set", s]
        rc = train.main(args)
        return rc, capsys.readouterr().err

    rc, err = run("train.lr=-1")
    assert rc == 2 and "train.lr" in err and "greater than 0" in err
    rc, err = run("train.epocs=3")
    assert rc == 2 and "train.epocs" in err
    rc, err = run("model.finetune=lora")
    assert rc == 2 and "needs model.checkpoint" in err
    rc, err = run("data.source={kind: pairs, root: %s, layout: deepcrack}" % (tmp_path / "none"))
    assert rc == 2 and "data folder not found" in err
    # a vit_tiny checkpoint offered to a vit_micro model
    torch.save(build_sam("vit_tiny").state_dict(), tmp_path / "tiny.pt")
    rc, err = run(f"model.checkpoint={tmp_path / 'tiny.pt'}")
    assert rc == 2 and "model.checkpoint" in err and "shape" in err
    rc, err = run(f"model.checkpoint={tmp_path / 'absent.pt'}")
    assert rc == 2 and "not found" in err
    rc, err = run("run.storage_path=gs://bucket/x")
    assert rc == 2 and "only local paths and s3://" in err
    # the real launch path fails the same way, before Ray is started
    rc = train.main(["--config", "configs/train_tiny.yaml", "--set",
                     f"model.checkpoint={tmp_path / 'tiny.pt'}"])
    assert rc == 2 and "does not fit" in capsys.readouterr().err
    assert ray.is_initialized() == ray_before
    # a good config passes the same checks
    assert train.main(["--config", "configs/train_tiny.yaml", "--check"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ok"] is True
    with pytest.raises(ConfigError, match="data.source"):
        load_config(TrainConfig, None, ["data.source.kind=nope"])


def test_deepcrack_config_checks(capsys):
    shared_data("deepcrack", "train_img")
    from jobs import train

    assert train.main(["--config", "configs/train_deepcrack_cpu.yaml", "--check"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["data"]["train_items"] == 255 and out["data"]["val_items"] == 45


@pytest.mark.parametrize("scale", [0.75, 0.6, 0.5, 0.4])
@pytest.mark.parametrize("width", [1, 2])
def test_downscaling_keeps_the_label_of_a_thin_line_at_every_subpixel_position(scale, width):
    # A w-px line stays visible in the antialiased downscaled image; its label must stay too
    # (bilinear > 0.5 lost 1-px lines at 3/12 positions at 0.75 and 12/12 at 0.5).
    src = 96
    out = int(round(src * scale))
    img = np.full((3, src, src), 200, np.uint8)
    for offset in range(12):
        mask = np.zeros((src, src), bool)
        mask[:, 30 + offset:30 + offset + width] = True
        line = img.copy()
        line[:, mask] = 20
        ci, cm, cv = crop_window(line, mask, np.ones_like(mask), 0, 0, src, out)
        assert cv.all()
        assert cm.any(axis=1).all(), f"label lost at offset {offset}"  # every row keeps it
        dark = ci[0] < 150  # where the image still shows the line
        assert not (dark & ~cm).any()  # wherever the image still shows it, it is labelled


def test_downscaling_a_thick_object_keeps_its_area():
    mask = np.zeros((120, 120), bool)
    mask[20:80, 30:97] = True
    for scale in (0.75, 0.5):
        out = int(120 * scale)
        _, cm, _ = crop_window(np.zeros((3, 120, 120), np.uint8), mask, np.ones_like(mask),
                               0, 0, 120, out)
        assert cm.sum() / (mask.sum() * scale * scale) == pytest.approx(1.0, abs=0.05)
