"""Streaming training from georeferenced scenes (``data.streaming``, jobs/training/streaming.py).

    .venv/bin/python bench/geo_train.py               # ~6 min on 2 CPU cores
    .venv/bin/python bench/geo_train.py --small 1000 --big 4000 --epochs 2   # a quick look

Every arm is the real job (``jobs.train.run``) with ``data.streaming: true``: ``vit_micro``, 2 CPU
Ray Train workers (the embedded Ray gets one more CPU for the loading tasks), the same windows
(``--tile`` px), ``--epochs`` epochs, the last one measured; a fresh Ray per arm.

* ``s3-cog`` -- a ``--small``-px COG (3-band uint8, UTM, 0.5 m) and its buildings as GeoParquet
  (bbox covering column) on the local SeaweedFS S3 server: each window is a COG range read plus
  a bbox read of the labels, rasterised on the window;
* ``local-png`` -- the same windows written as PNG image/mask pairs on local disk;
* ``s3-cog-big`` -- a ``--big``-px COG with the same labels and an AOI over the small scene's
  area, so the windows (and their count) are the same.

Reported: training windows/s (the epoch's ``train_samples / train_s``: data wait, forward,
backward, all-reduce), and the peak RSS of the Ray Train workers and of the Ray Data task
processes (sampled every 0.1 s from this process's descendants). ``geo_train_s3_over_local`` is
windows/s of ``s3-cog`` over ``local-png``; ``geo_train_worker_rss_growth_pct`` the train
workers' peak RSS of ``s3-cog-big`` over ``s3-cog``, minus 1, in percent.

Writes ``--md`` (bench/results/GEO_TRAIN_RESULTS.md) and ``--json``
(bench/results/results_geo_train.json).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import log, machine  # noqa: E402

UTM = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_000.0)
RES = 0.5


# --------------------------------------------------------------------------- data

def write_cog(path: Path, side: int, block: int = 1024) -> str:
    """A ``side`` x ``side`` 3-band uint8 COG (DEFLATE, 512 px tiles, overviews), written block
    by block through a tiled GeoTIFF."""
    import rasterio
    from rasterio.shutil import copy as rio_copy
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    tmp = path.with_suffix(".tmp.tif")
    profile = dict(driver="GTiff", height=side, width=side, count=3, dtype="uint8", crs=UTM,
                   transform=from_origin(*ORIGIN, RES, RES), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate")
    rng = np.random.default_rng(0)
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, side, block):
            for c in range(0, side, block):
                h, w = min(block, side - r), min(block, side - c)
                y, x = np.mgrid[r:r + h, c:c + w].astype(np.float32)
                base = 120 + 50 * np.sin(x / 37.0) * np.cos(y / 53.0)
                data = np.stack([base + 20 * k for k in range(3)])
                data += rng.normal(0, 6, data.shape)
                dst.write(np.clip(data, 0, 255).astype(np.uint8), window=Window(c, r, w, h))
    rio_copy(str(tmp), str(path), driver="COG", compress="DEFLATE", blocksize=512)
    tmp.unlink()
    return str(path)


def write_vectors(folder: Path, area_px: int) -> tuple[str, str]:
    """Buildings over the first ``area_px`` x ``area_px`` pixels (GeoParquet, EPSG:4326, bbox
    covering) and that area as an AOI."""
    import geopandas as gpd
    import shapely

    x0, y1 = ORIGIN
    span = area_px * RES
    rng = np.random.default_rng(1)
    boxes = []
    for _ in range(max(40, area_px // 10)):
        cx, cy = x0 + rng.uniform(8, span - 8), y1 - rng.uniform(8, span - 8)
        w, h = rng.uniform(3, 12, 2)
        boxes.append(shapely.box(cx - w, cy - h, cx + w, cy + h))
    labels, aoi = str(folder / "buildings.parquet"), str(folder / "aoi.parquet")
    gpd.GeoDataFrame({"cls": [1] * len(boxes)}, geometry=boxes, crs=UTM).to_crs(
        "EPSG:4326").to_parquet(labels, write_covering_bbox=True)
    gpd.GeoDataFrame(geometry=[shapely.box(x0, y1 - span, x0 + span, y1)], crs=UTM).to_crs(
        "EPSG:4326").to_parquet(aoi, write_covering_bbox=True)
    return labels, aoi


def raster_source(image: str, labels: str, aoi: str, tile: int) -> dict:
    return {"kind": "raster", "tile": tile,
            "pairs": [{"image": image, "label": labels, "aoi": aoi}]}


def write_pairs(folder: Path, source: dict) -> tuple[str, int]:
    """The windows of a raster source as PNG pairs (``images/``, ``masks/``); returns the
    folder and the window count."""
    from PIL import Image

    from jobs.training.config import RasterData
    from jobs.training.data import ItemLoader, source_items

    items, scenes = source_items(RasterData.model_validate(source).model_dump(mode="json"))
    loader = ItemLoader(scenes, cache=False)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for it in items:
        img, mask, _ = loader.load(it)
        stem = it["key"].replace(":", "_")
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / "images" / f"{stem}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "masks" / f"{stem}.png")
    return str(folder), len(items)


# --------------------------------------------------------------------------- measuring

class PeakRss(threading.Thread):
    """Peak RSS of this process's Ray Train workers and Ray Data task processes, sampled."""

    def __init__(self, every_s: float = 0.1):
        super().__init__(daemon=True)
        self.every_s, self.stop_flag = every_s, threading.Event()
        self.peak = {"train_worker": 0, "data_task": 0}

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop_flag.is_set():
            for proc in me.children(recursive=True):
                try:
                    title, rss = " ".join(proc.cmdline()), proc.memory_info().rss
                except (psutil.Error, OSError):
                    continue
                kind = ("train_worker" if "RayTrainWorker" in title else
                        "data_task" if "load_block" in title or "EpochSamples" in title else None)
                if kind:
                    self.peak[kind] = max(self.peak[kind], rss)
            time.sleep(self.every_s)

    def stop(self) -> dict:
        self.stop_flag.set()
        self.join()
        return {k: round(v / 2**20, 1) for k, v in self.peak.items()}


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its children, so far."""
    import psutil

    total = 0.0
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def run_arm(name: str, source: dict, args, storage: str, server_pid: int | None = None) -> dict:
    """One streaming training run in a fresh embedded Ray; its windows/s, peak RSS and the CPU
    seconds the S3 server spent meanwhile (it shares the cores with the run)."""
    import ray

    from jobs.runtime.config import load_config
    from jobs.train import run
    from jobs.training.config import TrainConfig

    cfg = load_config(TrainConfig, None, [
        f"run.name=geo-{name}", f"run.storage_path={storage}", "run.num_to_keep=1",
        "model.type=vit_micro", "data.streaming=true", f"data.source={json.dumps(source)}",
        "data.split.val_fraction=0.1", f"train.epochs={args.epochs}", "train.batch_size=4",
        f"train.samples_per_item={args.samples_per_item}", "train.log_every=0",
        "augment.crop=128", "augment.min_positive=0", f"scaling.num_workers={args.workers}",
        "scaling.cpus_per_worker=1", "scaling.torch_threads=1", "export.uri=",
    ])
    sampler = PeakRss()
    sampler.start()
    server_cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    t0 = time.perf_counter()
    try:
        summary = run(cfg)
    finally:
        rss = sampler.stop()
        ray.shutdown()
    last = summary["history"][-1]
    out = {"arm": name, "windows_per_s": last["train_samples"] / last["train_s"],
           "train_samples": last["train_samples"], "epoch_train_s": last["train_s"],
           "wall_s": time.perf_counter() - t0, "peak_rss_mib": rss,
           "s3_server_cpu_s": round(cpu_seconds(server_pid) - server_cpu0, 2)
           if server_pid else None,
           "train_items": summary["data"]["train_items"]}
    log(f"{name}: {out['windows_per_s']:.1f} windows/s, peak RSS {rss}")
    return out


# --------------------------------------------------------------------------- main

def prepare(args, work: Path, server) -> dict[str, dict]:
    """The three arms' data sources (scenes and labels uploaded to the S3 server)."""
    import fsspec

    fs = fsspec.filesystem("s3", **server.storage_options())
    labels, aoi = write_vectors(work, args.small)
    small = write_cog(work / "scene_small.tif", args.small)
    log(f"wrote the {args.small} px COG")
    big = write_cog(work / "scene_big.tif", args.big)
    log(f"wrote the {args.big} px COG ({os.path.getsize(big) / 2**20:.0f} MiB)")
    prefix = f"{server.bucket}/geo-train"
    for path in (labels, aoi, small, big):
        fs.put(path, f"{prefix}/{Path(path).name}")
    s3 = {Path(p).name: f"s3://{prefix}/{Path(p).name}" for p in (labels, aoi, small, big)}
    pairs, n_pairs = write_pairs(work / "pairs", raster_source(small, labels, aoi, args.tile))
    log(f"{n_pairs} windows of {args.tile} px as PNG pairs")
    return {
        "s3-cog": raster_source(s3["scene_small.tif"], s3["buildings.parquet"],
                                s3["aoi.parquet"], args.tile),
        "local-png": {"kind": "pairs", "root": pairs, "layout": "custom", "threshold": 127},
        "s3-cog-big": raster_source(s3["scene_big.tif"], s3["buildings.parquet"],
                                    s3["aoi.parquet"], args.tile),
    }


