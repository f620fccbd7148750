"""Crack sweep over inspection photo archives (JPEG/PNG/TIFF of any size) on Ray Data, or in-process.

    python jobs/sweep.py --input PREFIX_OR_GLOB [...] --output URI --model BUNDLE_OR_NAME \
        [--config configs/sweep.yaml] [--set report.top_n=48 ...]

The segmentation job's pipeline, shaped for many ordinary photos instead of a few huge scenes:
``from_items(one row per photo)`` -> ``read_photo_batches`` (CPU tasks: radiometry, read tile by
tile on a ``TileGrid``, one row per tile) -> the segment job's ``Predictor`` (actor pool, bundle
loaded once per actor, ``num_gpus`` when GPUs exist) -> ``keep_mask_cores`` (CPU tasks) -> the
driver stitches each photo's cores; as soon as a photo is complete a driver thread writes its mask
PNG, overlay thumbnail and record (``crack_metrics``: crack pixels, skeleton length, max width
along the centre-line away from junctions and ends (and the raw maximum), mean width, fragments
and crack networks; its centre-lines in ``features/<id>.parquet``; ``seconds``: the photo's own
read + model + finalize time). ``--set pipeline.engine=local`` runs the same stages in this
process without Ray (``jobs/crack_sweep/local_engine.py``; same outputs). At the end:
``report.csv``/``report.parquet`` ranked by ``report.sort_by`` (pixels, length, max_width or
severity = width class rank x length), ``contact_sheet.png``, ``report.html`` of the top findings
and ``cracks.parquet`` (every image's centre-lines, ``jobs/crack_sweep/features.py``). Layout:
see ``jobs/crack_sweep/report.py``; measurements: ``jobs/crack_sweep/cracks.py`` and
``measure.py``. The run itself: ``jobs/crack_sweep/run.py``; its config:
``jobs/crack_sweep/config.py``.

Rerun = skip photos whose record says ok (failed ones are retried); the report always covers every
record under the output. Exit code 1 if any photo failed in this run (after all others), 2 for a
usage/config/model error.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.crack_sweep.run import EXIT_FAILED, EXIT_OK, EXIT_USAGE, run  # noqa: E402
from jobs.inference.bundle_meta import BundleNotFoundError, resolve_bundle  # noqa: E402
from jobs.runtime.config import job_epilog, parse_job_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_job_args(
        argv, prog="sweep.py", description="Crack sweep over photo archives.",
        input_help="photos: folders, globs, s3:// prefixes, .txt/.csv lists",
        set_example="report.top_n=48",
        epilog=job_epilog(
            ["python jobs/sweep.py --input photos/ --output out/sweep "
             "--model models/samsp-crack-tiny",
             "python jobs/sweep.py --input s3://bucket/inspections/2026-11/ --output "
             "s3://bucket/sweeps/2026-11 --model models/samsp-crack-tiny --set report.top_n=48"],
            "configs/sweep.yaml (every field with its default and meaning), "
            "jobs/crack_sweep/config.py (SweepConfig), README.md 'Crack sweep'",
            {EXIT_OK: "every photo ok or skipped", EXIT_FAILED: "a photo failed (the others "
             "finished)", EXIT_USAGE: "usage, config or model error (nothing ran)"}))
    try:  # a bundle name (models/, $SAMSP_MODELS) -> its folder or URI
        args.model = resolve_bundle(args.model)
    except BundleNotFoundError as err:
        logging.getLogger("samsp.sweep").error("model: %s", err)
        return EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
