"""``data.streaming``: training samples through Ray Data (jobs/training/streaming.py).

Without Ray: a streamed row's sample equals ``TrainDataset[i]`` for the same (seed, epoch, i) --
synthetic, pair folders, a scene with vector labels, a mixture -- and the epoch's rows come in
``DistributedSampler``'s order. With Ray (each launch ~30-60 s of Ray overhead on 2 cores): two
workers train on disjoint shards covering every epoch, stop after an epoch, and the relaunch
resumes at the next epoch without re-reading the first; and a run streams windows of a scene
and its GeoParquet labels from S3.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.training.config import TrainConfig
from jobs.training.data import TrainDataset, plan_data
from jobs.training.streaming import (SAMPLE_LOG_ENV, batches_per_worker, epoch_order,
                                     load_block, load_row, padded, read_blocks, sample_rows,
                                     stream_spec, training_part)
from tests.test_train import _train  # the same jobs/train.py launcher

REPO = Path(__file__).resolve().parents[1]
UTM = "EPSG:32633"
CROP = 48


# ----------------------------------------------------------------------------- data on disk

def write_pairs(root: Path, n: int = 5) -> str:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        h, w = 50 + 7 * i, 60
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / f"p{i}.png")
        m = np.zeros((h, w), np.uint8)
        m[10 + i:16 + i, 5:50] = 255
        Image.fromarray(m).save(root / "masks" / f"p{i}.png")
    return str(root)


def write_scene(folder: Path, side: int = 256) -> tuple[str, str]:
    """A 3-band uint8 GeoTIFF in UTM (0.5 m) and its buildings as GeoParquet in EPSG:4326 (with
    the bbox covering column)."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.transform import from_origin

    x0, y1 = 500_000.0, 5_000_300.0
    image = str(folder / "scene.tif")
    rng = np.random.default_rng(0)
    with rasterio.open(image, "w", driver="GTiff", height=side, width=side, count=3,
                       dtype="uint8", crs=UTM, transform=from_origin(x0, y1, 0.5, 0.5),
                       tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(rng.integers(1, 255, (3, side, side), dtype=np.uint8))
    boxes = []
    for _ in range(12):
        cx, cy = x0 + rng.uniform(5, side / 2 - 5), y1 - rng.uniform(5, side / 2 - 5)
        w, h = rng.uniform(2, 8, 2)
        boxes.append(shapely.box(cx - w, cy - h, cx + w, cy + h))
    labels = str(folder / "buildings.parquet")
    gpd.GeoDataFrame({"cls": [1] * len(boxes)}, geometry=boxes, crs=UTM).to_crs(
        "EPSG:4326").to_parquet(labels, write_covering_bbox=True)
    return image, labels


def raster_source(image: str, labels: str, tile: int = 64) -> dict:
    return {"kind": "raster", "tile": tile, "pairs": [{"image": image, "label": labels}]}


def data_cfg(source: dict) -> dict:
    cfg = TrainConfig.model_validate({"data": {"source": source,
                                               "split": {"val_fraction": 0.25}}})
    return cfg.data.model_dump(mode="json")


# ----------------------------------------------------------------------------- without Ray

@pytest.fixture
def sources(tmp_path) -> dict[str, dict]:
    image, labels = write_scene(tmp_path)
    synthetic = {"kind": "synthetic", "count": 6, "size": 64}
    return {
        "synthetic": synthetic,
        "pairs": {"kind": "pairs", "root": write_pairs(tmp_path / "pairs")},
        "raster": raster_source(image, labels),
        # windows drawn by their positive flags (jobs/training/window_sampling.py)
        "raster_positive": dict(raster_source(image, labels), positive_fraction=0.5),
        "mixture": {"kind": "mixture", "samples_per_epoch": 9, "members": [
            {"name": "syn", "source": synthetic, "weight": 1.0},
            {"name": "geo", "source": raster_source(image, labels), "weight": 3.0}]},
    }


@pytest.mark.parametrize("kind", ["synthetic", "pairs", "raster", "raster_positive", "mixture"])
def test_streamed_samples_equal_the_in_memory_samples(sources, kind):
    plan = plan_data(data_cfg(sources[kind]))
    aug = TrainConfig().augment.model_dump()
    seed, per_item = 7, 2
    ds = TrainDataset(plan, CROP, aug, seed, per_item, cache=False)
    spec = stream_spec(training_part(plan), CROP, aug, seed, per_item)
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        order = epoch_order(len(ds), 2, seed, epoch)
        # rows as Ray Data carries them: plain values, the item as JSON
        rows = json.loads(json.dumps(sample_rows(spec, epoch, order)))
        assert [r["index"] for r in rows] == order and {r["epoch"] for r in rows} == {epoch}
        for row in rows[:6]:
            img, mask, valid = ds[row["index"]]
            s_img, s_mask, s_valid = load_row(spec, row)
            assert torch.equal(img, torch.from_numpy(s_img))
            assert torch.equal(mask[0], torch.from_numpy(s_mask).float())
            assert torch.equal(valid[0], torch.from_numpy(s_valid).float())
        # the map_batches stage on a batch of those rows: the same crops, stacked
        batch = {k: np.array([r[k] for r in rows[:4]]) for k in rows[0]}
        out = load_block(batch, spec)
        expected = [ds[r["index"]] for r in rows[:4]]
        np.testing.assert_array_equal(out["image"], np.stack([e[0].numpy() for e in expected]))
        np.testing.assert_array_equal(out["mask"], np.stack([e[1][0].numpy() for e in expected]))
        np.testing.assert_array_equal(out["index"], order[:4])
    if kind == "raster_positive":  # half the epoch's rows from windows with a building
        flags = [json.loads(r["item"])["positive"] for r in sample_rows(
            spec, 0, list(range(len(ds))))]
        assert plan["summary"]["sampling"]["applied"] and sum(flags) == round(len(ds) / 2)
    if kind == "mixture":  # the items are drawn by the members' weights, per (seed, epoch, i)
        groups = Counter(json.loads(r["item"])["group"] for r in sample_rows(
            spec, 0, list(range(len(ds)))))
        assert groups[1] > groups[0] > 0


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_epoch_rows_come_in_the_distributed_samplers_order(n, world):
    from torch.utils.data import DataLoader, DistributedSampler

    for epoch in (0, 1, 5):
        order = epoch_order(n, world, 3, epoch)
        assert len(order) % world == 0 and set(order) == set(range(n))
        for rank in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                         seed=3)
            sampler.set_epoch(epoch)
            assert list(sampler) == order[rank::world]
            loader = DataLoader(range(n), batch_size=3, sampler=sampler)
            assert batches_per_worker(n, world, 3) == len(loader)


