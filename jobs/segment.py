"""Distributed SAM-SP segmentation of big scenes on Ray Data (the nightly job).

    python jobs/segment.py --input URI_OR_GLOB [...] --output URI --model BUNDLE_OR_NAME \
        [--config configs/segment.yaml] [--set predict.batch_size=16 ...]

Inputs: local files, globs (``scenes/**/*.tif``), folders, ``s3://bucket/prefix/`` (every scene
under it), ``s3://`` globs, single keys, Zarr stores, and ``.txt``/``.csv`` lists of any of these.

1. Plan (driver): expand the inputs, give each a stable id, skip scenes already done (their
   ``<output>/<id>/status.json``) or being computed by another run (its lease), open each
   remaining scene's header (+ a bounded emptiness check), fit the scene-wide radiometry
   (bounded sample), build its ``TileGrid`` (tile = the bundle's image size, overlap = tile/8
   by default), create/reopen ``<output>/<id>/mask.zarr`` and keep only
   the tiles whose chunk + record are not written yet. A scene that cannot be planned becomes a
   ``failed`` row with a one-line reason; the others go on.
2. Ray Data: ``from_items(tile rows)`` -> ``map_batches(read_tiles)`` (CPU tasks) ->
   ``map_batches(PredictWriter, compute=ActorPoolStrategy(size=N), num_gpus=..)``: each actor runs
   the model batch by batch and writes every finished batch's cores from a writer thread while
   the next batch runs (``write_cores``); one summary row per tile is consumed on the driver
   block by block, with a progress line every ~10 % of the tiles or 10 s. The actors never take
   the CPUs reserved for reads (``pipeline.read_cpus``).
   CPU-only actors read their own tiles instead (``pipeline.read_in_actors``, auto): every core
   already runs an actor, and a read stage would only add processes and object-store transfers.
3. Finalize each scene as soon as its last tile is in (a driver thread pool, overlapping the
   pipeline): COGs, quicklook.png, stats.json; then its status.json (``manifest.jsonl``, an
   index, is rebuilt from them at the end). A scene with any failed tile is ``failed`` and
   gets no new COG/PNG/stats (old good ones stay untouched).

Exit code: 0 when every scene is ok/skipped, 1 when any scene failed (after all others finished),
2 for a usage/config/model error before any scene ran, 3 when no scene failed but some are still
being computed by other live runs (their leases: jobs/segmentation/status.py).

Ray: embedded local Ray by default; ``RAY_ADDRESS`` (or ``ray.address``) joins a cluster, and
``ray job submit --working-dir . -- python jobs/segment.py ...`` works as is.

This file is the entry script (arguments, then ``SegmentRun(args).run()``). The run itself, phase
by phase (prepare, plan, execute, collect, publish, summary), is jobs/segmentation/run.py; one
scene's plan, rows and state are in jobs/segmentation/scene.py, the Ray Data and local engines in
jobs/segmentation/engines.py (their timings: jobs/segmentation/timings.py), the Ray Data stages in
jobs/segmentation/pipeline.py, a scene's outputs in jobs/segmentation/finalize.py.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `jobs`, `ingest`, `samsp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.inference.bundle_meta import BundleNotFoundError, resolve_bundle  # noqa: E402
from jobs.runtime.config import job_epilog, parse_job_args  # noqa: E402
from jobs.segmentation.run import (  # noqa: E402
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RUNNING_ELSEWHERE,
    EXIT_USAGE,
    SegmentRun,
)
from jobs.segmentation.stac_input import add_stac_args, stac_overrides  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_job_args(argv, prog="segment.py",
                          description="Distributed SAM-SP segmentation of scenes on Ray Data.",
                          input_help="scenes: files, globs, folders, s3:// prefixes, .txt/.csv lists",
                          set_example="predict.batch_size=16", epilog=job_epilog(
                              ["python jobs/segment.py --input scenes/*.tif --output out/run "
                               "--model models/samsp-crack-tiny",
                               "python jobs/segment.py --input s3://bucket/scenes/ --output "
                               "s3://bucket/masks --model s3://bucket/bundles/roads "
                               "--config configs/segment.yaml --set predict.threshold=0.6",
                               "python jobs/segment.py --stac https://stac.example/v1 --collections "
                               "sentinel-2-l2a --bbox 5.9,45.8,10.5,47.8 --datetime since-last-run "
                               "--assets red,green,blue --output s3://bucket/masks --model "
                               "s3://bucket/bundles/roads",
                               "ray job submit --working-dir . -- python jobs/segment.py ..."],
                              "configs/segment.yaml (every field with its default and meaning), "
                              "jobs/segmentation/config.py, README.md 'Segmentation job'",
                              {EXIT_OK: "every scene ok or skipped",
                               EXIT_FAILED: "a scene failed (all the others finished)",
                               EXIT_USAGE: "usage, config or model error before any scene ran",
                               EXIT_RUNNING_ELSEWHERE: "some scenes are still computed by "
                                                       "other live runs"}),
                          flags={"--force": "recompute every scene (outputs replaced only once "
                                            "each scene succeeded)"},
                          add_args=add_stac_args, input_required=False)
    args.overrides = stac_overrides(args) + args.overrides  # --set wins over the flags
    try:  # a bundle name (models/, $SAMSP_MODELS) -> its folder or URI
        args.model = resolve_bundle(args.model)
    except BundleNotFoundError as err:
        logging.getLogger("samsp.segment").error("model: %s", err)
        return EXIT_USAGE
    return SegmentRun(args).run()


if __name__ == "__main__":
    sys.exit(main())
