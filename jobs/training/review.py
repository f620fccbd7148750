"""The review loop: export a segment run's most uncertain tiles as a labelling package, correct
them in a GIS, fine-tune on the corrections.

    samsp review export --output OUT --to review/ [--max-tiles 200] [--model BUNDLE]
    # QGIS: open review/review.gpkg (layers tiles, labels) and review/chips/; edit the labels
    # polygons of a tile, set its `reviewed` field to 1; save
    samsp review status review/                   # reviewed tiles per scene
    python jobs/train.py --config review/train.yaml

``OUT`` is a segment job's output (local or s3://); the package is a local folder (see
``ingest.review`` for its layers). ``train.yaml`` fine-tunes ``--model`` (a bundle folder, URI
or name; default: none, set model.checkpoint) on the scenes' reviewed tiles only: labels from
the ``labels`` layer, the ``tiles`` layer with ``reviewed = 1`` as the area of interest, so
nothing outside a corrected footprint is ever supervised.

(``samsp review`` is ``python -m jobs.training.review``: the loop ends in training, and this
module joins the segment output's export, jobs/segmentation/review_export.py, to it.)

Exit codes: 0 done (scenes that could not be exported are listed), 1 the package could not be
written or read, 2 bad arguments or nothing to export.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from ingest.errors import ReviewPackageError
from ingest.redact import redact_uri
from ingest.review import label_pair, reviewed_scenes
from ingest.trust import InputPolicy
from jobs.inference.bundle_meta import resolve_bundle
from jobs.runtime.logs import configure_logging
from jobs.segmentation.index import read_manifest
from jobs.segmentation.review_export import export_review
from jobs.training.config import TrainConfig

log = logging.getLogger("samsp.review")

TRAIN_FILE = "train.yaml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def train_config(package: str, scenes: dict[str, str], tile: int, model: str | None) -> dict:
    """A ``jobs/train.py`` config fine-tuning ``model`` on the package's reviewed tiles: one
    ``raster`` pair per scene (``scenes``: id -> input), windows the size of a review tile; a
    scene with no reviewed tile is left out when training plans. Validated here."""
    cfg = {
        "run": {"name": "review-finetune", "storage_path": "./out/train"},
        "model": {"checkpoint": model, "finetune": "full"},
        "data": {"source": {"kind": "raster", "tile": max(32, tile), "min_valid": 0.5,
                            "pairs": [label_pair(package, uri, sid)
                                      for sid, uri in sorted(scenes.items())]},
                 "split": {"val_fraction": 0.2, "seed": 0}},
        "train": {"epochs": 4, "batch_size": 2, "lr": 5e-5, "samples_per_item": 4},
        "scaling": {"num_workers": 1, "use_gpu": False},
    }
    TrainConfig.model_validate(cfg)  # what jobs/train.py will accept
    return cfg


def write_train_config(package: str, cfg: dict) -> str:
    path = os.path.join(package, TRAIN_FILE)
    with open(path, "w") as fh:
        fh.write("# Fine-tune on this package's reviewed tiles (reviewed = 1 in its tiles "
                 "layer):\n#   python jobs/train.py --config " + path + "\n")
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def cmd_export(args) -> int:
    model = resolve_bundle(args.model) if args.model else None
    try:
        policy = InputPolicy(s3=tuple(args.allow_s3), hosts=tuple(args.allow_host))
        result, tiles = export_review(args.output, args.to, args.max_tiles, args.force, policy)
    except ReviewPackageError as err:
        log.error("%s", err)
        return EXIT_FAILED
    if not tiles:
        log.error("nothing to review in %s: no done scene with uncertain tiles (%d skipped%s)",
                  redact_uri(args.output), len(result.skipped),
                  "".join(f"; {sid}: {why}" for sid, why in sorted(result.skipped.items())[:3]))
        return EXIT_USAGE
    # scene inputs as recorded, secrets dropped: a package is shared, its config too
    rows = read_manifest(args.output)
    inputs = {sid: redact_uri(rows[sid]["input"]) for sid in result.scenes}
    tile = max(max(t.window[2], t.window[3]) for t in tiles)
    path = write_train_config(result.package, train_config(result.package, inputs, tile, model))
    if result.kept_old:
        log.info("the package it replaced (with reviewed tiles) is kept at %s", result.kept_old)
    log.info("review package %s: %d tiles from %d scenes, %d model polygons, %d chips; "
             "fine-tune config %s", result.package, result.tiles, len(result.scenes),
             result.labels, result.chips, path)
    for what, reason in sorted(result.skipped.items()):
        log.info("%s not exported: %s", what, reason)
    return EXIT_OK


def cmd_status(args) -> int:
    try:
        done = reviewed_scenes(args.package)
    except ReviewPackageError as err:
        log.error("%s", err)
        return EXIT_FAILED
    if not done:
        print("no reviewed tile yet (set reviewed = 1 on the tiles you corrected)")
    for uri, n in sorted(done.items()):
        print(f"{n:5d} reviewed  {uri}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write the review package of a segment output")
    ex.add_argument("--output", required=True, help="the segment job's output (local or s3://)")
    ex.add_argument("--to", required=True, help="package folder to write (local)")
    ex.add_argument("--max-tiles", type=int, default=200,
                    help="most uncertain tiles over all scenes (default 200)")
    ex.add_argument("--model", help="bundle train.yaml fine-tunes (folder, URI or name)")
    ex.add_argument("--allow-host", action="append", default=[], metavar="HOST[:PORT]",
                    help="http(s) host the manifest's scene URIs may name (repeat); default: "
                         "public hosts only, as the segment job's input.allow.hosts")
    ex.add_argument("--allow-s3", action="append", default=[], metavar="BUCKET[/PREFIX]",
                    help="S3 location the manifest's scene URIs may name (repeat); default any")
    ex.add_argument("--force", action="store_true",
                    help="replace a package that holds reviewed tiles (kept as <to>.<time>.bak)")
    st = sub.add_parser("status", help="reviewed tiles per scene of a package")
    st.add_argument("package")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    if args.command == "export" and args.max_tiles < 1:
        log.error("--max-tiles must be >= 1")
        return EXIT_USAGE
    return cmd_export(args) if args.command == "export" else cmd_status(args)


if __name__ == "__main__":
    sys.exit(main())