@pytest.mark.parametrize("rows,batch", [(12, 4), (100, 16), (50_001, 4)])
def test_read_blocks_cover_the_epoch_once(rows, batch):
    blocks = read_blocks(rows, batch)
    assert blocks[0][0] == 0 and blocks[-1][1] == rows and len(blocks) <= 2000
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert all(stop - start >= min(rows, 8, batch) for start, stop in blocks[:-1])
    assert padded(11, 2) == 12 == len(epoch_order(11, 2, 0, 0)) and padded(12, 4) == 12


def test_streaming_is_off_by_default():
    assert TrainConfig().data.streaming is False
    assert TrainConfig.model_validate({"data": {"streaming": True}}).data.streaming is True


# ----------------------------------------------------------------------------- with Ray

def _logged(folder: Path) -> dict[int, dict[int, list[int]]]:
    """``{rank: {epoch: [sample index, ...]}}`` of the workers' sample logs."""
    out: dict[int, dict[int, list[int]]] = {}
    for path in sorted(folder.glob("rank*.txt")):
        rank = int(path.stem[4:])
        for line in path.read_text().split("\n"):
            if line:
                epoch, index = map(int, line.split())
                out.setdefault(rank, {}).setdefault(epoch, []).append(index)
    return out


def _assert_disjoint_cover(logged: dict, epoch: int, n: int) -> None:
    parts = [logged[rank][epoch] for rank in sorted(logged)]
    assert len(parts) == 2 and all(len(p) == n // 2 for p in parts), parts
    assert not set(parts[0]) & set(parts[1]), parts  # disjoint ...
    assert sorted(parts[0] + parts[1]) == list(range(n))  # ... and together the whole epoch


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                **{SAMPLE_LOG_ENV: str(tmp_path / "samples")})


