"""The per-tile storage costs quoted in bench/results/SEGMENT_NOTES.md, one process, no Ray, no model.

    .venv/bin/python -m bench.profile_segment_io [--scene .bench/segment/crack_8192.tif]

1. reading every tile (256 px, overlap 32) of the scene with the block cache as the process
   setting (what ingest does) and with GDAL_CACHEMAX passed to every read's rasterio.Env (what
   it did before: each exit resized, i.e. flushed, the cache);
2. MaskWriter.write of each tile core: direct chunk I/O vs zarr's own indexing path;
3. MaskWriter.to_cog of both arrays: wall and CPU seconds.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ingest import MaskWriter, TileGrid, open_scene, storage

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", default=str(REPO / ".bench" / "segment" / "crack_8192.tif"),
                    help="a GeoTIFF/COG (bench_segment makes the default)")
    ap.add_argument("--tiles", type=int, default=400, help="tiles written per write variant")
    args = ap.parse_args(argv)

    import rasterio

    scene = open_scene(args.scene, check_empty=False)
    grid = list(TileGrid(scene.height, scene.width, 256, 32))
    out: dict = {"scene": args.scene, "tiles": len(grid)}

    t0 = time.perf_counter()
    for t in grid:
        scene.read(t.read_window)
    out["read_all_tiles_s"] = round(time.perf_counter() - t0, 3)
    fresh = open_scene(args.scene, check_empty=False)
    t0 = time.perf_counter()
    for t in grid:
        with rasterio.Env(GDAL_CACHEMAX=storage.DEFAULT_GDAL_CACHEMAX_MB):
            fresh.read(t.read_window)
    out["read_all_tiles_cachemax_per_env_s"] = round(time.perf_counter() - t0, 3)

    work = Path(tempfile.mkdtemp(prefix="samsp-prof-"))
    try:
        rng = np.random.default_rng(0)
        prob = rng.integers(0, 254, (224, 224), dtype=np.uint8)
        for direct in (True, False):
            w = MaskWriter(str(work / f"m{direct}.zarr"), like=scene, chunk=224, mode="w")
            if not direct:
                w.disable_direct_io()  # zarr's path
            tiles = grid[:args.tiles]
            t0 = time.perf_counter()
            for t in tiles:
                rs, cs = t.core_slices
                h, wd = rs.stop - rs.start, cs.stop - cs.start
                w.write(t.core_window, prob[:h, :wd], (prob[:h, :wd] > 127).astype(np.uint8))
            key = "write_ms_per_tile_direct" if direct else "write_ms_per_tile_zarr"
            out[key] = round(1000 * (time.perf_counter() - t0) / len(tiles), 3)
        w = MaskWriter(str(work / "full.zarr"), like=scene, chunk=224, mode="w")
        for t in grid:
            rs, cs = t.core_slices
            h, wd = rs.stop - rs.start, cs.stop - cs.start
            w.write(t.core_window, prob[:h, :wd], (prob[:h, :wd] > 127).astype(np.uint8))
        for which in ("mask", "prob"):
            c0, t0 = os.times(), time.perf_counter()
            w.to_cog(str(work / f"{which}.tif"), which=which)
            c1 = os.times()
            out[f"cog_{which}_s"] = round(time.perf_counter() - t0, 3)
            out[f"cog_{which}_cpu_s"] = round(c1.user + c1.system - c0.user - c0.system, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
