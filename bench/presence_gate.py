"""The window presence gate (``samsp.presence``) a crack bundle's own validation data choose.

    python -m bench.presence_gate --model out/presence31/bundle --val-cut deepcrack=3 [--write]

Each mixture member's validation split (the bundle's own, from its training config; with
``--val-cut M=N`` that member's images also cut into N x N crops and stitched back, a group of
its own: photos smaller than the window, many of them crack-free), run in the scoring window of
``bench.crack_sets`` (tile = model input, overlap 1/8, the bundle's small-photo rule) at the
bundle's output threshold. The final pass is scored with every window gated at each presence
threshold of ``PRESENCE_SWEEP`` (0 = no gate): mean per-image Dice per group, their mean
(training's ``val_dice``), and on the cut crops that hold no crack pixel the share that raise a
false alarm (``bench.crack_free.CLEAN_ALARM``). The gate with the best mean wins if it adds at
least ``MIN_GAIN`` to the ungated mean, else none. The sweep runs in float32 (the jobs run bf16
where the device has it natively: a window whose presence lies right at the gate may go the
other way there). ``--write`` puts it into the bundle's ``bundle.json`` (weights untouched; the sweep goes
into ``provenance.presence_selection``). Results: bench/results/results_presence_gate.json and
PRESENCE_GATE_RESULTS.md (``--note`` adds a line under a model's table). Test data is never
read.
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

from bench.common import cpu_label, log  # noqa: E402
from bench.crack_free import CLEAN_ALARM  # noqa: E402

RESULTS = REPO / "bench" / "results" / "results_presence_gate.json"
MARKDOWN = RESULTS.with_name("PRESENCE_GATE_RESULTS.md")
#: presence thresholds tried; 0 = no gate
PRESENCE_SWEEP = (0.0, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
#: the mean validation Dice a gate must add to be chosen
MIN_GAIN = 0.001


def gate_sweep_forward(bundle, gates=PRESENCE_SWEEP):
    """A ``TileForward`` whose planes are the final pass with the windows gated at each of
    ``gates`` (``[G,B,h,w]``), so one run over an image scores every gate."""
    import torch

    from samsp.preprocess import model_inputs, pass_probabilities
    from samsp.presence import presence_probability

    meta, model = bundle.meta, bundle.model.eval()

    def forward(tiles: np.ndarray, valid) -> np.ndarray:
        x, ok, size = model_inputs(tiles, meta.image_size, meta.pixel_mean, meta.pixel_std,
                                   valid, band_map=meta.band_map)
        with torch.inference_mode():
            out = model(x, valid=ok)
            present = presence_probability(out)[:, None, None]  # [B,1,1]
            prob = pass_probabilities([out.logits[-1]], size, meta.image_size)[0]  # [B,h,w]
            return torch.stack([prob * (present >= g) for g in gates]).numpy()

    return forward


def clean_alarms(prob: np.ndarray, mask: np.ndarray, cut: int, threshold: float
                 ) -> tuple[int, np.ndarray]:
    """Crack-free crops of an image cut ``cut`` x ``cut`` and, per gate plane of ``prob``
    ``[G,H,W]``, how many of them raise a false alarm."""
    from samsp.sliding_window import grid_cuts

    rows, cols = grid_cuts(*mask.shape, cut)
    clean, alarms = 0, np.zeros(len(prob), np.int64)
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            if mask[r0:r1, c0:c1].any():
                continue
            clean += 1
            marked = (prob[:, r0:r1, c0:c1] > threshold).mean(axis=(1, 2))
            alarms += marked >= CLEAN_ALARM
    return clean, alarms


def sweep(model: str, cuts: dict[str, int]) -> dict:
    """Every gate's validation Dice per group, their mean and the crack-free crops' alarms."""
    from bench.crack_sets import bundle_window, validation_plan
    from jobs.evaluation.data import load_item
    from jobs.inference.sliding_window import crops_stitched
    from samsp import load_bundle, metrics

    bundle = load_bundle(model)
    plan, names = validation_plan(bundle, model, cuts)
    window = bundle_window(bundle)
    window.forward = gate_sweep_forward(bundle)
    threshold = bundle.meta.threshold
    dice: dict[str, list] = {}
    clean, alarms = 0, np.zeros(len(PRESENCE_SWEEP), np.int64)
    for item in plan["val"]:
        image, mask, valid = load_item(item, plan["scenes"])
        cut = item.get("cut")
        prob = crops_stitched(window, image, cut, valid) if cut else window(image, valid)
        target = np.broadcast_to(mask & valid, prob.shape)
        dice.setdefault(names[item.get("group", 0)], []).append(metrics.dice((prob > threshold) & valid, target))
        if cut:
            n, a = clean_alarms(prob * valid, mask & valid, cut, threshold)
            clean, alarms = clean + n, alarms + a
    per_group = {g: np.mean(v, axis=0) for g, v in dice.items()}
    mean = np.mean(list(per_group.values()), axis=0)
    best = int(np.argmax(mean))
    if mean[best] < mean[0] + MIN_GAIN:  # a gate that does not clearly help is none
        best = 0
    rows = [{"presence_threshold": g, "mean_dice": round(float(mean[i]), 4),
             "groups": {k: round(float(v[i]), 4) for k, v in per_group.items()},
             "clean_crops_alarm_share": round(float(alarms[i]) / clean, 4) if clean else None}
            for i, g in enumerate(PRESENCE_SWEEP)]
    for r in rows:
        log(f"{model}: gate {r['presence_threshold']:g}: mean validation Dice "
            f"{r['mean_dice']:.4f}, crack-free cut crops with an alarm "
            f"{r['clean_crops_alarm_share']}", "presence_gate")
    return {"model": model, "threshold": threshold, "cuts": cuts, "clean_crops": clean,
            "rows": rows, "chosen": PRESENCE_SWEEP[best] or None}


def write_choice(model: str, result: dict) -> None:
    """The chosen gate into the local bundle's ``bundle.json``; the sweep into its provenance."""
    from bench.crack_sets import rewrite_bundle_meta

    rewrite_bundle_meta(model, lambda meta: {"presence_threshold": result["chosen"]},
                        "presence_selection", lambda meta: {
                            "command": f"python -m bench.presence_gate --model {model} --write"
                                       + "".join(f" --val-cut {k}={v}"
                                                 for k, v in result["cuts"].items()),
                            "before": meta.presence_threshold, "rows": result["rows"]})


