"""Benchmark of the segmentation job (issue 5).

P1  pipeline efficiency = end-to-end Mpx/s of ``jobs/segment.py`` / model-only Mpx/s, same bundle,
    same batch size, same tiles, same machine. Model-only = ``TilePredictor`` on batches of the
    scene's own tiles (already read and stretched, in memory), the faster of 1 torch thread and
    one per core; model-only runs alternate with job runs (the machine is shared) and medians
    are compared. Reported
    twice: over the job's steady state (Ray up -> last scene finalized: reads, inference, writes,
    COGs, quicklook, stats) -- the key ``P1_pipeline_efficiency`` -- and over the whole process
    (interpreter + Ray start-up included), ``P1_pipeline_efficiency_total``.
P5  job vs a plain sequential loop (read tile -> model (batch 1) -> write core, one at a time, then
    the same two COGs) on the same tiles: ``P5_vs_sequential_ratio`` = sequential seconds / job
    steady seconds (``..._total``: / whole job process).
RSS peak memory of the job's process tree (driver + Ray daemons + workers; PSS summed, so shared
    pages count once, and the largest single RSS) on 2048², 4096², 8192², 16384² scenes.

    .venv/bin/python -m bench.bench_segment            # full run (~15 min on 2 idle cores)
    .venv/bin/python -m bench.bench_segment --quick    # small sizes, smoke check

Writes bench/results/results_segment.json and bench/results/SEGMENT_RESULTS.md (a section for BENCHMARKS.md, with
bench/results/SEGMENT_NOTES.md -- the findings, written by hand -- appended).
P1/P5 run the committed crack model (``models/samsp-crack-tiny``, ``vit_tiny``, 256 px tiles) on the
demo's synthetic 8192² crack scene, so outputs compress like real ones; the memory sweep uses a
random ``vit_micro`` bundle (128 px tiles: ~22,000 tiles planned at 16384²) on ingest's pattern.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from ingest import MaskWriter, Radiometry, TileGrid, open_scene, prob_to_u8, storage
from ingest.synthetic import make_geotiff
from jobs.local_stack.demo_scene import CrackScene, write_scene

REPO = Path(__file__).resolve().parents[1]
SEGMENT = REPO / "jobs" / "segment.py"


def log(msg: str) -> None:
    print(f"[bench_segment {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- fixtures

def make_bundle(path: Path, model_type: str) -> str:
    import torch

    import samsp

    if (path / "bundle.json").exists():
        return str(path)
    torch.manual_seed(0)
    samsp.save_bundle(samsp.SamSP(samsp.build_sam(model_type), iterations=1, prompt="box"),
                      str(path), {"threshold": 0.5, "provenance": {"bench": "random weights"}})
    return str(path)


def make_crack_scene(path: Path, size: int) -> str:
    """The demo's synthetic inspection scene (pavement texture, procedural cracks) as a COG:
    with the committed crack model, outputs compress like real ones (sparse masks, smooth
    probabilities), which a random model on a random scene does not."""
    import rasterio.shutil

    if not path.exists():
        tmp = Path(storage.local_tempdir(prefix="samsp-bench-"))
        try:
            write_scene(CrackScene(size=size, seed=3), tmp / "raw.tif", tmp / "truth.tif")
            rasterio.shutil.copy(str(tmp / "raw.tif"), str(path), driver="COG", COMPRESS="DEFLATE",
                                 BLOCKSIZE=512, NUM_THREADS="ALL_CPUS")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(path)


def make_batch_folder(scene: str, folder: Path, n: int) -> str:
    """A folder holding exactly ``n`` names for one scene file (hard links, else copies): a batch
    of scenes for the job, each with its own scene id and outputs."""
    shutil.rmtree(folder, ignore_errors=True)  # nothing left from a run on another scene
    folder.mkdir(parents=True)
    for i in range(n):
        dst = folder / f"{Path(scene).stem}_{i}.tif"
        try:
            os.link(scene, dst)
        except OSError:
            shutil.copyfile(scene, dst)
    return str(folder)


def make_scene(path: Path, size: int) -> str:

    if not path.exists():
        make_geotiff(str(path), size, size, count=3, dtype="uint8", nodata=0, blocksize=512,
                     compress="DEFLATE", cog=True)
    return str(path)


def tile_geometry(bundle: str) -> tuple[int, int]:
    meta = json.loads((Path(bundle) / "bundle.json").read_text())
    tile = int(meta["image_size"])
    return tile, tile // 8


# ----------------------------------------------------------------------------- measurements

def model_only(bundle: str, scene_uri: str, batch: int, min_seconds: float = 12.0,
               precision: str = "auto") -> dict:
    """Tiles/s of TilePredictor on the scene's own tiles (read + stretched beforehand), run
    every way this machine can run it: one stream with 1 torch thread, one stream with one
    thread per core, and one single-threaded stream per core sharing the model ("lanes": how
    the job's CPU actors and the local engine run it). ``best_single_stream`` is the faster of
    the first two (the reference before the job ran lanes); the result's own numbers are the
    best of all three (the strict reference)."""
    n = os.cpu_count() or 1
    runs = {str(t): model_only_run(bundle, scene_uri, batch, t, min_seconds, precision=precision)
            for t in sorted({1, n})}
    single = max(runs.values(), key=lambda r: r["tiles_per_s"])
    if n > 1:
        runs[f"{n} lanes"] = model_only_run(bundle, scene_uri, batch, 1, min_seconds, lanes=n,
                                            precision=precision)
    best = max(runs.values(), key=lambda r: r["tiles_per_s"])
    return {**best, "by_threads": {t: round(r["tiles_per_s"], 3) for t, r in runs.items()},
            "single_stream": {k: single[k] for k in ("tiles_per_s", "mpx_per_s", "torch_threads")}}


def model_only_run(bundle: str, scene_uri: str, batch: int, threads: int, min_seconds: float,
                   lanes: int = 1, precision: str = "auto") -> dict:
    """One way of running the model alone: ``lanes`` streams of TilePredictor, ``threads`` torch
    threads, over the scene's first tiles for at least ``min_seconds``; tiles/s and Mpx/s."""
    import concurrent.futures as cf

    import numpy as np
    import torch

    from samsp.predict import TilePredictor

    torch.set_num_threads(threads)
    scene = open_scene(scene_uri)
    tile, overlap = tile_geometry(bundle)
    grid = TileGrid(scene.height, scene.width, tile, overlap)
    rad = Radiometry.identity(scene.count)
    tiles = []
    for i, t in enumerate(grid):
        if i >= 4 * batch:
            break
        data, valid = scene.read(t.read_window)
        tiles.append(rad.apply(data, valid))
    x = np.stack(tiles)
    tp = TilePredictor(bundle, precision=precision)
    tp(x[:batch])  # warm-up

    def stream() -> int:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_seconds or n < 4 * batch:
            for i in range(0, len(x), batch):
                tp(x[i:i + batch])
                n += len(x[i:i + batch])
        return n

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=lanes) as pool:
        n = sum(pool.map(lambda _: stream(), range(lanes)))
    secs = time.perf_counter() - t0
    tps = n / secs
    px_per_tile = scene.height * scene.width / len(grid)
    return {"tiles_per_s": tps, "mpx_per_s": tps * px_per_tile / 1e6, "tiles": len(grid),
            "seconds_all_tiles": len(grid) / tps, "torch_threads": torch.get_num_threads(),
            "lanes": lanes, "precision": tp.precision}