def headline(arms: dict[str, dict]) -> dict:
    s3, local, big = arms["s3-cog"], arms["local-png"], arms["s3-cog-big"]
    grow = {k: 100.0 * (big["peak_rss_mib"][k] / s3["peak_rss_mib"][k] - 1)
            if s3["peak_rss_mib"][k] else None for k in ("train_worker", "data_task")}
    return {"geo_train_s3_over_local": s3["windows_per_s"] / local["windows_per_s"],
            "geo_train_worker_rss_growth_pct": grow["train_worker"],
            "geo_train_task_rss_growth_pct": grow["data_task"]}


def write_md(path: Path, args, arms: dict, head: dict, mach: dict, load_end) -> None:
    lines = [
        "## Streaming training from georeferenced scenes (data.streaming)", "",
        f"Command: `python bench/geo_train.py --small {args.small} --big {args.big} "
        f"--tile {args.tile} --epochs {args.epochs} --samples-per-item {args.samples_per_item} "
        f"--workers {args.workers}`  ",
        f"Date: {dt.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB RAM, torch "
        f"{mach['torch']}; load average at start {mach['load_avg']}, at end {load_end} (the "
        "machine is shared; treat ratios, not absolutes).", "",
        f"vit_micro, {args.workers} CPU Ray Train worker(s) (gloo), batch 4, crop 128, "
        "data.streaming: true; one CPU for Ray Data's loading tasks; last epoch measured; a "
        "fresh Ray per arm. Windows/s = the epoch's train_samples / train_s (data wait "
        "included). The S3 server (SeaweedFS) runs on the same cores: its CPU seconds over "
        "each arm are listed.", "",
        "| arm | data | train windows | windows/s | epoch train s | peak RSS train worker MiB "
        "| peak RSS data task MiB | S3 server CPU s |", "|---|---|---|---|---|---|---|---|"]
    what = {"s3-cog": f"{args.small}² COG + GeoParquet on local S3",
            "local-png": "the same windows as PNG pairs, local disk",
            "s3-cog-big": f"{args.big}² COG + GeoParquet + AOI on local S3 (same windows)"}
    for name, a in arms.items():
        lines.append(f"| {name} | {what[name]} | {a['train_items']} | {a['windows_per_s']:.2f} | "
                     f"{a['epoch_train_s']:.1f} | {a['peak_rss_mib']['train_worker']} | "
                     f"{a['peak_rss_mib']['data_task']} | {a.get('s3_server_cpu_s')} |")
    lines += ["", f"S3 COG + GeoParquet over local PNG pairs: **"
              f"{head['geo_train_s3_over_local']:.2f}x** the windows/s "
              "(`geo_train_s3_over_local`).",
              f"Peak RSS, {args.big}² over {args.small}² scene with the same windows: train "
              f"workers **{head['geo_train_worker_rss_growth_pct']:+.1f} %** "
              f"(`geo_train_worker_rss_growth_pct`), data task processes "
              f"{head['geo_train_task_rss_growth_pct']:+.1f} %.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--big", type=int, default=16000)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--samples-per-item", type=int, default=2)
    # 2 workers + Ray Data's loading CPU + the S3 server on a 2-core machine: every CPU second
    # spent reading is taken from training; 1 worker leaves the reads a core of their own
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (CPU)")
    p.add_argument("--md", default=str(REPO / "bench/results/GEO_TRAIN_RESULTS.md"))
    p.add_argument("--json", default=str(REPO / "bench/results/results_geo_train.json"))
    args = p.parse_args(argv)

    from jobs.local_stack.local_s3 import start_s3_server

    mach = machine()
    server = start_s3_server()
    os.environ.update(server.env())  # the embedded Ray's workers inherit it
    try:
        with tempfile.TemporaryDirectory(prefix="samsp-geo-train-") as tmp:
            sources = prepare(args, Path(tmp), server)
            arms = {name: run_arm(name, src, args, str(Path(tmp) / "runs"), server.pid)
                    for name, src in sources.items()}
    finally:
        server.stop()
    head = headline(arms)
    load_end = [round(x, 2) for x in os.getloadavg()]
    write_md(Path(args.md), args, arms, head, mach, load_end)
    Path(args.json).write_text(json.dumps({**head, "arms": arms, "machine": mach,
                                           "args": vars(args)}, indent=1))
    log(json.dumps(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
