"""Evaluate a model bundle on image/mask pair folders: every pass, sliding windows, overlays.

    python jobs/evaluate.py --model out/train/tiny/bundle --data ../shared/data/deepcrack \\
        --layout deepcrack_test --out out/eval/deepcrack
    python jobs/evaluate.py --model BUNDLE --data ../shared/data/roads_epfl --layout epfl \\
        --sweep-on val --out out/eval/roads

A single-process tool (plain torch, no Ray); its parts: jobs/evaluation/run.py (the loop, the
threshold sweep), jobs/evaluation/data.py (pairs, splits), jobs/inference/sliding_window.py
(whole-image inference), jobs/evaluation/scoring.py (metrics), jobs/evaluation/outputs.py (CSV,
overlays, the table). For each image it runs the model over ``tile`` x ``tile`` sliding windows
(``ingest.TileGrid``: overlapping read windows, cores that partition the image exactly; an image
smaller than the tile padded or upscaled as the bundle's ``small_images`` says) and
stitches every pass's probability map, either by copying each window's core (``--stitch core``,
what ``jobs/segment.py`` writes) or by averaging the probabilities of all windows covering a
pixel (``--stitch mean``). Then per image and per pass (0 = promptless ... K = final): Dice, IoU,
precision, recall (``samsp.metrics``, per image then averaged; also pooled over all pixels of the
set) and a tolerance-based precision/recall/F1 for thin structures (``samsp.metrics.tolerant_f1``, default 2 px, as crack papers report).

The configured output is the final pass thresholded at the bundle's probability threshold
(``--threshold`` overrides it; ``--sweep-on val`` / ``--sweep-data`` choose it on a validation set
by mean Dice of the final pass -- never on the evaluated set unless you point it there).

Writes under ``--out``: ``per_image.csv`` (one row per image and pass), ``summary.json``
(means, std, pooled metrics per pass, the output, the sweep), ``sweep.csv`` when swept and
``overlays/{best,worst}_NN_<image>.png`` (image | prediction over it: true positive green,
false positive red, missed blue). Exit codes: 0 done, 1 some scene failed the bundle's input
contract (the others scored), 2 bad arguments/data/bundle.

The bundle's input contract (``bundle.json`` ``input``) is checked as the segment job checks it
(jobs/inference/contract_check.py; ``--contract-check error|warn|off`` is its
``input.contract_check``, ``--gsd-tolerance`` its ``input.gsd_tolerance``): pair folders once
per run (photos decoded to 8-bit RGB; no GSD), an error ending the run before the model loads;
scenes one by one, a scene the model cannot read failing alone. Warnings go to ``summary.json``
(``warnings``; per scene in scene mode).

Scenes instead of pair folders (jobs/evaluation/scene_run.py, scenes.py, error_map.py,
blocks.py)::

    python jobs/evaluate.py --model BUNDLE --image scene.tif --labels footprints.fgb \
        [--image ... --labels ...] [--blocks] --out out/eval/scenes

georeferenced scenes (GeoTIFF/COG/Zarr, local or s3://) with a label raster on their grid or a
vector layer rasterised onto it (``ingest.labels``), read and scored window by window (memory
does not grow with the scene), metrics pooled per scene and over all scenes; writes
``per_scene.csv``, ``summary.json`` and ``<scene>/errors.tif`` (a COG of TN/TP/FP/FN classes
on the scene's grid).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/evaluate.py`: make `import jobs` resolve to this repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.evaluation.data import LAYOUTS, EvalError  # noqa: E402
from jobs.evaluation.outputs import format_table  # noqa: E402
from jobs.evaluation.run import run  # noqa: E402
from jobs.evaluation.scene_run import format_scene_table, run_scenes  # noqa: E402
from jobs.evaluation.scenes import SAMPLE_PIXELS  # noqa: E402
from jobs.evaluation.scoring import DEFAULT_TOLERANCE  # noqa: E402
from jobs.inference.bundle_meta import BundleNotFoundError, resolve_bundle  # noqa: E402
from jobs.inference.contract_check import DEFAULT_GSD_TOLERANCE  # noqa: E402
from jobs.runtime.logs import configure_logging  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="bundle folder, URI (s3://...) or name (models/, $SAMSP_MODELS)")
    p.add_argument("--data", help="pair-folder root (local or s3://); or score scenes with "
                                  "--image/--labels or --blocks")
    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="folder layout (auto: test_img/test_lab, train_img/train_lab, "
                        "images/groundtruth, images/masks)")
    p.add_argument("--image-dir", help="image sub-folder (custom layout)")
    p.add_argument("--mask-dir", help="mask sub-folder (custom layout)")
    p.add_argument("--mask-threshold", type=float,
                   help="mask pixel is positive when value > this (default: the layout's; "
                        "scenes: 0)")
    p.add_argument("--limit", type=int, help="evaluate only the first N pairs (sorted)")
    p.add_argument("--out", help="output folder (per_image.csv, summary.json, overlays/)")
    p.add_argument("--tile", type=int, help="window side in px (default: the model's input size)")
    p.add_argument("--overlap", type=int, help="window overlap in px (default: tile // 8)")
    p.add_argument("--small-images", choices=("pad", "fill"),
                   help="a photo smaller than the tile: pad it (native size) or fill the "
                        "model frame with it (upscaled); default: the bundle's small_images "
                        "(pair folders only: scenes always pad)")
    p.add_argument("--stitch", default="core", choices=("core", "mean"),
                   help="core: copy each window's core (as segment does); mean: average windows")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward")
    p.add_argument("--iterations", type=int, help="self-prompting passes K (default: bundle's)")
    p.add_argument("--threshold", type=float, help="output probability threshold "
                                                   "(default: the bundle's)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="distance tolerance (px) of the tolerant precision/recall/F1")
    p.add_argument("--sweep-on", choices=("val",),
                   help="choose the threshold on the bundle's own validation split")
    p.add_argument("--sweep-data", help="choose the threshold on this pair folder instead")
    p.add_argument("--sweep-layout", default="auto", choices=LAYOUTS)
    p.add_argument("--sweep-limit", type=int, help="use at most N sweep images")
    p.add_argument("--sweep-thresholds", default="0.1:0.9:0.05",
                   help="start:stop:step or a,b,c (default 0.1:0.9:0.05)")
    p.add_argument("--overlays", type=int, default=3, help="best and worst N overlay PNGs")
    p.add_argument("--contract-check", default="error", choices=("error", "warn", "off"),
                   help="the bundle's input contract against the data (as segment's "
                        "input.contract_check): error = a scene the model would read wrongly "
                        "fails (pair folders: the run), warn = it is scored with a warning, "
                        "off = not checked")
    p.add_argument("--gsd-tolerance", type=float, default=DEFAULT_GSD_TOLERANCE,
                   help="warn when a scene's GSD is more than this many times finer or coarser "
                        "than the training scenes' (default %(default)g, as segment)")
    p.add_argument("--resample", choices=("off", "auto"), default="off",
                   help="auto: a scene more than --gsd-tolerance off the model's GSD is read at "
                        "it -- windows cover the model's frame in metres, scored on the scene's "
                        "grid (segment's radiometry.resample); off: it is read as it is, with a "
                        "warning (default)")
    add_scene_args(p)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="model precision (auto: bf16 where the device runs it natively)")
    return p


def _number_or_text(value: str):
    """``--ignore-value``: 1 -> int, 0.5 -> float, true -> bool, anything else -> text (the
    attribute's values are compared as the file types them)."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1-based band numbers like 3,2,1, got "
                                         f"{value!r}") from None