def sequential(bundle: str, scene_uri: str, workdir: Path, threads: int = 1) -> dict:
    """read tile -> model (batch 1) -> write core, one at a time; then the mask and prob COGs."""
    import torch

    from samsp.predict import TilePredictor

    torch.set_num_threads(threads)
    out = workdir / "sequential"
    shutil.rmtree(out, ignore_errors=True)
    tp = TilePredictor(bundle)
    t0 = time.perf_counter()
    scene = open_scene(scene_uri)
    rad = Radiometry.identity(scene.count)
    tile, overlap = tile_geometry(bundle)
    grid = TileGrid(scene.height, scene.width, tile, overlap)
    writer = MaskWriter(str(out / "mask.zarr"), like=scene, chunk=grid.core_size, mode="w")
    for t in grid:
        data, valid = scene.read(t.read_window)
        p = tp(rad.apply(data, valid)[None])["prob"][0]
        rs, cs = t.core_slices
        writer.write(t.core_window, prob_to_u8(p)[rs, cs], (p > tp.threshold)[rs, cs].astype("uint8"),
                     valid=valid[rs, cs])
    t_tiles = time.perf_counter() - t0
    writer.to_cog(str(out / "mask.tif"), which="mask")
    writer.to_cog(str(out / "prob.tif"), which="prob")
    return {"seconds": time.perf_counter() - t0, "seconds_tiles": t_tiles, "tiles": len(grid)}


