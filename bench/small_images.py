"""Images smaller than the model window (issue 31): a crack model's Dice on DeepCrack test images
evaluated whole and cut into 3x3 crops (about 181x128, smaller than the 256 window) at native
resolution -- the same pixels, so any difference is what the padding does.

    python -m bench.small_images [--model models/samsp-crack-tiny] [--limit 237]

Writes bench/results/results_small_images.json and SMALL_IMAGES_RESULTS.md: mean per-image Dice
of the whole images, of the crops stitched back into whole images, and of the crops one by one --
with the windows padded as every forward pads now (SAM's padding, invalid) and, for comparison,
as evaluation padded before (uint8 zeros before normalising, counted as image).
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
from samsp.preprocess import pass_probabilities, prepare_batch, prepare_valid  # noqa: E402

RESULTS = REPO / "bench" / "results"


def dice(probs: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    return float(metrics.dice(torch.from_numpy(probs > threshold)[None],
                              torch.from_numpy(truth)[None])[0])


def raw_padding_forward(bundle):
    """The forward evaluation used before the padding rule: the window's zero padding goes
    through normalisation (near-black) and counts as image (the old ``samsp_forward``)."""
    meta, model = bundle.meta, bundle.model.eval()

    def forward(tiles: np.ndarray, valid) -> np.ndarray:  # ``valid`` ignored: all image
        x, size = prepare_batch(tiles, meta.image_size, meta.pixel_mean, meta.pixel_std)
        ok = prepare_valid(len(x), size, meta.image_size)
        with torch.inference_mode():
            out = model(x, valid=ok)
            return torch.stack(pass_probabilities(out.logits, size, meta.image_size)).numpy()

    return forward


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


def measure(window: SlidingWindow, root: Path, names: list[str], threshold: float) -> dict:
    """Mean Dice over ``names``: whole, crops stitched back, each crop."""
    whole, cut, crops = [], [], []
    for i, name in enumerate(names):
        image = np.asarray(Image.open(root / "test_img" / name).convert("RGB")).transpose(2, 0, 1)
        truth = np.asarray(Image.open(root / "test_lab" / (Path(name).stem + ".png"))
                           .convert("L")) > 0
        w, c, per = whole_and_cut(window, image, truth, threshold)
        whole.append(w), cut.append(c), crops.extend(per)
        if (i + 1) % 50 == 0:
            log(f"{i + 1}/{len(names)} images", "small_images")
    return {"whole": round(float(np.mean(whole)), 4), "crops": round(float(np.mean(cut)), 4),
            "per_crop": round(float(np.mean(crops)), 4)}


def write_results(result: dict, limit: int) -> None:
    (RESULTS / "results_small_images.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = [("SAM's padding, invalid (now)", "small_dice_whole", "small_dice_crops_stitched",
             "small_dice_per_crop", "small_image_gap"),
            ("uint8 zeros before normalising, as image (before)", "raw_padding_dice_whole",
             "raw_padding_dice_crops_stitched", "raw_padding_dice_per_crop",
             "raw_padding_gap")]
    table = "".join(f"| {label} | {result[w]} | {result[c]} | {result[p]} | {result[g]} |\n"
                    for label, w, c, p, g in rows)
    (RESULTS / "SMALL_IMAGES_RESULTS.md").write_text(
        "# Images smaller than the model window\n\n"
        f"`python -m bench.small_images --limit {limit}` ({result['machine']}): mean per-image "
        f"Dice of {result['model']} on {result['small_images_n']} DeepCrack test images, whole "
        "and cut into 3x3 crops (about 181x128, smaller than the 256 window).\n\n"
        "| windows padded with | whole images | crops stitched back | each crop | gap |\n"
        "|---|---|---|---|---|\n" + table + "\n"
        "The aim (issue 31) is a gap of at most 0.02; the committed model does not reach it.\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "samsp-crack-tiny"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "deepcrack"))
    parser.add_argument("--limit", type=int, default=237)
    args = parser.parse_args(argv)
    bundle = load_bundle(args.model)
    root = Path(args.data)
    names = sorted(p.name for p in (root / "test_img").iterdir())[: args.limit]
    # keys are merged into bench/results.json with every other part's: all prefixed
    result = {"small_images_n": len(names), "model": Path(args.model).name,
              "machine": cpu_label()}
    for prefix, forward in (("small", bundle_forward(bundle, precision="fp32")),
                            ("raw_padding", raw_padding_forward(bundle))):
        got = measure(SlidingWindow(forward, tile=256, overlap=32), root, names,
                      bundle.meta.threshold)
        result.update({f"{prefix}_dice_whole": got["whole"],
                       f"{prefix}_dice_crops_stitched": got["crops"],
                       f"{prefix}_dice_per_crop": got["per_crop"]})
        gap_key = "small_image_gap" if prefix == "small" else "raw_padding_gap"
        result[gap_key] = round(got["whole"] - got["crops"], 4)
    write_results(result, args.limit)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
