"""V1: streaming polygonisation (ingest.vectors) vs whole-array polygonisation.

    .venv/bin/python -m bench.bench_vectors [--sizes 2048 8192 16384] [--whole-max 8192]

For each size a mask store (chunk 512, mask + prob) of value-noise blobs (objects 20-100 px,
many crossing chunk edges and corners) is written chunk by chunk. Then, each in its own
subprocess (peak RSS = that process' VmHWM: a subprocess' ru_maxrss also holds the parent's
peak -- measured: a parent holding 300 MiB, a bare child reads 327 MiB, VmHWM 11 MiB), with the modules that arm uses imported before its clock starts
(both arms alike; the RSS after them is reported as ``import_rss_mib``): *streaming* = ``write_polygons(store,
polygons.parquet)`` (the job's path: attributes, GeoParquet row groups); *whole-array* = read the
mask whole, ``rasterio.features.shapes`` over it, shapely geometries, one GeoDataFrame with
area/perimeter, ``to_parquet`` -- what samgeo/Raster Vision do. Whole-array runs only up to
``--whole-max`` (16384² would need several GiB on a shared 24 GiB machine).
V1_rss_growth_pct = streaming peak RSS growth 2048² -> 16384² (target <= 20 %);
V1_seconds_ratio = streaming / whole-array seconds at 8192² (target <= 1.5).
Writes bench/results/results_vectors.json and bench/results/VECTORS_RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingest import MaskWriter
from ingest.vectors import write_polygons

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CHUNK = 512
CELL = 32  # value-noise cell (px): blob size


def make_store(uri: str, size: int, seed: int = 0) -> None:
    import numpy as np
    from affine import Affine
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grid = rng.random((size // CELL + 2, size // CELL + 2)).astype(np.float32)
    w = MaskWriter(uri, chunk=CHUNK, height=size, width=size, crs="EPSG:32633",
                   transform=Affine(0.5, 0, 500000, 0, -0.5, 5000000), mode="w")
    for win in w.chunk_windows():
        r0, c0, h, wd = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
        yy, xx = np.mgrid[r0:r0 + h, c0:c0 + wd].astype(np.float32) / CELL
        v = ndimage.map_coordinates(grid, [yy, xx], order=1)
        w.write(win, prob=v, mask=(v > 0.62).astype(np.uint8))


def _status_mib(field: str) -> float:
    """``VmRSS``/``VmHWM`` of this process (MiB) from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def run_streaming(store: str, out: str) -> dict:

    t0 = time.perf_counter()
    res = write_polygons(MaskWriter.open(store, mode="r"), out)
    return {"seconds": time.perf_counter() - t0, "features": res.features,
            "max_open_components": res.stats.max_open_components}


def run_whole(store: str, out: str) -> dict:
    import geopandas as gpd
    from rasterio import features
    from shapely.geometry import shape

    t0 = time.perf_counter()
    w = MaskWriter.open(store, mode="r")
    mask = w.read(which="mask")
    geoms = [shape(g) for g, _ in features.shapes(mask, mask=mask == 1, transform=w.transform)]
    gdf = gpd.GeoDataFrame({"area": [g.area for g in geoms]}, geometry=geoms, crs=w.crs.to_wkt())
    gdf["perimeter"] = gdf.length
    gdf.to_parquet(out, write_covering_bbox=True)
    return {"seconds": time.perf_counter() - t0, "features": len(gdf)}


def child(mode: str, store: str, out: str) -> None:
    run = run_streaming if mode == "streaming" else run_whole
    # what each arm imports on its first call, before its clock starts (the whole arm imported
    # geopandas before its clock already; the streaming arm's lazy imports were ~1 s of its time)
    if mode == "streaming":
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401
        import rasterio.features  # noqa: F401
        import scipy.ndimage  # noqa: F401
        import shapely  # noqa: F401

    else:
        import geopandas  # noqa: F401
        import pyarrow.parquet  # noqa: F401
        import rasterio.features  # noqa: F401
        import shapely.geometry  # noqa: F401

    import_rss = _status_mib("VmRSS")
    res = run(store, out)
    res["peak_rss_mib"] = _status_mib("VmHWM")
    res["import_rss_mib"] = import_rss
    print("RESULT " + json.dumps(res), flush=True)


def measure(mode: str, store: str, out: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_vectors", "--child", mode, store, out],
                          cwd=REPO, capture_output=True, text=True, check=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    ap.add_argument("--whole-max", type=int, default=8192)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as tmp:
        for size in args.sizes:
            store = os.path.join(tmp, f"m{size}.zarr")
            t0 = time.perf_counter()
            make_store(store, size)
            print(f"[vectors] {size}²: store made in {time.perf_counter() - t0:.1f}s", flush=True)
            row = {"streaming": measure("streaming", store, os.path.join(tmp, "s.parquet"))}
            if size <= args.whole_max:
                row["whole"] = measure("whole", store, os.path.join(tmp, "w.parquet"))
                assert row["whole"]["features"] == row["streaming"]["features"], row
            print(f"[vectors] {size}²: {json.dumps(row)}", flush=True)
            rows[size] = row
            import shutil

            shutil.rmtree(store, ignore_errors=True)
    lo, hi = min(rows), max(rows)
    results = {f"V1_{mode}_{k}_{s}": round(v, 3) for s, row in rows.items()
               for mode, r in row.items() for k, v in r.items() if k in ("seconds", "peak_rss_mib")}
    results["V1_rss_growth_pct"] = round(100 * (rows[hi]["streaming"]["peak_rss_mib"]
                                                / rows[lo]["streaming"]["peak_rss_mib"] - 1), 1)
    if 8192 in rows and "whole" in rows[8192]:
        results["V1_seconds_ratio"] = round(rows[8192]["streaming"]["seconds"]
                                            / rows[8192]["whole"]["seconds"], 3)
    (BENCH / "results" / "results_vectors.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    lines = ["## Vectors (V1): streaming vs whole-array polygonisation", "",
             f"`.venv/bin/python -m bench.bench_vectors --sizes {' '.join(map(str, args.sizes))}` "
             f"-- {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores (shared). Value-noise blobs, chunk {CHUNK}; each run in its "
             "own subprocess (peak RSS = the child's VmHWM, includes the imports; each arm's imports "
             "done before its clock starts).", "",
             "| size | features | streaming s | streaming peak RSS MiB (after imports) | whole-array s | whole-array peak RSS MiB (after imports) |",
             "|---|---|---|---|---|---|"]
    for s, row in rows.items():
        w = row.get("whole", {})
        lines.append(f"| {s}² | {row['streaming']['features']} | {row['streaming']['seconds']:.1f} | "
                     f"{row['streaming']['peak_rss_mib']:.0f} ({row['streaming']['import_rss_mib']:.0f}) | "
                     f"{w.get('seconds', float('nan')):.1f} | {w.get('peak_rss_mib', float('nan')):.0f} "
                     f"({w.get('import_rss_mib', float('nan')):.0f}) |")
    lines += ["", f"V1_rss_growth_pct = {results['V1_rss_growth_pct']} % (target <= 20 %); "
              f"V1_seconds_ratio = {results.get('V1_seconds_ratio')} (target <= 1.5)", ""]
    (BENCH / "results" / "VECTORS_RESULTS.md").write_text("\n".join(lines))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