def cpu_role(pid: int, sid: int, cmdline: str) -> str:
    """Which part of the job a process is, for the CPU-seconds breakdown."""
    if pid == sid:
        return "driver"
    if "Predict" in cmdline:  # Predictor / PredictWriter actors
        return "model actors"
    if "read_tiles" in cmdline or "ray::IDLE" in cmdline or "default_worker.py" in cmdline:
        return "read tasks"
    return "Ray daemons and helpers"


def _session_cpu(sid: int, cpu: dict) -> None:
    """Update ``cpu[pid] = (role, user+system seconds)`` for the processes of session ``sid``
    (the last value seen per process: one that exits between samples loses < 0.5 s)."""
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) != sid:
                continue
            t = p.cpu_times()
            role = cpu.get(p.pid, (None,))[0]
            if role != "model actors":  # a worker's title changes (python -> ray::IDLE -> actor)
                role = cpu_role(p.pid, sid, " ".join(p.cmdline()))
            cpu[p.pid] = (role, t.user + t.system)
        except (psutil.Error, ProcessLookupError, PermissionError, OSError):
            continue


def _session_memory(sid: int) -> tuple[float, float, float]:
    """(sum PSS MB, max RSS MB, driver RSS MB) of the processes in session ``sid``."""
    import psutil

    pss = rss_max = driver = 0.0
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) != sid:
                continue
            info = p.memory_full_info()
            pss += info.pss / 2**20
            rss_max = max(rss_max, info.rss / 2**20)
            if p.pid == sid:
                driver = info.rss / 2**20
        except (psutil.Error, ProcessLookupError, PermissionError, OSError):
            continue
    return pss, rss_max, driver