@pytest.mark.ray
def test_two_workers_stream_disjoint_shards_stop_and_resume(tmp_path):
    """Launch 1 trains epoch 1 of 2 and stops; launch 2 resumes at epoch 2, never re-reading
    epoch 1's rows, finishes and exports the bundle. 12 training items -> 12 samples/epoch."""
    from samsp import load_bundle

    env, n = _env(tmp_path), 12
    common = [f"run.storage_path={tmp_path / 'runs'}", "run.name=stream", "data.streaming=true",
              "data.source.count=15", "train.samples_per_item=1", "train.epochs=2",
              "train.batch_size=4", "--summary"]
    _train(common + [str(tmp_path / "s1.json"), "train.stop_after_epochs=1"], env, timeout=420)
    s1 = json.loads((tmp_path / "s1.json").read_text())
    assert (s1["epochs_done"], s1["complete"], s1["bundle"]) == (1, False, None)
    assert s1["history"][0]["train_samples"] == n
    logged = _logged(tmp_path / "samples")
    assert {e for r in logged.values() for e in r} == {0}
    _assert_disjoint_cover(logged, 0, n)

    _train(common + [str(tmp_path / "s2.json")], env, timeout=420)
    s2 = json.loads((tmp_path / "s2.json").read_text())
    assert s2["complete"] and s2["epochs_done"] == 2 and s2["bundle"]
    second = s2["history"][1]
    assert (second["epoch"], second["resumed"], second["resumed_from_epoch"]) == (2, 1, 1)
    assert second["train_samples"] == n
    relaunch = _logged(tmp_path / "samples")
    # epoch 1's rows were read once, by launch 1; launch 2 streamed epoch 2 only
    assert {r: v[0] for r, v in relaunch.items()} == {r: v[0] for r, v in logged.items()}
    _assert_disjoint_cover(relaunch, 1, n)
    assert load_bundle(s2["bundle"]).meta.model_type == "vit_micro"


def _scene_on_s3(tmp_path: Path, s3_env, name: str) -> tuple[dict, int]:
    """``write_scene``'s scene and GeoParquet labels under ``<bucket>/<name>/`` on SeaweedFS:
    ``(raster source, training windows)``."""
    import fsspec

    image, labels = write_scene(tmp_path)
    fs = fsspec.filesystem("s3", **s3_env.storage_options())
    prefix = f"{s3_env.bucket}/{name}"
    for path in (image, labels):
        fs.put(path, f"{prefix}/{Path(path).name}")
    source = raster_source(f"s3://{prefix}/scene.tif", f"s3://{prefix}/buildings.parquet")
    return source, len(plan_data(data_cfg(source))["train"])


@pytest.mark.ray
@pytest.mark.s3
def test_streams_scene_windows_and_geoparquet_labels_from_s3(tmp_path, s3_env):
    source, n = _scene_on_s3(tmp_path, s3_env, "stream-scene")
    env = _env(tmp_path)
    args = [f"run.storage_path={tmp_path / 'runs'}", "run.name=scene", "data.streaming=true",
            f"data.source={json.dumps(source)}", "data.split.val_fraction=0.25",
            "train.samples_per_item=1", "train.epochs=1", "augment.crop=64",
            "augment.min_positive=0", "--summary", str(tmp_path / "s.json")]
    _train(args, env, timeout=420)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["complete"] and s["data"]["source_kind"] == "raster" and s["bundle"]
    assert s["data"]["scenes"] == [source["pairs"][0]["image"]]
    assert s["history"][0]["train_samples"] == n + n % 2
    logged = _logged(tmp_path / "samples")
    assert sorted(set(logged[0][0]) | set(logged[1][0])) == list(range(n))


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_run_resumes(tmp_path, s3_env):
    """Issue 29: scenes + GeoParquet labels on S3, 2 workers streaming; rank 1 is SIGKILLed
    after the first step of epoch 2. Ray Train (run.max_failures=1) restarts the group from the
    epoch-1 checkpoint, epoch 2 runs again in full and the bundle is exported."""
    source, n = _scene_on_s3(tmp_path, s3_env, "kill-scene")
    steps_per_epoch = -(-((n + n % 2) // 2) // 4)  # per worker, batch 4
    marker = tmp_path / "killed"
    env = dict(_env(tmp_path), SAMSP_TRAIN_KILL=f"1:{steps_per_epoch + 1}:{marker}",
               # kill once Ray Train has registered epoch 1's checkpoint (it does so
               # asynchronously: a kill before that restarts from scratch, as it should)
               SAMSP_TRAIN_KILL_AFTER=f"{tmp_path / 'runs' / 'killed'}/"
                                      "checkpoint_manager_snapshot.json|checkpoint_epoch_0001")
    args = [f"run.storage_path={tmp_path / 'runs'}", "run.name=killed", "run.max_failures=1",
            "data.streaming=true", f"data.source={json.dumps(source)}",
            "data.split.val_fraction=0.25", "train.samples_per_item=1", "train.epochs=2",
            "train.batch_size=4", "augment.crop=64", "augment.min_positive=0",
            "--summary", str(tmp_path / "s.json")]
    _train(args, env, timeout=600)
    assert marker.read_text().startswith("rank 1 killed after step")
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["complete"] and s["epochs_done"] == 2 and s["bundle"]
    second = s["history"][1]
    assert (second["epoch"], second["resumed"], second["resumed_from_epoch"]) == (2, 1, 1)
    assert second["train_samples"] == n + n % 2
    # the replacement group streamed epoch 2 whole: its two shards cover every window
    logged = _logged(tmp_path / "samples")
    assert sorted(set(logged[0][1]) | set(logged[1][1])) == list(range(n))