def markdown(data: dict) -> str:
    """PRESENCE_GATE_RESULTS.md: one table per model, gate by gate."""
    lines = ["## Window presence gate, chosen on validation (`bench/presence_gate.py`)", "",
             "`python -m bench.presence_gate --model M --val-cut deepcrack=3`: the bundle's own "
             "validation splits at its output threshold, the final pass with every window "
             "whose presence probability (`samsp.presence`) is below the gate emptied; mean "
             "per-image Dice per group and their mean; and the share of the crack-free cut "
             "crops that raise a false alarm (>= 1 % of their pixels marked). A gate is chosen "
             f"only if it adds >= {MIN_GAIN} to the ungated mean."]
    for model, r in sorted(data.items()):
        groups = sorted(r["rows"][0]["groups"])
        lines += ["", f"### {model}", "", f"{r.get('machine', '')}; output threshold "
                  f"{r['threshold']}, {r['clean_crops']} crack-free cut crops; chosen: "
                  f"{r['chosen'] or 'no gate'}. {r.get('note', '')}".rstrip(), "",
                  "| gate | mean | " + " | ".join(groups) + " | crack-free crops with an alarm |",
                  "|---" * (len(groups) + 3) + "|"]
        for row in r["rows"]:
            share = row["clean_crops_alarm_share"]
            lines.append(f"| {row['presence_threshold'] or 'none'} | {row['mean_dice']:.4f} | "
                         + " | ".join(f"{row['groups'][g]:.4f}" for g in groups)
                         + f" | {'-' if share is None else f'{100 * share:.1f} %'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a local bundle folder")
    p.add_argument("--val-cut", action="append", default=[], metavar="MEMBER=N",
                   help="also score that member's validation images cut into N x N crops")
    p.add_argument("--write", action="store_true", help="write the chosen gate into the bundle")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--note", default="", help="a line kept under this model's table")
    args = p.parse_args(argv)
    try:
        cuts = {k: int(v) for k, v in (c.split("=") for c in args.val_cut)}
    except ValueError:
        p.error("--val-cut takes MEMBER=N")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = sweep(args.model, cuts)
    result.update(machine=cpu_label(), note=args.note)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[args.model] = result
    RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True))
    MARKDOWN.write_text(markdown(data))
    if args.write:
        write_choice(args.model, result)
    log(f"chosen presence threshold: {result['chosen']}", "presence_gate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