def run_job(scene_uri: str, out: Path, bundle: str, batch: int, sample_memory: bool = False,
            engine: str = "ray", sets: tuple[str, ...] = ()) -> dict:
    """jobs/segment.py in a fresh process (own session); returns its summary line + memory."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(SEGMENT), "--input", scene_uri, "--output", str(out), "--model", bundle,
           "--set", f"predict.batch_size={batch}", "--set", f"pipeline.engine={engine}"]
    for item in sets:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    peak = {"pss_sum_mb": 0.0, "rss_max_mb": 0.0, "driver_rss_mb": 0.0}
    cpu: dict[int, tuple] = {}
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            _session_cpu(proc.pid, cpu)
            if sample_memory:
                pss, rss, drv = _session_memory(proc.pid)
                peak["pss_sum_mb"] = max(peak["pss_sum_mb"], pss)
                peak["rss_max_mb"] = max(peak["rss_max_mb"], rss)
                peak["driver_rss_mb"] = max(peak["driver_rss_mb"], drv)
            stop.wait(0.5)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    text, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    _reap(proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"segment job failed (rc={proc.returncode}):\n{text[-3000:]}")
    summary = json.loads(text.strip().splitlines()[-1])
    summary["wall"] = wall
    by_role: dict[str, float] = {}
    for role, secs in cpu.values():
        by_role[role] = by_role.get(role, 0.0) + secs
    summary["cpu_s"] = {k: round(v, 1) for k, v in sorted(by_role.items())}
    if sample_memory:
        summary["memory"] = {k: round(v, 1) for k, v in peak.items()}
    return summary


def _reap(sid: int) -> None:
    import signal

    for pid in [int(e) for e in os.listdir("/proc") if e.isdigit()]:
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio-size", type=int, default=8192, help="scene side for P1/P5")
    ap.add_argument("--ratio-model", default=str(REPO / "models" / "samsp-crack-tiny"),
                    help="bundle folder, or a model type for a random-weight bundle")
    ap.add_argument("--ratio-scene", choices=["crack", "random"], default="crack",
                    help="the demo's synthetic crack scene (default) or ingest's random pattern")
    ap.add_argument("--rss-sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    ap.add_argument("--rss-model", default="vit_micro")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="model-only/job alternations for P1")
    ap.add_argument("--batch-scenes", type=int, default=4,
                    help="also run each engine once on a folder of this many copies of the P1 "
                         "scene (a nightly batch: fixed start-up costs amortised); 0 = skip")
    ap.add_argument("--workdir", default=str(REPO / ".bench" / "segment"))
    ap.add_argument("--quick", action="store_true", help="1024² ratios, 1024/2048 memory sweep")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "results_segment.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "SEGMENT_RESULTS.md"))
    ap.add_argument("--notes", default=str(REPO / "bench" / "results" / "SEGMENT_NOTES.md"),
                    help="markdown file appended to the section (the findings written by hand)")
    ap.add_argument("--from-json", action="store_true",
                    help="only rebuild the markdown from --json (e.g. after editing --notes)")
    args = ap.parse_args(argv)
    if args.quick and not args.from_json:
        args.ratio_size, args.rss_sizes = 1024, [1024, 2048]
    return args


def run_ratio_runs(args, work: Path, scene: str, ratio_bundle: str) -> tuple[list, list, list]:
    """P1 / P5 on one scene. The machine is shared and its load swings: alternate model-only /
    job / model-only / job / ... and compare medians (and each job with the mean of the
    model-only runs on either side of it). Returns (model-only runs, Ray jobs, local jobs)."""
    mo_runs, jobs, local_jobs = [], [], []
    for r in range(args.repeats):
        log(f"model-only #{r + 1}: {args.ratio_model}, batch {args.batch}, {args.ratio_size}² tiles")
        mo_runs.append(model_only(ratio_bundle, scene, args.batch))
        log(f"  {mo_runs[-1]['tiles_per_s']:.2f} tiles/s = {mo_runs[-1]['mpx_per_s']:.3f} Mpx/s "
            f"(by threads: {mo_runs[-1]['by_threads']})")
        log(f"job #{r + 1} (segment.py, embedded Ray, all cores)")
        jobs.append(run_job(scene, work / "job_ratio", ratio_bundle, args.batch, sample_memory=True))
        j = jobs[-1]
        log(f"  steady {j['seconds']['steady']:.1f}s, process {j['wall']:.1f}s, {j['actors']} actor(s)")
        log(f"job #{r + 1}, pipeline.engine=local (same stages in one process, no Ray)")
        local_jobs.append(run_job(scene, work / "job_local", ratio_bundle, args.batch, engine="local"))
        j = local_jobs[-1]
        log(f"  steady {j['seconds']['steady']:.1f}s, process {j['wall']:.1f}s")
    return mo_runs, jobs, local_jobs


def run_batch_jobs(args, work: Path, scene: str, ratio_bundle: str) -> dict[str, dict]:
    """Each engine once on a folder of ``--batch-scenes`` copies of the scene."""
    batch_jobs: dict[str, dict] = {}
    if args.batch_scenes > 1:
        folder = make_batch_folder(scene, work / f"batch_{args.batch_scenes}", args.batch_scenes)
        for engine in ("ray", "local"):
            log(f"batch job: {args.batch_scenes} scenes, engine {engine}")
            batch_jobs[engine] = run_job(folder, work / f"job_batch_{engine}", ratio_bundle,
                                         args.batch, engine=engine)
            j = batch_jobs[engine]
            log(f"  steady {j['seconds']['steady']:.1f}s, process {j['wall']:.1f}s")
    return batch_jobs


def run_sequential_and_last(args, work: Path, scene: str, ratio_bundle: str,
                            mo_runs: list) -> tuple[dict, int]:
    """The sequential loop (P5's reference), then the last model-only run (appended to
    ``mo_runs``). Returns (the loop's result, its torch threads)."""
    log("sequential loop (read -> model batch 1 -> write, one tile at a time)")
    # the faster thread count of the last model-only run (what a plain loop would pick)
    by = {k: v for k, v in mo_runs[-1]["by_threads"].items() if "lanes" not in k}
    seq_threads = int(max(by, key=by.get))  # a plain loop runs one stream
    seq = sequential(ratio_bundle, scene, work, threads=seq_threads)
    log(f"  {seq['seconds']:.1f}s")
    log("model-only, last")
    mo_runs.append(model_only(ratio_bundle, scene, args.batch))
    log(f"  {mo_runs[-1]['tiles_per_s']:.2f} tiles/s (by threads: {mo_runs[-1]['by_threads']})")
    return seq, seq_threads


def run_memory_sweep(args, work: Path, scenes: dict[int, str], rss_bundle: str) -> dict[int, dict]:
    """Memory vs scene size: one job per ``--rss-sizes`` scene."""
    rss = {}
    for size in args.rss_sizes:
        log(f"memory: job on {size}² with {args.rss_model}")
        res = run_job(scenes[size], work / f"job_rss_{size}", rss_bundle, args.batch, sample_memory=True)
        rss[size] = {"tiles": res["tiles_computed"], "seconds": round(res["wall"], 1), **res["memory"]}
        log(f"  {rss[size]}")
    return rss


def summarise_ratio_runs(mo_runs: list, jobs: list, local_jobs: list) -> SimpleNamespace:
    """Medians of the alternated runs: model-only reference, Ray jobs, local jobs."""
    import numpy as np

    s = SimpleNamespace(mpx=jobs[0]["pixels"] / 1e6)
    s.mo_mpx = [m["mpx_per_s"] for m in mo_runs]
    s.job_steady = [s.mpx / j["seconds"]["steady"] for j in jobs]
    s.job_total = [s.mpx / j["wall"] for j in jobs]
    s.paired = [s.job_steady[i] / ((s.mo_mpx[i] + s.mo_mpx[i + 1]) / 2) for i in range(len(jobs))]
    s.mo = {**mo_runs[0], "mpx_per_s": statistics.median(s.mo_mpx),
            "tiles_per_s": statistics.median(m["tiles_per_s"] for m in mo_runs)}
    # the reference before the job ran its model as lanes: the best single stream
    s.mo_single = statistics.median(m["single_stream"]["mpx_per_s"] for m in mo_runs)
    s.job = jobs[int(np.argsort(s.job_steady)[len(jobs) // 2])]  # the median job
    s.job_mpx_steady, s.job_mpx_total = statistics.median(s.job_steady), statistics.median(s.job_total)
    s.steady_s = statistics.median(j["seconds"]["steady"] for j in jobs)
    s.wall_s = statistics.median(j["wall"] for j in jobs)
    s.local_steady = [s.mpx / j["seconds"]["steady"] for j in local_jobs]
    s.local_job = local_jobs[int(np.argsort(s.local_steady)[len(local_jobs) // 2])]
    s.local_steady_s = statistics.median(j["seconds"]["steady"] for j in local_jobs)
    s.local_wall_s = statistics.median(j["wall"] for j in local_jobs)
    return s


def batch_numbers(batch_jobs: dict[str, dict], mo: dict) -> dict[str, dict]:
    batch = {}
    for engine, j in batch_jobs.items():
        bmpx = j["pixels"] / 1e6
        batch[engine] = {"scenes": j["ok"], "tiles": j["tiles_computed"], "seconds": j["seconds"],
                         "wall": round(j["wall"], 2), "cpu_s": j["cpu_s"],
                         "P1": round(bmpx / j["seconds"]["steady"] / mo["mpx_per_s"], 3),
                         "P1_total": round(bmpx / j["wall"] / mo["mpx_per_s"], 3)}
    return batch


def ratio_results(s: SimpleNamespace, seq: dict, seq_threads: int, batch: dict,
                  mo_runs: list) -> dict:
    """P1 / P5 and what they are made of, in the results file's order."""
    mo, job = s.mo, s.job
    return {
        "P1_pipeline_efficiency": round(s.job_mpx_steady / mo["mpx_per_s"], 3),
        "P1_paired_runs": [round(v, 3) for v in s.paired],
        "P1_pipeline_efficiency_total": round(s.job_mpx_total / mo["mpx_per_s"], 3),
        "P1_target": 0.90,
        "P5_vs_sequential_ratio": round(seq["seconds"] / s.steady_s, 3),
        "P5_vs_sequential_ratio_total": round(seq["seconds"] / s.wall_s, 3),
        "P5_target": 1.5,
        # against the best *single-stream* model-only run (1 or N torch threads in one stream),
        # the reference used before the lanes: kept for comparison with earlier results
        "P1_pipeline_efficiency_vs_single_stream": round(s.job_mpx_steady / s.mo_single, 3),
        "P1_pipeline_efficiency_local_vs_single_stream": round(statistics.median(s.local_steady) / s.mo_single, 3),
        "model_only_single_stream_mpx_per_s": round(s.mo_single, 4),
        # the same job with pipeline.engine=local (one process, no Ray): not the default engine
        "P1_pipeline_efficiency_local": round(statistics.median(s.local_steady) / mo["mpx_per_s"], 3),
        "P1_pipeline_efficiency_local_total": round(s.mpx / s.local_wall_s / mo["mpx_per_s"], 3),
        "P5_vs_sequential_ratio_local": round(seq["seconds"] / s.local_steady_s, 3),
        "P5_vs_sequential_ratio_local_total": round(seq["seconds"] / s.local_wall_s, 3),
        "local_job_mpx_per_s_steady_runs": [round(v, 4) for v in s.local_steady],
        "local_job_seconds": s.local_job["seconds"], "local_job_cpu_s": s.local_job["cpu_s"],
        # the same scene N times in one job, one run per engine (not alternated)
        "batch": batch,
        "P1_pipeline_efficiency_batch": batch.get("ray", {}).get("P1"),
        "P1_pipeline_efficiency_local_batch": batch.get("local", {}).get("P1"),
        "model_only_mpx_per_s": round(mo["mpx_per_s"], 4),
        "model_only_tiles_per_s": round(mo["tiles_per_s"], 3),
        "model_only_mpx_per_s_runs": [round(v, 4) for v in s.mo_mpx],
        "job_mpx_per_s_steady_runs": [round(v, 4) for v in s.job_steady],
        "job_mpx_per_s_steady": round(s.job_mpx_steady, 4),
        "job_mpx_per_s_total": round(s.job_mpx_total, 4),
        "sequential_mpx_per_s": round(s.mpx / seq["seconds"], 4),
        "job_seconds": job["seconds"], "job_wall_seconds": round(job["wall"], 2),
        "job_actors": job["actors"], "job_memory_mb": job["memory"],
        # CPU seconds of the median job by process role, and what the model alone needs for
        # the same tiles (model-only seconds x torch threads: both cores busy)
        "job_cpu_s": job["cpu_s"], "job_cpu_s_total": round(sum(job["cpu_s"].values()), 1),
        "model_only_cpu_s": round(mo["tiles"] / mo["tiles_per_s"] * mo["torch_threads"]
                                  * mo.get("lanes", 1), 1),
        "sequential_seconds": round(seq["seconds"], 2), "sequential_torch_threads": seq_threads,
        "model_only_tiles_per_s_by_threads": [m["by_threads"] for m in mo_runs],
    }


def memory_results(rss: dict[int, dict], rss_model: str) -> dict:
    """The memory sweep and its growth from the smallest scene to the largest."""
    sizes = list(rss)
    growth = lambda key: round(100.0 * (rss[sizes[-1]][key] / rss[sizes[0]][key] - 1.0), 1)  # noqa: E731
    return {
        "rss_model": rss_model,
        "rss": {str(k): v for k, v in rss.items()},
        "rss_pss_sum_growth_pct": growth("pss_sum_mb"),
        # the last doubling alone: GDAL's block cache (capped) fills up on the smaller scenes
        "rss_pss_sum_growth_last_pct": round(100.0 * (rss[sizes[-1]]["pss_sum_mb"]
                                                      / rss[sizes[-2]]["pss_sum_mb"] - 1.0), 1)
        if len(sizes) > 1 else 0.0,
        "rss_driver_growth_pct": growth("driver_rss_mb"),
    }


def rebuild_markdown(args, notes: str) -> int:
    """``--from-json``: the markdown again from the results file, with the current notes."""
    r = json.loads(Path(args.json).read_text())
    r["notes"] = notes or r.get("notes", "")
    Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    Path(args.md).write_text(markdown(r))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    notes = Path(args.notes).read_text() if args.notes and Path(args.notes).exists() else ""
    if args.from_json:
        return rebuild_markdown(args, notes)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = [round(v, 2) for v in os.getloadavg()]

    if (Path(args.ratio_model) / "bundle.json").exists():
        ratio_bundle = str(Path(args.ratio_model).resolve())
    else:
        ratio_bundle = make_bundle(work / f"bundle_{args.ratio_model}", args.ratio_model)
    rss_bundle = make_bundle(work / f"bundle_{args.rss_model}", args.rss_model)
    scenes = {s: make_scene(work / f"scene_{s}.tif", s) for s in sorted({args.ratio_size, *args.rss_sizes})}
    scene = (make_crack_scene(work / f"crack_{args.ratio_size}.tif", args.ratio_size)
             if args.ratio_scene == "crack" else scenes[args.ratio_size])

    mo_runs, jobs, local_jobs = run_ratio_runs(args, work, scene, ratio_bundle)
    batch_jobs = run_batch_jobs(args, work, scene, ratio_bundle)
    seq, seq_threads = run_sequential_and_last(args, work, scene, ratio_bundle, mo_runs)
    s = summarise_ratio_runs(mo_runs, jobs, local_jobs)
    batch = batch_numbers(batch_jobs, s.mo)
    rss = run_memory_sweep(args, work, scenes, rss_bundle)
    load_end = [round(v, 2) for v in os.getloadavg()]

    results = {
        **ratio_results(s, seq, seq_threads, batch, mo_runs),
        "ratio_scene": f"{args.ratio_size}x{args.ratio_size}x3 uint8 COG"
                       + (" (the demo's synthetic crack scene)" if args.ratio_scene == "crack" else
                          " (ingest.synthetic pattern)"),
        "ratio_tiles": s.mo["tiles"],
        "ratio_model": Path(ratio_bundle).name, "batch_size": args.batch,
        **memory_results(rss, args.rss_model),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_start": load_start, "load_end": load_end},
        "date": started,
        "command": " ".join([".venv/bin/python -m bench.bench_segment", *(argv or sys.argv[1:])]),
        "notes": notes,
    }
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    Path(args.md).write_text(markdown(results))
    log(f"wrote {args.json} and {args.md}")
    print(json.dumps({k: results[k] for k in ("P1_pipeline_efficiency", "P1_pipeline_efficiency_total",
                                               "P5_vs_sequential_ratio", "P5_vs_sequential_ratio_total")}))
    return 0


def batch_md(r: dict) -> str:
    b = r.get("batch") or {}
    if not b:
        return ""
    parts = [f"{'Ray' if e == 'ray' else 'local'} **{v['P1']}** (whole process {v['P1_total']}; "
             f"steady {v['seconds'].get('steady', 0):.1f} s)" for e, v in b.items()]
    first = next(iter(b.values()))
    return (f"- A nightly batch instead of one scene ({first['scenes']} copies of the scene in one "
            f"job, {first['tiles']} tiles, one run per engine, not alternated): P1 {'; '.join(parts)}. Start-up "
            f"(Ray, actors, imports) and the last scene's finalization are paid once per job.\n")


def markdown(r: dict) -> str:
    m = r["machine"]
    rows = "\n".join(
        f"| {k}² | {v['tiles']} | {v['seconds']} | {v['pss_sum_mb']:.0f} | {v['rss_max_mb']:.0f} | "
        f"{v['driver_rss_mb']:.0f} |" for k, v in r["rss"].items())
    js = r["job_seconds"]
    ls = r["local_job_seconds"]
    mo_s = r["ratio_tiles"] / r["model_only_tiles_per_s"]
    return f"""## Segmentation job (issue 5): pipeline efficiency, vs sequential, memory

Command: `{r['command']}` ({r['date']}). Machine: {m['cpus']} cores, no GPU, {m['platform']},
Python {m['python']}; every core. Load average {m['load_start']} at start, {m['load_end']} at the
end; the host is shared, so runs alternate (model-only, job, local job, ...) and medians are used.

Scene: {r['ratio_scene']}, bundle `{r['ratio_model']}`, {r['ratio_tiles']} tiles, batch
{r['batch_size']}. The model runs as {r['job_actors']} single-threaded actors (Ray) / lanes (local).

| measure | Mpx/s | seconds |
|---|---|---|
| model only, best way (TilePredictor on in-memory tiles; tiles/s by way per run {r['model_only_tiles_per_s_by_threads']}; median of runs {r['model_only_mpx_per_s_runs']}) | {r['model_only_mpx_per_s']:.4f} | {mo_s:.1f} (for all tiles) |
| model only, best single stream (1 or {m['cpus']} torch threads) | {r['model_only_single_stream_mpx_per_s']:.4f} | |
| job, Ray engine (default), steady (Ray up -> last scene finalized; runs {r['job_mpx_per_s_steady_runs']}) | {r['job_mpx_per_s_steady']:.4f} | {js.get('steady', 0):.1f} |
| job, Ray engine, whole process (interpreter, plan, Ray start-up included) | {r['job_mpx_per_s_total']:.4f} | {r['job_wall_seconds']:.1f} |
| job, `pipeline.engine=local`, steady (end of plan -> last scene finalized; runs {r['local_job_mpx_per_s_steady_runs']}) | {r['P1_pipeline_efficiency_local'] * r['model_only_mpx_per_s']:.4f} | {ls.get('steady', 0):.1f} |
| sequential loop (read -> model batch 1 -> write, one tile at a time, + COGs; {r['sequential_torch_threads']} torch thread(s)) | {r['sequential_mpx_per_s']:.4f} | {r['sequential_seconds']:.1f} |

- **P1 pipeline efficiency** (job steady / model only, medians), Ray engine:
  **{r['P1_pipeline_efficiency']}** (target >= {r['P1_target']}); paired with the model-only runs on
  either side: {r['P1_paired_runs']}; whole process: {r['P1_pipeline_efficiency_total']}.
  Local engine: **{r['P1_pipeline_efficiency_local']}** (whole process {r['P1_pipeline_efficiency_local_total']}).
{batch_md(r)}- Against the best *single-stream* model-only run (the reference before the model ran as lanes):
  Ray {r['P1_pipeline_efficiency_vs_single_stream']}, local **{r['P1_pipeline_efficiency_local_vs_single_stream']}**.
  The strict figures above are the headline: the job's model itself runs as lanes, so the model
  alone is credited with lanes too.
- **P5 job vs sequential** (sequential s / job steady s): Ray **{r['P5_vs_sequential_ratio']}x**
  (whole process {r['P5_vs_sequential_ratio_total']}x), local **{r['P5_vs_sequential_ratio_local']}x**
  (whole process {r['P5_vs_sequential_ratio_local_total']}x); target >= {r['P5_target']}x.

Where the CPU went (user+system seconds of every process of the job, sampled every 0.5 s).
Ray engine: {', '.join(f'{k} {v}' for k, v in r['job_cpu_s'].items())}; total {r['job_cpu_s_total']}
CPU-s in {js.get('steady', 0):.1f} s of steady state. Local engine: {r['local_job_cpu_s']} (whole
process, interpreter and imports included). The model alone needs {r['model_only_cpu_s']} CPU-s for
these tiles. Phases (s), Ray: {js}; local: {ls}.

Peak memory of the job's process tree vs scene size (`{r['rss_model']}`, random pattern scene,
fresh job per size; PSS summed over driver + Ray daemons + workers so shared pages count once;
largest single-process RSS; driver RSS):

| scene | tiles | job s | peak PSS sum (MB) | max process RSS (MB) | driver RSS (MB) |
|---|---|---|---|---|---|
{rows}

Growth smallest -> largest scene: PSS sum {r['rss_pss_sum_growth_pct']:+.1f} %, driver RSS {r['rss_driver_growth_pct']:+.1f} %;
last step alone (the fixed caps -- GDAL's 32 MB block cache per process, GDAL's per-block-row
buffers -- are full by then): PSS sum {r.get('rss_pss_sum_growth_last_pct', 0.0):+.1f} %.
Numbers in `bench/results/results_segment.json`.
{r.get('notes', '')}"""


if __name__ == "__main__":
    sys.exit(main())
