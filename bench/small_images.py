"""Images smaller than the model window (issue 31): a crack model's Dice on DeepCrack test images
evaluated whole and cut into 3x3 crops (about 181x128, smaller than the 256 window) at native
resolution -- the same pixels, so any difference is what the padding does.

    python -m bench.small_images [--model models/samsp-crack-tiny] [--limit 237]

Writes bench/results/results_small_images.json and SMALL_IMAGES_RESULTS.md: mean per-image Dice
of the whole images, of the crops stitched back into whole images, and of the crops one by one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import cpu_label, log  # noqa: E402
from jobs.inference.sliding_window import SlidingWindow, bundle_forward  # noqa: E402
from samsp import load_bundle, metrics  # noqa: E402

RESULTS = REPO / "bench" / "results"


def dice(probs: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    return float(metrics.dice(torch.from_numpy(probs > threshold)[None],
                              torch.from_numpy(truth)[None])[0])


def whole_and_cut(window: SlidingWindow, image: np.ndarray, truth: np.ndarray,
                  threshold: float) -> tuple[float, float, list[float]]:
    """Dice of ``image`` whole, of its 3x3 crops stitched back, and of each crop."""
    height, width = truth.shape
    rows, cols = np.linspace(0, height, 4).astype(int), np.linspace(0, width, 4).astype(int)
    stitched = np.zeros(truth.shape, np.float32)
    per_crop = []
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            probs = window(np.ascontiguousarray(image[:, r0:r1, c0:c1]))[-1]
            stitched[r0:r1, c0:c1] = probs
            per_crop.append(dice(probs, truth[r0:r1, c0:c1], threshold))
    return dice(window(image)[-1], truth, threshold), dice(stitched, truth, threshold), per_crop


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "samsp-crack-tiny"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "deepcrack"))
    parser.add_argument("--limit", type=int, default=237)
    args = parser.parse_args(argv)
    bundle = load_bundle(args.model)
    window = SlidingWindow(bundle_forward(bundle, precision="fp32"), tile=256, overlap=32)
    root = Path(args.data)
    names = sorted(p.name for p in (root / "test_img").iterdir())[: args.limit]
    whole, cut, crops = [], [], []
    for i, name in enumerate(names):
        image = np.asarray(Image.open(root / "test_img" / name).convert("RGB")).transpose(2, 0, 1)
        truth = np.asarray(Image.open(root / "test_lab" / (Path(name).stem + ".png"))
                           .convert("L")) > 0
        w, c, per = whole_and_cut(window, image, truth, bundle.meta.threshold)
        whole.append(w), cut.append(c), crops.extend(per)
        if (i + 1) % 50 == 0:
            log(f"{i + 1}/{len(names)} images", "small_images")
    # keys are merged into bench/results.json with every other part's: all prefixed
    result = {"small_images_n": len(names), "model": Path(args.model).name,
              "machine": cpu_label(),
              "small_dice_whole": round(float(np.mean(whole)), 4),
              "small_dice_crops_stitched": round(float(np.mean(cut)), 4),
              "small_dice_per_crop": round(float(np.mean(crops)), 4)}
    result["small_image_gap"] = round(result["small_dice_whole"]
                                      - result["small_dice_crops_stitched"], 4)
    (RESULTS / "results_small_images.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "SMALL_IMAGES_RESULTS.md").write_text(
        "# Images smaller than the model window\n\n"
        f"`python -m bench.small_images --limit {args.limit}` ({result['machine']}): mean "
        f"per-image Dice of {result['model']} on {len(names)} DeepCrack test images.\n\n"
        "| whole images | 3x3 crops stitched back | each crop | gap (whole - crops) |\n"
        "|---|---|---|---|\n"
        f"| {result['small_dice_whole']} | {result['small_dice_crops_stitched']} "
        f"| {result['small_dice_per_crop']} | {result['small_image_gap']} |\n\n"
        "Before windows padded SAM's way (the same model, padding with uint8 zeros before "
        "normalising, counted as image): 0.7928 whole, 0.4836 crops stitched back, 0.5309 "
        "per crop (gap 0.309), measured the same way (same images, crops and model) on the "
        "commit before the padding rule. The "
        "issue's aim, a gap of at most 0.02, is not reached by this model.\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
