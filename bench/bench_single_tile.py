"""Benchmark S1 (issue 18 item 1): a one-tile scene must use every core.

S1_single_tile_efficiency = the model-only seconds of the scene's one tile with every core as
torch threads ÷ the job's pipeline (steady: end of planning -> last scene finalized; model
load, read, predict, write, COGs, vectors, stats) seconds on that same one-tile scene, same
run, same precision. Per model (``vit_b``, random weights in the official layout: one 1024²
tile from a 512² crop of ``../shared/data/geotiff/RGB.byte.tif`` when it exists, else a
synthetic GeoTIFF; ``vit_tiny``: a 224² crop = its one 256² tile) and per engine (local, Ray).
The layout before this change (``predict.torch_threads=1``: one single-threaded lane) runs too,
as the "before" column. Each job runs once (the machine is shared: load averages are quoted).

    .venv/bin/python -m bench.bench_single_tile [--models vit_b vit_tiny] [--no-before]

Writes bench/results/results_single_tile.json and bench/results/SINGLE_TILE_RESULTS.md (merge_results), with
bench/results/SINGLE_TILE_NOTES.md appended; ``--render`` rebuilds the markdown from the JSON only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# as the job runs its model (jobs/inference/model_preload.py import_model_code): spinning OpenMP waiters on a
# shared machine stall every parallel region, which would make the reference slower than the job
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.bench_segment import make_bundle, run_job, tile_geometry  # noqa: E402
from bench.common import log, machine  # noqa: E402
from ingest import Radiometry, TileGrid, open_scene
from ingest.synthetic import make_geotiff
from jobs.crack_sweep.pipeline import boundless_crop

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "geotiff" / "RGB.byte.tif"
TARGET = 0.8
NOTES = REPO / "bench" / "results" / "SINGLE_TILE_NOTES.md"  # the findings, written by hand


def one_tile_scene(path: Path, side: int) -> tuple[str, str]:
    """A ``side``² GeoTIFF: a central crop of the real Landsat scene, else synthetic."""
    import rasterio
    from rasterio.windows import Window

    if REAL.exists():
        with rasterio.open(REAL) as src:
            win = Window((src.width - side) // 2, (src.height - side) // 2, side, side)
            profile = {**src.profile, "width": side, "height": side,
                       "transform": src.window_transform(win), "tiled": True,
                       "blockxsize": 256 if side >= 256 else 16 * (side // 16),
                       "blockysize": 256 if side >= 256 else 16 * (side // 16)}
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=win))
        return str(path), f"{side}² crop of {REAL.name}"

    make_geotiff(str(path), side, side, count=3, dtype="uint8", seed=3)
    return str(path), f"{side}² synthetic GeoTIFF"


class ModelOnly:
    """The model on the scene's one tile (read as the job reads it), loaded and warmed once so
    that it can be timed right before and after each job (the machine's load drifts)."""

    def __init__(self, bundle: str, scene: str, threads: int):
        self.crop, self.ok, self.tp = _one_tile(bundle, scene, threads)
        self.threads = threads
        self.call()  # warm-up (oneDNN kernels, allocator)

    def call(self) -> float:
        t0 = time.perf_counter()
        self.tp(self.crop[None], self.ok[None])
        return time.perf_counter() - t0

    def seconds(self, reps: int) -> list[float]:
        return [self.call() for _ in range(reps)]


def _one_tile(bundle: str, scene: str, threads: int):
    import torch

    from samsp.predict import TilePredictor

    torch.set_num_threads(threads)
    sc = open_scene(scene)
    tile, overlap = tile_geometry(bundle)
    (t,) = list(TileGrid(sc.height, sc.width, tile, overlap))
    from rasterio.windows import Window

    data, valid = sc.read(Window(0, 0, sc.width, sc.height))
    crop, ok = boundless_crop(Radiometry.identity(sc.count).apply(data, valid), valid, t.read_window)
    return crop, ok, TilePredictor(bundle)


def measure(model_type: str, work: Path, before: bool, reps: int) -> dict:
    bundle = make_bundle(work / f"bundle_{model_type}", model_type)
    tile, overlap = tile_geometry(bundle)
    scene, what = one_tile_scene(work / f"scene_{model_type}.tif", min(512, tile - overlap))
    cores = os.cpu_count() or 1
    log(f"{model_type}: {what}, one {tile}² tile; model only on {cores} thread(s)")
    model = ModelOnly(bundle, scene, cores)
    out: dict = {"scene": what, "tile": tile, "precision": model.tp.precision, "jobs": {}}
    layouts = [("auto", ())] + ([("before", ("predict.torch_threads=1",))] if before else [])
    for engine in ("local", "ray"):
        for name, sets in layouts:
            # model-only right before and after the job: paired with it under the same load
            runs = model.seconds(reps)
            j = run_job(scene, work / f"out_{model_type}_{engine}_{name}", bundle, 8,
                        engine=engine, sets=sets)
            runs += model.seconds(reps)
            mo, steady = statistics.median(runs), j["seconds"]["steady"]
            out["jobs"][f"{engine}_{name}"] = {
                "steady_s": steady, "seconds": j["seconds"], "model_only_s": round(mo, 3),
                "model_only_runs": [round(x, 3) for x in runs],
                "efficiency": round(mo / steady, 3),
                # the issue's own definition: ÷ the job's pipeline seconds (first tile to last
                # written; the finalize that follows is outside it)
                "efficiency_pipeline": round(mo / j["seconds"]["pipeline"], 3),
                "load_avg": [round(x, 2) for x in os.getloadavg()]}
            log(f"  {engine} {name}: model only {mo:.2f}s {[round(x, 2) for x in runs]}, "
                f"steady {steady:.2f}s -> S1 {mo / steady:.3f}; pipeline "
                f"{j['seconds']['pipeline']:.2f}s -> {mo / j['seconds']['pipeline']:.3f}")
    return out


def markdown(r: dict) -> str:
    rows = []
    for model, m in r["models"].items():
        for key, j in m["jobs"].items():
            engine, layout = key.split("_", 1)
            sec = j["seconds"]
            rows.append(f"| {model} ({m['precision']}) | {engine} | {layout} | {j['model_only_s']:.2f} | "
                        f"{j['steady_s']:.2f} | {sec.get('pipeline', 0):.2f} | "
                        f"**{j['efficiency']:.3f}** | {j.get('efficiency_pipeline', '-')} | "
                        f"{sec.get('total', 0):.2f} | {j['load_avg']} |")
    mach = r["machine"]
    return f"""## Single-tile efficiency (S1, issue 18)

`{r['command']}` -- {r['date']}; {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']};
load average at the start {mach['load_avg']} (the cores were shared with other work: figures
are under load). S1 = model-only seconds of the scene's one tile with all {mach['cores']} threads
(median of the calls right before and after that job, in the benchmark's process, model loaded
and warm, OMP_WAIT_POLICY=PASSIVE like the job) ÷ the job's steady seconds (end of planning -> last scene finalized: model load, read, predict,
write, COGs, vectors, stats) on that scene; target >= {TARGET}. "÷ pipeline" is the issue's literal
definition (÷ the job's pipeline seconds: the finalize after the last tile is left out); the
headline keys use the stricter steady time, the `_pipeline` keys the literal one. The local
engine reads the bundle while the scenes are planned (jobs/inference/model_preload.py), so its load sits in
"job total" (planning) rather than in steady/pipeline wherever planning takes longer. "auto" is the new layout (few
batches: one lane/actor with every core as torch threads); "before" pins
`predict.torch_threads=1` (one single-threaded lane: the layout before). vit_b: random weights
in the official layout, {r['models'].get('vit_b', {}).get('scene', '-')}.

| model | engine | layout | model only s | job steady s | of which pipeline s | S1 (÷ steady) | ÷ pipeline | job total s | load avg after |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Numbers in `bench/results/results_single_tile.json`.
""" + (NOTES.read_text() if NOTES.exists() else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vit_b", "vit_tiny"])
    ap.add_argument("--no-before", action="store_true", help="skip the torch_threads=1 runs")
    ap.add_argument("--reps", type=int, default=2, help="model-only calls before/after each job")
    ap.add_argument("--work", default=str(REPO / ".bench" / "single_tile"))  # git-ignored
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "results_single_tile.json"))
    ap.add_argument("--render", action="store_true", help="only rebuild the markdown")
    args = ap.parse_args(argv)
    if args.render:
        r = json.loads(Path(args.json).read_text())
        (REPO / "bench" / "results" / "SINGLE_TILE_RESULTS.md").write_text(markdown(r))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    r = {"command": "python -m bench.bench_single_tile " + " ".join(argv or sys.argv[1:]),
         "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "models": {}}
    for model_type in args.models:
        r["models"][model_type] = measure(model_type, work, not args.no_before, args.reps)
    for model_type, m in r["models"].items():
        for key, j in m["jobs"].items():
            suffix = "" if key == "ray_auto" else "_" + key.replace("_auto", "")
            r[f"S1_single_tile_efficiency_{model_type}{suffix}"] = j["efficiency"]
            if "efficiency_pipeline" in j:
                r[f"S1_single_tile_efficiency_{model_type}{suffix}_pipeline"] = \
                    j["efficiency_pipeline"]
    if "vit_b" in r["models"]:
        r["S1_single_tile_efficiency"] = r["models"]["vit_b"]["jobs"]["ray_auto"]["efficiency"]
    Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    (REPO / "bench" / "results" / "SINGLE_TILE_RESULTS.md").write_text(markdown(r))
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
