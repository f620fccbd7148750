"""Training's data plan over a listed archive: plan time per scene, peak RSS, 100 vs 1,000 scenes.

    .venv/bin/python -m bench.geo_plan [--sizes 100 1000] [--side 128] [--tile 64]
    .venv/bin/python -m bench.geo_plan --sizes 100 1000 --profile   # + cProfile at the largest

Issue 29: "driver and worker memory flat for a 1,000-scene training set" -- measured here the
way bench/bench_nightly.py measures the segment job's N1 (plan seconds per scene and the
driver's peak RSS, smallest vs largest count), for training's planning
(``jobs.training.data.plan_data``) of a ``raster`` source that lists its scenes
(``data.source.scenes``, jobs/training/scene_listing.py).

Data (written once under ``--workdir``, reused while the parameters match): ``max(sizes) + 2``
small georeferenced GeoTIFFs (``--side`` px, 3-band uint8, UTM 33N, 10 m, tiled ``--tile``
px blocks, uncompressed), each at its own place on a grid, and ONE GeoParquet label layer
(EPSG:4326, the bbox covering column, rows sorted along a Hilbert curve, row groups of
``--row-group`` rows) with ``--polys`` small boxes in every scene. Each size lists a folder of
hard links to the first N scenes; the last 2 scenes are a warm-up listing.

Each size runs in a fresh process (``--child``): imports, a warm-up ``plan_data`` of the 2
warm-up scenes (the one-time costs: GDAL/PROJ set-up, the Parquet footer, CRS parsing), then
the timed ``plan_data`` of the N-scene listing with ``data.split.spatial`` (``--block-px``)
and ``positive_fraction: 0.5`` (every training window's labels read for its flag; ``--no-positive``
drops it). Peak RSS is the process's ``VmHWM`` after planning (imports included): not
``ru_maxrss``, which on Linux carries the launching process's high-water mark across fork and
exec (this script's, after writing the data) and so reads a floor that is not the child's.

Reported (bench/results/results_geo_plan.json, bench/results/GEO_PLAN_RESULTS.md):

* ``geo_train_plan_s_per_scene_ratio``: plan CPU seconds per scene (``time.process_time``
  of the planning process: the cores are shared with other work, so wall seconds measure the
  neighbours too) at the largest size over the smallest (target <= 1.2);
  ``geo_train_plan_wall_s_per_scene_ratio``: the same of wall seconds;
* ``geo_train_plan_rss_growth_pct``: peak RSS at the largest size over the smallest, -1, in %;
* ``geo_train_plan_s_per_scene``: plan CPU seconds per scene at the largest size;
* ``geo_train_plan_items``: the plan's windows (train + val) at the largest size.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import cpu_label, log  # noqa: E402

UTM = "EPSG:32633"
PX = 10.0  # metres per pixel
X0, Y1 = 300_000.0, 5_600_000.0  # top-left of the grid of scenes
GAP_M = 500.0  # between neighbouring scenes
WARM = 2  # warm-up scenes, after the measured ones
TAG = "geo_plan"


# --------------------------------------------------------------------------- data

def _origin(i: int, cols: int, side: int) -> tuple[float, float]:
    step = side * PX + GAP_M
    return X0 + (i % cols) * step, Y1 - (i // cols) * step


def make_data(work: Path, n_scenes: int, side: int = 128, tile: int = 64, polys: int = 6,
              row_group: int = 2000, seed: int = 0) -> dict:
    """``n_scenes`` GeoTIFFs under ``work/scenes`` and one GeoParquet of ``polys`` boxes a scene
    (``work/labels.parquet``); kept when ``work/data.json`` says the same parameters."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.transform import from_origin

    params = {"n_scenes": n_scenes, "side": side, "tile": tile, "polys": polys,
              "row_group": row_group, "seed": seed}
    stamp = work / "data.json"
    scenes_dir, labels = work / "scenes", work / "labels.parquet"
    names = [scenes_dir / f"scene_{i:05d}.tif" for i in range(n_scenes)]
    if stamp.exists() and json.loads(stamp.read_text()) == params and labels.exists() \
            and all(p.exists() for p in names):
        return {"scenes": [str(p) for p in names], "labels": str(labels), "params": params}
    scenes_dir.mkdir(parents=True, exist_ok=True)
    for p in scenes_dir.glob("*.tif"):
        p.unlink()
    cols = math.ceil(math.sqrt(n_scenes))
    rng = np.random.default_rng(seed)
    pixels = rng.integers(1, 255, (3, side, side), dtype=np.uint8)  # content does not matter
    profile = dict(driver="GTiff", height=side, width=side, count=3, dtype="uint8", crs=UTM,
                   tiled=True, blockxsize=tile, blockysize=tile)
    boxes = []
    for i, path in enumerate(names):
        x0, y1 = _origin(i, cols, side)
        with rasterio.open(path, "w", transform=from_origin(x0, y1, PX, PX), **profile) as dst:
            dst.write(pixels)
        # small boxes (4..16 px a side) anywhere in the scene: some windows hold one, some none
        for _ in range(polys):
            w, h = rng.uniform(4, 16, 2) * PX
            cx = x0 + rng.uniform(w, side * PX - w)
            cy = y1 - rng.uniform(h, side * PX - h)
            boxes.append(shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    gdf = gpd.GeoDataFrame({"cls": np.ones(len(boxes), np.uint8)}, geometry=boxes,
                           crs=UTM).to_crs("EPSG:4326")
    gdf = gdf.iloc[np.argsort(gdf.geometry.hilbert_distance(), kind="stable")].reset_index(
        drop=True)
    gdf.to_parquet(labels, write_covering_bbox=True, row_group_size=row_group)
    stamp.write_text(json.dumps(params))
    return {"scenes": [str(p) for p in names], "labels": str(labels), "params": params}


def listing_folder(work: Path, scenes: list[str], name: str) -> str:
    """A folder of hard links to ``scenes`` (what a listing's ``inputs`` names)."""
    folder = work / name
    want = {Path(s).name: s for s in scenes}
    if folder.exists():
        for p in folder.iterdir():
            if p.name not in want:
                p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for fname, src in want.items():
        dst = folder / fname
        if dst.exists() and not os.path.samefile(dst, src):
            dst.unlink()  # a link to a scene of earlier data (rewritten since: other inode)
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                dst.symlink_to(src)
    return str(folder)


def data_cfg(folder: str, labels: str, tile: int, block_px: int | None,
             positive: float | None) -> dict:
    """``data`` as training validates and dumps it (tests/test_train_scene_listing.py)."""
    from jobs.training.config import TrainConfig

    source = {"kind": "raster", "tile": tile,
              "scenes": {"inputs": [folder], "labels": {"uri": labels}}}
    if positive is not None:
        source["positive_fraction"] = positive
    split: dict = {"val_fraction": 0.15}
    if block_px:
        split["spatial"] = {"block_px": block_px}
    return TrainConfig.model_validate({"data": {"source": source, "split": split}}).data.model_dump(
        mode="json")


# --------------------------------------------------------------------------- measuring

def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status in MB (``VmHWM``: peak RSS of this process image,
    ``VmRSS``: now); where there is none, ``ru_maxrss`` for the peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rss_mb() -> float:
    return _status_mb("VmHWM")


def _current_rss_mb() -> float:
    return _status_mb("VmRSS")


def measure(folder: str, warm_folder: str, labels: str, tile: int, block_px: int | None,
            positive: float | None, profile: str | None = None) -> dict:
    """In this process: a warm-up plan of ``warm_folder``, then the timed plan of ``folder``.
    ``profile``: a path to write the timed plan's cProfile stats to."""
    from jobs.training.data import plan_data

    rss_imports = _rss_mb()
    t0 = time.perf_counter()
    plan_data(data_cfg(warm_folder, labels, tile, block_px, positive))
    warm_s = time.perf_counter() - t0
    rss_warm = _rss_mb()
    cfg = data_cfg(folder, labels, tile, block_px, positive)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    plan = plan_data(cfg)
    plan_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    summary = plan["summary"]
    train = plan["train"]
    out = {"scenes": len(plan["scenes"]), "plan_s": round(plan_s, 3),
           "plan_cpu_s": round(cpu_s, 3),
           "warmup_plan_s": round(warm_s, 3),
           "train_items": len(train), "val_items": len(plan["val"]),
           "positive_windows": sum(bool(it.get("positive")) for it in train),
           "plan_json_mb": round(len(json.dumps(plan)) / 2**20, 2),
           "rss_after_imports_mb": rss_imports, "rss_after_warmup_mb": rss_warm,
           "peak_rss_mb": _rss_mb(), "rss_now_mb": _current_rss_mb(),
           "split": {k: summary["split"].get(k) for k in ("kind", "blocks", "val_blocks",
                                                           "unused_windows")},
           "sampling_applied": (summary.get("sampling") or {}).get("applied")}
    return out


def run_fresh(n: int, folder: str, warm_folder: str, labels: str, tile: int,
              block_px: int | None, positive: float | None, profile: str | None = None,
              nice: bool = False) -> dict:
    """:func:`measure` of an ``n``-scene listing in a fresh Python process."""
    spec = {"folder": folder, "warm_folder": warm_folder, "labels": labels, "tile": tile,
            "block_px": block_px, "positive": positive, "profile": profile}
    cmd = [sys.executable, "-m", "bench.geo_plan", "--child", json.dumps(spec)]
    if nice:
        cmd = ["nice", "-n", "19"] + cmd
    proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{n} scenes: the child failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["scenes"] != n:
        raise RuntimeError(f"{n} scenes listed, the plan kept {res['scenes']}")
    return res


def headline(runs: dict[int, dict], peaks: dict[int, float] | None = None) -> dict:
    """The headline numbers: the per-scene ratio of the plan's CPU seconds (the planning
    process's own time: wall seconds on cores shared with other work measure them as much as
    the plan), and of its wall seconds next to it; the RSS growth of ``peaks`` (per size, the
    highest peak over its repeats; default the runs' own)."""
    lo, hi = min(runs), max(runs)
    peaks = peaks or {n: r["peak_rss_mb"] for n, r in runs.items()}
    per = {n: r["plan_cpu_s"] / n for n, r in runs.items()}
    wall = {n: r["plan_s"] / n for n, r in runs.items()}
    return {
        "geo_train_plan_s_per_scene_ratio": round(per[hi] / per[lo], 3),
        "geo_train_plan_wall_s_per_scene_ratio": round(wall[hi] / wall[lo], 3),
        "geo_train_plan_rss_growth_pct": round(100 * (peaks[hi] / peaks[lo] - 1), 1),
        "geo_train_plan_s_per_scene": round(per[hi], 4),
        "geo_train_plan_items": runs[hi]["train_items"] + runs[hi]["val_items"],
    }


def top_costs(stats_path: str, n: int = 25) -> str:
    """The profile's top ``n`` functions by cumulative and by own time (pstats text)."""
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(stats_path, stream=buf).strip_dirs()
    st.sort_stats("cumulative").print_stats(n)
    st.sort_stats("tottime").print_stats(n)
    return buf.getvalue()


def write_md(path: Path, cmd: str, started: str, load_start, runs: dict, peaks: dict,
             res: dict, args, profile_text: str | None) -> None:
    load_end = [round(v, 2) for v in os.getloadavg()]
    rows = "\n".join(
        f"| {n} | {r['train_items']} / {r['val_items']} | {r['positive_windows']} | "
        f"{r['plan_cpu_s']} | {r['plan_cpu_s'] / n * 1000:.1f} | {r['plan_s']} | "
        f"{r['plan_s'] / n * 1000:.1f} | {r['warmup_plan_s']} | "
        f"{r['rss_after_imports_mb']} | {peaks[n]} | {r['plan_json_mb']} |"
        for n, r in sorted(runs.items()))
    pos = ("`positive_fraction: 0.5` (every training window's labels read once for its flag)"
           if args.positive is not None else "no `positive_fraction` (`--no-positive`)")
    split = (f"`data.split.spatial.block_px: {args.block_px}`" if args.block_px
             else "the random split")
    text = f"""## Training's data plan over a listed archive (issue 29)

Command: `{cmd}` ({started}; {cpu_label()}, load average {load_start} at the start, {load_end} at the end; the cores shared with other work, so wall seconds are pessimistic and CPU seconds are the headline).

`jobs.training.data.plan_data` of a `raster` source listing a folder of N scenes (`data.source.scenes`: hard links to the first N of {max(runs) + WARM} GeoTIFFs, {args.side}² px, 3-band uint8, UTM 33N 10 m, tiled, each at its own place on a grid) with ONE GeoParquet label layer for all of them (EPSG:4326, bbox covering column, Hilbert-sorted, row groups of {args.row_group} rows, {args.polys} boxes a scene), `tile: {args.tile}`, {split}, {pos}. Each size in a fresh process: imports, a warm-up plan of 2 other scenes (one-time set-up: GDAL/PROJ, the Parquet footer), then the timed plan; plan CPU s = the process's CPU time over the plan (`time.process_time`: what the plan costs, whatever else the shared cores run), wall s next to it; peak RSS = the process's `VmHWM` (imports included; `ru_maxrss` would carry this script's own high-water mark into the child), the highest over the repeats of a size.

| scenes | train / val windows | positive train windows | plan CPU s | CPU ms / scene | plan wall s | wall ms / scene | warm-up plan wall s | RSS after imports MB | peak RSS MB | plan as JSON MB |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

`geo_train_plan_s_per_scene_ratio` = {res['geo_train_plan_s_per_scene_ratio']} (CPU seconds; target <= 1.2, {max(runs):,} vs {min(runs):,} scenes; wall seconds: `geo_train_plan_wall_s_per_scene_ratio` = {res['geo_train_plan_wall_s_per_scene_ratio']}), `geo_train_plan_rss_growth_pct` = {res['geo_train_plan_rss_growth_pct']} (target <= 10), `geo_train_plan_s_per_scene` = {res['geo_train_plan_s_per_scene']}, `geo_train_plan_items` = {res['geo_train_plan_items']}.
"""
    if profile_text:
        text += f"""
cProfile of the timed plan at {max(runs):,} scenes (top functions, cumulative then own time):

```
{profile_text.strip()}
```
"""
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--side", type=int, default=128, help="scene side (px)")
    ap.add_argument("--tile", type=int, default=64, help="data.source.tile (px)")
    ap.add_argument("--block-px", type=int, default=256,
                    help="data.split.spatial.block_px (0 = random split)")
    ap.add_argument("--no-positive", dest="positive", action="store_const", const=None,
                    default=0.5, help="plan without positive_fraction")
    ap.add_argument("--polys", type=int, default=6, help="label boxes per scene")
    ap.add_argument("--row-group", type=int, default=2000, help="GeoParquet row group rows")
    ap.add_argument("--repeats", type=int, default=1,
                    help="fresh processes per size (the fastest kept)")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile the timed plan at the largest size (a separate run)")
    ap.add_argument("--workdir", default=str(REPO / ".bench" / "geo_plan"))
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "results_geo_plan.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "GEO_PLAN_RESULTS.md"))
    ap.add_argument("--nice", action="store_true", help="children under nice -n 19")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(**spec)), flush=True)
        return 0
    if len(set(args.sizes)) < 2:
        ap.error("--sizes: give at least two different sizes")
    sizes = sorted(set(args.sizes))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S"), [round(v, 2) for v in
                                                               os.getloadavg()]
    t0 = time.perf_counter()
    data = make_data(work, max(sizes) + WARM, args.side, args.tile, args.polys, args.row_group)
    log(f"{len(data['scenes'])} scenes and {data['labels']} ready in "
        f"{time.perf_counter() - t0:.1f} s", TAG)
    warm = listing_folder(work, data["scenes"][-WARM:], "warm")
    runs: dict[int, dict] = {}  # per size, the run of least plan CPU time
    peaks: dict[int, float] = {}  # per size, the highest peak RSS of its runs
    every: dict[str, list] = {}
    block_px = args.block_px or None
    for n in sizes:
        folder = listing_folder(work, data["scenes"][:n], f"list_{n}")
        for rep in range(args.repeats):
            r = run_fresh(n, folder, warm, data["labels"], args.tile, block_px, args.positive,
                          nice=args.nice)
            log(f"{n} scenes (run {rep + 1}): plan {r['plan_cpu_s']} CPU s, {r['plan_s']} s "
                f"({r['plan_cpu_s'] / n * 1000:.1f} CPU ms/scene), peak RSS "
                f"{r['peak_rss_mb']} MB, "
                f"{r['train_items']} + {r['val_items']} windows", TAG)
            if n not in runs or r["plan_cpu_s"] < runs[n]["plan_cpu_s"]:
                runs[n] = r
            peaks[n] = max(peaks.get(n, 0.0), r["peak_rss_mb"])
            every.setdefault(str(n), []).append(r)
    res = headline(runs, peaks)
    profile_text = None
    if args.profile:
        n = max(sizes)
        stats = str(work / f"plan_{n}.prof")
        run_fresh(n, listing_folder(work, data["scenes"][:n], f"list_{n}"), warm,
                  data["labels"], args.tile, block_px, args.positive, profile=stats,
                  nice=args.nice)
        profile_text = top_costs(stats)
        print(profile_text)
    cmd = "python -m bench.geo_plan " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        **res, "geo_train_plan_runs": {str(n): r for n, r in runs.items()},
        "geo_train_plan_peak_rss_mb": {str(n): v for n, v in peaks.items()},
        "geo_train_plan_every_run": every,
        "geo_train_plan_params": {"sizes": sizes, "side": args.side, "tile": args.tile,
                                  "block_px": block_px, "positive_fraction": args.positive,
                                  "polys_per_scene": args.polys, "row_group": args.row_group,
                                  "repeats": args.repeats},
        "geo_train_plan_started": started, "geo_train_plan_machine": cpu_label()},
        indent=2) + "\n")
    write_md(Path(args.md), cmd.strip(), started, load_start, runs, peaks, res, args,
             profile_text)
    for k, v in res.items():
        print(f"{k} = {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
