"""`make demo`: the main job on the embedded default — no cloud account, no ../shared.

1. start a SeaweedFS S3 server on loopback (its own process, stopped by PID at the end);
2. draw a synthetic georeferenced pavement-inspection scene (procedural cracks, with ground truth)
   window by window and upload it as a COG to s3://samsp/scenes/;
3. run jobs/segment.py from s3:// to s3:// on a local Ray with the committed model bundle;
4. copy the results to ./out/demo/, print where they are and the Dice against the ground truth.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil

from jobs.local_stack.demo_scene import CrackScene, write_scene
from jobs.local_stack.local_s3 import start_s3_server
from jobs.runtime.logs import configure_logging

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "samsp-crack-tiny"
log = logging.getLogger("samsp.demo")


def dice_from_rasters(pred_path: Path, truth_path: Path) -> float:
    """Dice of two same-grid single-band rasters, accumulated block by block (no whole array)."""
    inter = p_sum = t_sum = 0
    with rasterio.open(pred_path) as pred, rasterio.open(truth_path) as truth:
        if (pred.width, pred.height) != (truth.width, truth.height):
            raise ValueError(f"grid mismatch: {pred.shape} vs {truth.shape}")
        for _, win in truth.block_windows(1):
            p = pred.read(1, window=win)
            p = (p == 1)  # nodata (255) and background (0) are not crack
            t = truth.read(1, window=win) > 0
            inter += int(np.logical_and(p, t).sum())
            p_sum += int(p.sum())
            t_sum += int(t.sum())
    return 1.0 if p_sum + t_sum == 0 else 2.0 * inter / (p_sum + t_sum)


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="scene side in pixels (>= 4096 for the demo)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model bundle (dir or s3://)")
    parser.add_argument("--out", default=str(REPO / "out" / "demo"), help="local folder for results")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    configure_logging(logging.INFO, "%(asctime)s %(name)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)  # one "found credentials" per client

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (Path(args.model) / "bundle.json").exists():
        log.error("model bundle not found at %s", args.model)
        return 2

    server = start_s3_server(bucket="samsp")
    log.info("SeaweedFS S3 server on %s (pid %d)", server.endpoint, server.pid)
    try:
        env = dict(os.environ, **server.env(), RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
        os.environ.update(server.env())
        import s3fs

        fs = s3fs.S3FileSystem(**server.storage_options())
        truth = out / "ground_truth.tif"
        with tempfile.TemporaryDirectory(prefix="samsp-demo-") as tmp:
            t0 = time.perf_counter()
            raw = Path(tmp) / "raw.tif"
            cog = Path(tmp) / "pavement.tif"
            write_scene(CrackScene(size=args.size, seed=args.seed), raw, truth)
            rasterio.shutil.copy(raw, cog, driver="COG", compress="deflate", overview_resampling="average")
            fs.put(str(cog), f"{server.bucket}/scenes/pavement_{args.size}.tif")
            log.info("synthetic %dx%d scene uploaded in %.1fs", args.size, args.size, time.perf_counter() - t0)

        results = f"s3://{server.bucket}/results"
        cmd = [sys.executable, str(REPO / "jobs" / "segment.py"),
               "--input", f"s3://{server.bucket}/scenes/", "--output", results, "--model", args.model]
        log.info("running: %s", " ".join(cmd))
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env, cwd=REPO)
        seconds = time.perf_counter() - t0
        fs.get(f"{server.bucket}/results/", str(out / "results") + "/", recursive=True)
        if rc != 0:
            log.error("segmentation job failed (exit %d); see %s", rc, out / "results" / "manifest.jsonl")
            return rc
        scene_dirs = sorted(p for p in (out / "results").iterdir() if (p / "mask.tif").exists())
        if not scene_dirs:
            log.error("no mask.tif in the results")
            return 1
        dice = dice_from_rasters(scene_dirs[0] / "mask.tif", truth)
        mpx = args.size * args.size / 1e6
        print()
        print(f"samsp demo: {args.size}x{args.size} scene ({mpx:.1f} Mpx) segmented in {seconds:.0f}s "
              f"({mpx / seconds:.2f} Mpx/s end to end, including Ray start-up)")
        print(f"  results:      {out / 'results'}")
        print(f"  mask (COG):   {scene_dirs[0] / 'mask.tif'}")
        print(f"  quick-look:   {scene_dirs[0] / 'quicklook.png'}")
        print(f"  manifest:     {out / 'results' / 'manifest.jsonl'}")
        print(f"  ground truth: {truth}")
        print(f"  Dice vs ground truth: {dice:.3f}")
        return 0
    finally:
        server.stop()
        log.info("S3 server stopped")


if __name__ == "__main__":
    sys.exit(main())