def _pair_of_floats(value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected low,high like 2,98, got {value!r}") from None
    return lo, hi


def add_scene_args(p: argparse.ArgumentParser) -> None:
    """The scene mode's options (jobs/evaluation/scene_run.py)."""
    g = p.add_argument_group("scenes (instead of --data): georeferenced scenes, window by window")
    g.add_argument("--image", action="append", help="scene (GeoTIFF/COG/Zarr, local or s3://); "
                   "repeatable, paired in order with --labels")
    g.add_argument("--labels", action="append", help="its labels: a label raster on the same "
                   "grid, or a vector layer (.geojson/.parquet/.fgb/.gpkg) burnt onto the grid")
    g.add_argument("--blocks", action="store_true", help="score only the spatial validation "
                   "blocks of the bundle's training split (without --image: its training scenes)")
    g.add_argument("--burn", type=int, default=1, help="vector labels: value inside features")
    g.add_argument("--class-field", help="vector labels: burn this attribute (0..255) instead")
    g.add_argument("--line-buffer-m", type=float, default=0.0,
                   help="vector labels: widen lines and points by this many metres each side")
    g.add_argument("--ignore-field", help="vector labels: features with this attribute set are "
                   "not scored")
    g.add_argument("--ignore-value", type=_number_or_text,
                   help="... only when it equals this (alone: compares --class-field)")
    g.add_argument("--bands", type=_int_list, help="1-based bands to read, e.g. 3,2,1 "
                   "(default: all; the bundle's band map picks three)")
    g.add_argument("--percentiles", type=_pair_of_floats,
                   help="scene-wide stretch of non-uint8 scenes, low,high (default 2,98)")
    g.add_argument("--sample-pixels", type=int, default=SAMPLE_PIXELS,
                   help="pixels sampled to fit the stretch (default: the segment job's)")


def _check_mode(args: argparse.Namespace) -> bool:
    """True for scene mode; ``EvalError`` when the modes are mixed or none is given."""
    scenes = bool(args.image or args.labels or args.blocks)
    if args.data and scenes:
        raise EvalError("--data (pair folders) and --image/--labels/--blocks (scenes) exclude "
                        "each other")
    if not args.data and not scenes:
        raise EvalError("give --data (a pair folder), or --image SCENE --labels LABELS, or "
                        "--blocks")
    return scenes


def _report(args: argparse.Namespace, summary: dict, scenes: bool) -> None:
    if scenes:
        print(format_scene_table(summary))
        if args.out:
            print(f"wrote {args.out}/per_scene.csv, summary.json, "
                  f"{len(summary['scenes']) - summary.get('failed', 0)} errors.tif")
        return
    print(format_table(summary))
    if args.out:
        print(f"wrote {args.out}/per_image.csv, summary.json"
              + (", sweep.csv" if summary.get("sweep") else "")
              + (f", {len(summary['overlays'])} overlays" if summary.get("overlays") else ""))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.INFO, "%(asctime)s %(levelname)s %(message)s")
    try:
        scenes = _check_mode(args)
        args.model = resolve_bundle(args.model)  # a name (models/, $SAMSP_MODELS) -> its folder
        summary = run_scenes(args) if scenes else run(args)
    except (EvalError, BundleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _report(args, summary, scenes)
    return 1 if summary.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
