"""Does a SAM-SP model follow prompts at all? Pass 1 prompted from the ground truth vs from itself.

    .venv/bin/python -m bench.oracle_prompts --bundle models/samsp-crack-tiny --name spsd_box_detail \\
        [--bundle out/.../bundle --name spsd_box_pp_detail ...] [--test-limit N]

Self-prompting can only help if (a) the model uses its prompt and (b) the self-prompt carries
something pass 0 did not already know. This separates the two on the DeepCrack test set: every
image runs in ``crop`` windows (cores stitched, as ``jobs/evaluate.py``) with pass 1 prompted
three ways -- by pass 0 (SAM-SP itself), by the ground truth's box (no jitter) and by the
ground truth coarsened to SAM's mask-prompt grid (``samsp.prompts.prompt_from_target``, what
promptable pre-training feeds). If pass 1 gains much from a ground-truth prompt, the model follows
prompts and the self-prompt is what is missing; if it gains nothing, the model ignores prompts.
Per-image Dice at each bundle's own threshold. Writes ``bench/results/results_oracle_prompts.json`` and
``bench/results/ORACLE_PROMPTS_RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.common import cpu_label
from jobs.evaluation.data import list_pairs, load_item
from jobs.evaluation.scoring import score_image
from jobs.inference.sliding_window import SlidingWindow

# pass-1 prompt sources: name -> prompt_from_target kind (None = the model's own self-prompt)
SOURCES = {"self": None, "gt_box": "box", "gt_mask": "mask"}


def oracle_forward(bundle, precision: str = "auto", box_fractions: list | None = None):
    """A ``SlidingWindow`` tile forward over 4-band tiles (RGB + ground truth): returns
    ``[1 + len(SOURCES), B, S, S]`` probabilities -- pass 0, then pass 1 of every source.
    ``box_fractions`` collects, per window holding foreground, the share of the window its
    ground-truth box covers (a box that covers the window tells the decoder nothing)."""
    # torch and samsp once measuring: the CLI answers --help and argument errors without.
    import torch

    from samsp.precision import autocast, resolve_precision
    from samsp.preprocess import model_inputs, pass_probabilities
    from samsp.prompts import prompt_from_target

    meta, model = bundle.meta, bundle.model.eval()
    precision = resolve_precision(precision, "cpu")

    def forward(tiles: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        if tiles.shape[-1] != meta.image_size:
            raise SystemExit("oracle prompts need windows of the model's input size")
        x, ok, size = model_inputs(tiles[:, :3], meta.image_size, meta.pixel_mean,
                                   meta.pixel_std, valid)
        target = torch.from_numpy(tiles[:, 3:4] > 0)
        probs = []
        if box_fractions is not None:
            box = prompt_from_target("box", target, ok, jitter=0.0)["boxes"]
            area = (box[:, 2] - box[:, 0] + 1) * (box[:, 3] - box[:, 1] + 1)
            has = target.flatten(1).any(1)
            box_fractions.extend((area[has] / float(meta.image_size ** 2)).tolist())
        with torch.inference_mode(), autocast(precision, "cpu"):
            for name, kind in SOURCES.items():
                first = None if kind is None else prompt_from_target(kind, target, ok, jitter=0.0)
                out = model(x, iterations=1, valid=ok, first_prompt=first)
                passes = out.logits if name == "self" else out.logits[1:]
                probs += pass_probabilities(passes, size, meta.image_size)
        return torch.stack(probs).numpy().astype(np.float32)

    return forward


def measure(uri: str, items: list[dict], overlap: int) -> dict:
    from samsp import load_bundle

    bundle = load_bundle(uri)
    fractions: list[float] = []
    window = SlidingWindow(oracle_forward(bundle, box_fractions=fractions),
                           bundle.meta.image_size, overlap, "core")
    names = ["pass0"] + [f"pass1_{s}" for s in SOURCES]
    dice = {n: [] for n in names}
    t0 = time.perf_counter()
    for item in items:
        image, mask, valid = load_item(item)
        stacked = np.concatenate([image, mask[None].astype(np.uint8)], axis=0)
        # valid=None: every window pixel counts as image, as jobs/evaluate.py windows them
        rows = score_image(window(stacked, valid=None), mask, bundle.meta.threshold, valid=valid)
        for n, row in zip(names, rows):
            dice[n].append(row["dice"])
    res = {n: round(float(np.mean(v)), 4) for n, v in dice.items()}
    res.update(gt_box_window_fraction=round(float(np.mean(fractions)), 3),
               gt_box_over_half_window=round(float(np.mean(np.asarray(fractions) > 0.5)), 3),
               prompt=bundle.meta.prompt, threshold=bundle.meta.threshold, images=len(items),
               seconds=round(time.perf_counter() - t0, 1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", required=True)
    ap.add_argument("--name", action="append", required=True, help="one per --bundle")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "deepcrack"))
    ap.add_argument("--test-limit", type=int)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "results_oracle_prompts.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "ORACLE_PROMPTS_RESULTS.md"))
    args = ap.parse_args(argv)
    if len(args.bundle) != len(args.name):
        ap.error("give one --name per --bundle")
    import torch

    torch.set_num_threads(args.threads)
    items = list_pairs(args.data, "deepcrack_test", limit=args.test_limit)
    rows = {name: measure(uri, items, args.overlap) for name, uri in zip(args.name, args.bundle)}
    keys = {}
    for name, r in rows.items():
        own = "gt_box" if r["prompt"] == "box" else "gt_mask"
        keys[f"i17_oracle_gain_{name}"] = round(r[f"pass1_{own}"] - r["pass0"], 4)
        keys[f"i17_self_prompt_gain_{name}"] = round(r["pass1_self"] - r["pass0"], 4)
        keys[f"i17_gt_mask_gain_{name}"] = round(r["pass1_gt_mask"] - r["pass0"], 4)
    Path(args.json).write_text(json.dumps({**keys, "arms": rows}, indent=1) + "\n")
    cmd = "python -m bench.oracle_prompts " + " ".join(
        f"--bundle {u} --name {n}" for u, n in zip(args.bundle, args.name)) + (
        f" --test-limit {args.test_limit}" if args.test_limit else "") + (
        f" --overlap {args.overlap}" if args.overlap != 32 else "")
    md = ["## Issue 17: does the model follow prompts? (pass 1 prompted by the ground truth)", "",
          f"Command: `{cmd}`; {time.strftime('%Y-%m-%d %H:%M')}, {cpu_label()},"
          f" {args.threads} threads. DeepCrack test ({len(items)} images), windows of the model "
          f"input (overlap {args.overlap}, cores stitched), per-image Dice at the bundle's threshold. Pass 1 is "
          "prompted by pass 0 (`self`, SAM-SP), by the ground truth's box (`gt_box`, no jitter) or "
          "by the ground truth coarsened to SAM's 64x64 mask-prompt grid (`gt_mask`).", "",
          "| model | prompt | pass 0 | pass 1, self | pass 1, GT box | pass 1, GT mask |",
          "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['prompt']} | {r['pass0']:.4f} | {r['pass1_self']:.4f} | "
                  f"{r['pass1_gt_box']:.4f} | {r['pass1_gt_mask']:.4f} |")
    any_row = next(iter(rows.values()))
    md += ["", f"A ground-truth box covers on average {any_row['gt_box_window_fraction']:.0%} of "
           f"its window (windows holding crack pixels); "
           f"{any_row['gt_box_over_half_window']:.0%} of those boxes cover more than half.", ""]
    md += ["", "Keys: " + ", ".join(f"`{k}` = {v}" for k, v in keys.items()), ""]
    Path(args.md).write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
