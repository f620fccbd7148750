"""Crack models on every crack data set (issue 31): per-set test Dice, the false-positive rate on
crack-free regions, and the runs behind them -- the mixture model, leave-one-set-out and the
self-prompting arms.

    # score bundles on the four test sets (DeepCrack whole images, the cracks/ crops):
    python -m bench.crack_sets score --model models/samsp-crack-tiny --name committed
    # the small-photo rule (pad | fill) and threshold the bundle's own validation data choose
    # (--write: into its bundle.json); score --small-images overrides the bundle's rule:
    python -m bench.crack_sets select --model models/samsp-crack-tiny --val-cut deepcrack=3 [--write]
    # train + score: leave-one-set-out and same-budget arms on the mixture (hours on 2 cores):
    python -m bench.crack_sets runs --runs loo,arms --steps 1500 --out out/crack_sets
    # the arms (single pass, SAM-SP box, box+mask; --unet adds the U-Net) for two seeds,
    # --only some of the runs (e.g. the U-Net ones, in a second process):
    python -m bench.crack_sets runs --runs arms --unet --seeds 0,1 --steps 800 --epochs 2 \
        --out out/crack_arms [--only arm-unet,arm-unet-s1]
    # the same as fine-tunes of a bundle (leave out only sets the bundle never saw); --name makes
    # a study of its own (run names ft-loo-<set>-<name>), --set adds train.py overrides:
    python -m bench.crack_sets runs --runs loo --init samsp-crack-tiny \
        --loo-sets crack500,gaps384,shadowcrack --steps 800 [--name S --set augment.fill_small=0.5]
    # the headline keys (crack_loo_dice_* from study S; default: the runs made without --name):
    python -m bench.crack_sets report --committed NAME --before NAME [--loo-study S]

Training goes through ``jobs/train.py`` with ``configs/train_cracks_mixture_cpu.yaml`` and
``--set`` overrides, each run under ``<out>/runs/<name>`` (a finished run is not retrained: an
interrupted study resumes). Every model is scored by the same code (``score_model``): mean
per-image Dice of every pass at the bundle's threshold, tile = the model input, overlap 1/8,
and the crack-free false-positive rate. Results merge into ``bench/results/
results_crack_sets.json`` (one entry per model name) and CRACK_SETS_RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench.common import cpu_label, log  # noqa: E402
from bench.crack_free import MIXTURE_CONFIG  # noqa: E402

RESULTS = REPO / "bench" / "results"
DATA = REPO.parent / "shared" / "data"
CONFIG = MIXTURE_CONFIG
# name -> (root under DATA, layout, image_dir, mask_dir, threshold): the test split of each set.
TEST_SETS = {
    "deepcrack": ("deepcrack", "deepcrack_test", None, None, None),
    "crack500": ("cracks/Crack500", "custom", "test", "test_lab", 127),
    "gaps384": ("cracks/GAPs384", "custom", "test", "test_lab", 127),
    "shadowcrack": ("cracks/ShadowCrack", "custom", "test", "test_lab", 127),
}
# A block of the image is crack-free when the ground truth, grown by MARGIN px, has no pixel in
# it: predictions there are false alarms an inspector would see on a clean pavement.
BLOCK, MARGIN = 64, 8
# Same-budget arms on the mixture: --set overrides of the mixture config.
ARMS = {
    "single": ["model.iterations=0", "train.prompt_pretraining=0"],
    "sp_box": ["model.prompt=box"],
    "sp_boxmask": ["model.prompt=box+mask"],
}


def crack_free_fp(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    """``(false-positive px, px)`` over the crack-free ``BLOCK`` blocks of one image."""
    from scipy.ndimage import binary_dilation

    grown = binary_dilation(target, iterations=MARGIN) if target.any() else target
    h, w = target.shape
    fp = n = 0
    for r in range(0, h - BLOCK + 1, BLOCK):
        for c in range(0, w - BLOCK + 1, BLOCK):
            if grown[r:r + BLOCK, c:c + BLOCK].any():
                continue
            ok = valid[r:r + BLOCK, c:c + BLOCK]
            fp += int(np.count_nonzero(pred[r:r + BLOCK, c:c + BLOCK] & ok))
            n += int(ok.sum())
    return fp, n


def score_set(window, items, threshold: float) -> dict:
    """Mean per-image Dice of every pass, the output pass's recall/precision, and the
    crack-free false-positive rate of one test set."""
    from jobs.evaluation.data import load_item
    from jobs.evaluation.scoring import score_image

    dice, prec, rec, fp, px = [], [], [], 0, 0
    for item in items:
        image, mask, valid = load_item(item)
        prob = window(image)
        rows = score_image(prob, mask, threshold, valid=valid)
        dice.append([r["dice"] for r in rows])
        prec.append(rows[-1]["precision"])
        rec.append(rows[-1]["recall"])
        f, n = crack_free_fp(prob[-1] > threshold, mask & valid, valid)
        fp, px = fp + f, px + n
    d = np.mean(dice, axis=0)
    return {"images": len(items), "dice": float(d[-1]),
            "dice_per_pass": [round(float(v), 4) for v in d],
            "precision": float(np.mean(prec)), "recall": float(np.mean(rec)),
            "crack_free_fp_rate": fp / max(px, 1), "crack_free_px": px}


def score_model(model: str, sets: list[str], limit: int, threads: int,
                small_images: str | None = None) -> dict:
    """Every set in ``sets`` scored with the bundle at ``model`` (see ``score_set``);
    ``small_images``: how photos smaller than the window are run (default: the bundle's)."""
    import torch

    from samsp import load_bundle

    if threads:
        torch.set_num_threads(threads)
    bundle = load_bundle(model)
    window = bundle_window(bundle, small_images)
    out = {"model": model, "threshold": bundle.meta.threshold,
           "small_images": window.small_images}
    return {**out, **score_window(window, bundle.meta.threshold, sets, limit, model)}


def bundle_window(bundle, small_images: str | None = None):
    """The scoring window of every model here: tile = the model input, overlap 1/8, cores;
    small photos as ``small_images`` says (default: the bundle's rule)."""
    from jobs.inference.sliding_window import SlidingWindow, bundle_forward

    tile = bundle.meta.image_size
    return SlidingWindow(bundle_forward(bundle), tile, tile // 8, "core", 4,
                         small_images=small_images or bundle.meta.small_images)


def validation_plan(bundle, model: str, cuts: dict[str, int] | None) -> tuple[dict, list[str]]:
    """The bundle's own validation data (its training config's, from its provenance; test data
    never) and its group names; ``cuts`` (member name -> n) adds that member's images cut into
    n x n crops as a group of its own (training's ``val_cut``)."""
    import copy

    from jobs.training.data import plan_data

    data = copy.deepcopy(((bundle.meta.provenance or {}).get("config") or {}).get("data"))
    if not data:
        raise SystemExit(f"{model}: no training config in its provenance (not from jobs/train.py)")
    members = data["source"].get("members") or []
    unknown = set(cuts or {}) - {m["name"] for m in members}
    if unknown:
        raise SystemExit(f"--val-cut: no mixture member named {', '.join(sorted(unknown))}")
    if any(not 2 <= n <= 8 for n in (cuts or {}).values()):
        raise SystemExit("--val-cut: N must be 2..8 (training's val_cut)")
    for m in members:
        m["val_cut"] = (cuts or {}).get(m["name"], m.get("val_cut", 0))
    plan = plan_data(data)
    return plan, [g["name"] for g in plan.get("groups") or [{"name": "all"}]]


def select_rule(model: str, threads: int = 0, cuts: dict[str, int] | None = None) -> dict:
    """The small-photo rule and output threshold a bundle's own validation data choose, by
    training's criterion (``val_dice``: the mean over the groups of each one's mean per-image
    Dice) but with the inference window (``bundle_window``: overlap 1/8, as the jobs and the
    test scores run; training validates without overlap): for each rule (``pad``, ``fill``),
    every group's Dice at each threshold of training's sweep; the best mean wins. ``cuts``
    (member name -> n): that member's validation images also scored cut into n x n crops
    (training's ``val_cut``, a group of its own), so the choice sees small photos cut from big
    ones too. Test data is never read."""
    import torch

    from jobs.evaluation.data import load_item
    from jobs.inference.sliding_window import crops_stitched
    from jobs.training.validation import THRESHOLD_SWEEP
    from samsp import load_bundle, metrics

    if threads:
        torch.set_num_threads(threads)
    bundle = load_bundle(model)
    plan, names = validation_plan(bundle, model, cuts)
    out: dict = {"model": model, "thresholds": list(THRESHOLD_SWEEP), "cuts": cuts or {},
                 "rules": {}}
    windows = {rule: bundle_window(bundle, rule) for rule in ("pad", "fill")}
    levels = np.asarray(THRESHOLD_SWEEP)[:, None, None]
    dice: dict[str, dict[str, list]] = {rule: {} for rule in windows}
    for item in plan["val"]:  # each image read once, run both ways
        image, mask, valid = load_item(item, plan["scenes"])
        target = np.broadcast_to(mask & valid, (len(THRESHOLD_SWEEP), *mask.shape))
        for rule, window in windows.items():
            prob = (crops_stitched(window, image, item["cut"], valid) if item.get("cut")
                    else window(image, valid))[-1]
            pred = (prob[None] > levels) & valid  # [T,H,W]: every threshold at once
            dice[rule].setdefault(names[item.get("group", 0)], []).append(
                metrics.dice(pred, target))
    for rule in windows:
        per_set = {g: np.mean(v, axis=0) for g, v in dice[rule].items()}
        mean = np.mean(list(per_set.values()), axis=0)
        best = int(np.argmax(mean))
        out["rules"][rule] = {"threshold": THRESHOLD_SWEEP[best], "mean_dice": float(mean[best]),
                              "sets": {g: float(v[best]) for g, v in per_set.items()},
                              "mean_by_threshold": [round(float(v), 4) for v in mean]}
        log(f"{model}: {rule}: best threshold {THRESHOLD_SWEEP[best]} mean validation Dice "
            f"{mean[best]:.4f} ({', '.join(f'{g} {v[best]:.3f}' for g, v in per_set.items())})")
    out["chosen"] = max(out["rules"], key=lambda r: out["rules"][r]["mean_dice"])
    return out


def rewrite_bundle_meta(model: str, fields, record_key: str, record) -> None:
    """A local bundle's ``bundle.json`` with ``fields(meta)`` (a dict) applied and
    ``record(meta)`` kept in its provenance under ``record_key`` (weights untouched)."""
    from samsp.bundle import META_FILE, BundleMeta

    path = Path(model) / META_FILE
    meta = BundleMeta.model_validate_json(path.read_text())
    prov = dict(meta.provenance, **{record_key: record(meta)})
    meta = meta.model_copy(update={**fields(meta), "provenance": prov})
    path.write_text(meta.model_dump_json(indent=2))  # as save_bundle writes it


def write_choice(model: str, choice: dict) -> None:
    """The chosen rule and output threshold into the local bundle's ``bundle.json`` (weights
    and the self-prompt threshold untouched; the choice and the command behind it go into its
    provenance)."""
    rule = choice["chosen"]
    picked = choice["rules"][rule]
    rewrite_bundle_meta(model, lambda meta: {
        "small_images": rule, "threshold": picked["threshold"],
        # the self-prompts keep the threshold they ran with (None would follow the new output one)
        "prompt_threshold": (meta.prompt_threshold if meta.prompt_threshold is not None
                             else meta.threshold)}, "small_images_selection", lambda meta: {
        "command": f"python -m bench.crack_sets select --model {model} --write"
                   + "".join(f" --val-cut {k}={v}" for k, v in choice.get("cuts", {}).items()),
        "before": {"small_images": meta.small_images, "threshold": meta.threshold},
        **{r: {k: v for k, v in c.items() if k != "mean_by_threshold"}
           for r, c in choice["rules"].items()}})


def score_window(window, threshold: float, sets: list[str], limit: int, name: str) -> dict:
    """``{"sets", "mean_dice", "min_dice"}`` of a ``SlidingWindow`` (any model) on ``sets``."""
    from jobs.evaluation.data import list_pairs

    out: dict = {"sets": {}}
    for s in sets:
        root, layout, image_dir, mask_dir, thr = TEST_SETS[s]
        items = list_pairs(str(DATA / root), layout, image_dir, mask_dir, thr, limit or None)
        t0 = time.perf_counter()
        out["sets"][s] = score_set(window, items, threshold)
        log(f"{name}: {s} Dice {out['sets'][s]['dice']:.4f} "
            f"({len(items)} images, {time.perf_counter() - t0:.0f} s)")
    scores = [out["sets"][s]["dice"] for s in sets]
    out["mean_dice"] = float(np.mean(scores))
    out["min_dice"] = float(np.min(scores))
    return out


def run_config(name: str, steps: int, epochs: int, held_out: str | None, sets: list[str],
               out: Path) -> Path:
    """The mixture config of one run (a held-out set removed; ``steps`` optimiser steps over
    ``epochs`` epochs), written under ``out``."""
    cfg = yaml.safe_load(CONFIG.read_text())
    members = cfg["data"]["source"]["members"]
    for m in members:  # absolute roots: the run does not depend on the working directory
        for key in ("source", "val_source"):
            if m.get(key):
                m[key]["root"] = str((REPO / m[key]["root"]).resolve())
    cfg["data"]["source"]["members"] = [m for m in members
                                        if m["name"] != held_out and m["name"] in sets]
    batch = cfg["train"]["batch_size"]
    cfg["train"]["epochs"] = epochs
    cfg["data"]["source"]["samples_per_epoch"] = max(1, steps * batch // epochs)
    cfg["run"].update(name=name, storage_path=str(out / "runs"))
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(name: str, config: Path, overrides: list[str], out: Path) -> Path:
    """``jobs/train.py`` for one run; a run whose bundle exists is not trained again."""
    bundle = out / "runs" / name / "bundle"
    if (bundle / "bundle.json").exists():
        log(f"{name}: bundle exists, not retrained")
        return bundle
    cmd = [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config),
           "--summary", str(out / "runs" / f"{name}.summary.json")]
    for kv in overrides:
        cmd += ["--set", kv]
    (out / "runs").mkdir(parents=True, exist_ok=True)
    log(f"{name}: training ({' '.join(overrides) or 'mixture recipe'})")
    t0 = time.perf_counter()
    with open(out / "runs" / f"{name}.log", "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    log(f"{name}: trained in {time.perf_counter() - t0:.0f} s")
    return bundle


#: the marker of the U-Net arm among a run's overrides (trained in-process, not by train.py)
UNET = "unet"
#: --set overrides of a run that fine-tunes a bundle instead of training from scratch
FINE_TUNE = ["train.prompt_pretraining=0", "train.lr=0.0002"]


def planned_runs(kinds: list[str], sets: list[str], init: str | None = None,
                 loo_sets: list[str] | None = None, seeds: tuple[int, ...] = (0,),
                 unet: bool = False) -> list[tuple[str, str | None, list[str]]]:
    """``(name, held-out set, overrides)`` of every run the study asks for; with ``init`` (a
    bundle) every run fine-tunes it, named ``ft-...``. Arms run once per seed (``train.seed``:
    initialisation, sampling and augmentation; the validation split stays), seed by seed so
    an interrupted study has every arm of the first seeds; seed 0 keeps the plain name. With
    ``unet`` each seed also gets the U-Net arm (bench/crack_unet.py; marked by ``UNET``)."""
    runs = []
    if "loo" in kinds:
        runs += [(f"loo-{s}", s, []) for s in (loo_sets or sets)]
    if "arms" in kinds:
        arms = {**ARMS, **({"unet": [UNET]} if unet else {})}
        runs += [(f"arm-{a}" + (f"-s{seed}" if seed else ""), None,
                  [*o, f"train.seed={seed}"] if seed else list(o))
                 for seed in seeds for a, o in arms.items()]
    if init:
        runs = [(f"ft-{n}", held, [f"model.checkpoint={init}", *FINE_TUNE, *o])
                for n, held, o in runs]
    return runs


def train_seconds(out: Path, name: str) -> float | None:
    """A train.py run's fit seconds, from its summary."""
    path = out / "runs" / f"{name}.summary.json"
    return json.loads(path.read_text()).get("fit_s") if path.exists() else None


def arm_rows(data: dict) -> dict[str, dict]:
    """Per arm (``arm-<arm>[-s<seed>]`` entries): every seed's per-set Dice, the mean over
    seeds of each set and of the per-seed means, their spread, and pass-0 Dice of the
    self-prompted arms (what the same model gives without its self-prompt)."""
    arms: dict[str, list] = {}
    for name, m in data["models"].items():
        if name.startswith("arm-") and not m.get("held_out"):
            arm = name[4:].rsplit("-s", 1)[0] if name[4:].rsplit("-s", 1)[-1].isdigit() \
                else name[4:]
            arms.setdefault(arm, []).append(m)
    out = {}
    for arm, runs in arms.items():
        sets = [s for s in TEST_SETS if all(s in r["sets"] for r in runs)]
        means = [float(np.mean([r["sets"][s]["dice"] for s in sets])) for r in runs]
        row = {"seeds": len(runs), "mean": float(np.mean(means)),
               "spread": float(np.std(means, ddof=1)) if len(means) > 1 else None,
               "sets": {s: float(np.mean([r["sets"][s]["dice"] for r in runs])) for s in sets},
               "train_s": [r.get("train_s") for r in runs]}
        first = [[r["sets"][s].get("dice_per_pass", [None])[0] for s in sets] for r in runs]
        if all(len(r["sets"][s].get("dice_per_pass", [])) > 1 for r in runs for s in sets):
            row["pass0"] = {s: float(np.mean([f[i] for f in first])) for i, s in enumerate(sets)}
        out[arm] = row
    return out


def done_runs() -> set[str]:
    """Names already in results_crack_sets.json."""
    path = RESULTS / "results_crack_sets.json"
    return set(json.loads(path.read_text())["models"]) if path.exists() else set()


def merge(entries: dict) -> dict:
    """Merge scored models into results_crack_sets.json (by name) and return the whole file."""
    path = RESULTS / "results_crack_sets.json"
    data = json.loads(path.read_text()) if path.exists() else {"models": {}}
    data["models"].update(entries)
    data["machine"] = cpu_label()
    data["block_px"], data["margin_px"] = BLOCK, MARGIN
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return data


def merge_selection(model: str, choice: dict) -> None:
    """A ``select`` result into results_crack_sets.json (``selections``, by model path)."""
    path = RESULTS / "results_crack_sets.json"
    data = json.loads(path.read_text()) if path.exists() else {"models": {}}
    data.setdefault("selections", {})[model] = choice
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def selection_lines(data: dict) -> list[str]:
    """CRACK_SETS_RESULTS.md rows of the ``select`` results: each rule's best threshold and
    mean validation Dice (per member)."""
    rows = []
    for model, c in sorted(data.get("selections", {}).items()):
        for rule, r in c["rules"].items():
            sets = ", ".join(f"{g} {v:.3f}" for g, v in r["sets"].items())
            mark = " (chosen)" if rule == c["chosen"] else ""
            rows.append(f"| {model} | {rule}{mark} | {r['threshold']:g} | {r['mean_dice']:.4f}"
                        f" | {sets} |")
    if not rows:
        return []
    return ["", "### Small photos: pad or fill, chosen on validation", "",
            "`python -m bench.crack_sets select --model M`: each member's validation split "
            "(the bundle's own), mean per-image Dice at the best output threshold of training's "
            "sweep, photos smaller than the window padded or filled.", "",
            "| model | rule | threshold | mean validation Dice | per set |", "|---|---|---|---|---|",
            *rows]


def loo_studies(data: dict) -> dict[str | None, dict[str, float]]:
    """Leave-one-set-out results by study (``runs --name``; None: runs made without one):
    study -> held-out set -> that set's test Dice."""
    studies: dict = {}
    for m in data["models"].values():
        if m.get("held_out") and m["held_out"] in m["sets"]:
            studies.setdefault(m.get("study"), {})[m["held_out"]] = m["sets"][m["held_out"]]["dice"]
    return studies


def loo_over_seeds(data: dict, studies: list[str | None]) -> dict:
    """Several leave-one-set-out studies of one recipe (its seeds, ``runs --name`` each) as
    one: each held-out set's mean Dice over the studies, the mean over the sets, and the
    spread (standard deviation) of the studies' own means. Every study must hold the same
    held-out sets -- a mean over seeds that differ in what they left out would mislead."""
    found = loo_studies(data)
    per = [found.get(s, {}) for s in studies]
    sets = sorted(per[0]) if per else []
    if not sets or any(sorted(p) != sets for p in per):
        raise ValueError(f"studies {studies}: not the same held-out sets "
                         f"({[sorted(p) for p in per]})")
    means = [float(np.mean([p[s] for s in sets])) for p in per]
    return {"sets": {s: float(np.mean([p[s] for p in per])) for s in sets},
            "mean": float(np.mean(means)), "seed_means": means,
            "spread": float(np.std(means, ddof=1)) if len(means) > 1 else None}


def headlines(data: dict, committed: str, before: str | None,
              loo_study: str | list[str] | None = None) -> dict:
    """Flat keys for bench/results.json: the committed model's per-set test Dice, mean, min and
    crack-free false-positive rates, the leave-one-set-out Dice of each held-out set (and their
    mean) of one study (``runs --name``; None: the runs made without a name) or the mean over
    several (a recipe's seeds: ``loo_over_seeds``), and the model it replaced
    (``crack_before_*``)."""
    models, out = data["models"], {}
    for prefix, name in (("crack", committed), ("crack_before", before)):
        m = models.get(name) if name else None
        if not m:
            continue
        for s, v in m["sets"].items():
            out[f"{prefix}_test_dice_{s}"] = round(v["dice"], 4)
            out[f"{prefix}_fp_rate_crack_free_{s}"] = round(v["crack_free_fp_rate"], 6)
        out[f"{prefix}_test_dice_mean"] = round(m["mean_dice"], 4)
        out[f"{prefix}_test_dice_min"] = round(m["min_dice"], 4)
    studies = loo_study if isinstance(loo_study, list) else [loo_study]
    if all(s in loo_studies(data) for s in studies):  # none run yet: no leave-one-out keys
        seeds = loo_over_seeds(data, studies)
        for s, v in seeds["sets"].items():
            out[f"crack_loo_dice_{s}"] = round(v, 4)
        out["crack_loo_dice_mean"] = round(seeds["mean"], 4)
        if studies[0]:
            out["crack_loo_study"] = ",".join(studies)
        if len(studies) > 1:
            out["crack_loo_seeds"] = len(studies)
            out["crack_loo_dice_mean_spread"] = round(seeds["spread"], 4)
    for arm, row in arm_rows(data).items():
        out[f"crack_arm_dice_mean_{arm}"] = round(row["mean"], 4)
        for s, v in row["sets"].items():
            out[f"crack_arm_dice_{s}_{arm}"] = round(v, 4)
    return out


def markdown(data: dict, keys: dict) -> str:
    """The CRACK_SETS_RESULTS.md section: one row per scored model, per-set Dice and FP rate."""
    sets = list(TEST_SETS)
    lines = ["## Crack models on four crack data sets (issue 31)", "",
             "Mean per-image Dice of the output pass at the bundle's threshold (DeepCrack: 237 whole",
             "test images; Crack500/GAPs384: the first 300 test crops; ShadowCrack: all 125), and",
             f"the false-positive rate on crack-free {BLOCK} px blocks (no ground-truth crack within",
             f"{MARGIN} px). Machine: {data.get('machine', '?')}. Command per row: "
             "`python -m bench.crack_sets score --model M --name N`; leave-one-set-out rows: "
             "`python -m bench.crack_sets runs --runs loo ...` (settings in the row).", "",
             "| model | " + " | ".join(sets) + " | mean | FP rate (crack-free) |",
             "|---|" + "---|" * (len(sets) + 2)]
    for name, m in sorted(data["models"].items()):
        cells = [f"{m['sets'][s]['dice']:.3f}" if s in m["sets"] else "" for s in sets]
        fp = " / ".join(f"{m['sets'][s]['crack_free_fp_rate']:.4f}" for s in sets
                        if s in m["sets"])
        mean = (f"{m['mean_dice']:.3f}" if len(m["sets"]) == len(sets) else
                "(held-out set only)" if m.get("held_out") else "(not every set scored)")
        how = f" (held out: {m['held_out']}, {m.get('steps')} steps" + (
            f", fine-tuned from {m['init']}" if m.get("init") else "") + (
            f", study {m['study']}: " + " ".join(m.get("overrides", [])) if m.get("study")
            else "") + ")" if m.get("held_out") else ""
        filled = m.get("small_images") == "fill" or m.get("fill_small")  # older rows: the flag
        how += " (small photos filled: upscaled to the window)" if filled else ""
        lines.append(f"| {name}{how} | " + " | ".join(cells) + f" | {mean} | {fp} |")
    studies = loo_studies(data)
    for study, held in sorted(studies.items(), key=lambda kv: kv[0] or ""):
        lines += ["", f"Leave-one-set-out{f' (study {study})' if study else ''}: {len(held)} "
                  f"held-out set(s) ({', '.join(f'{s} {v:.3f}' for s, v in sorted(held.items()))}),"
                  f" mean {np.mean(list(held.values())):.3f}."
                  + (f" {data['loo_notes'][study or '']}"
                     if (study or "") in data.get("loo_notes", {}) else "")]
    headline = (keys.get("crack_loo_study") or "").split(",")
    if len(headline) > 1:
        seeds = loo_over_seeds(data, headline)
        lines += ["", f"Leave-one-set-out over {len(headline)} seeds (studies "
                  f"{', '.join(headline)}): per held-out set the mean over seeds ("
                  + ", ".join(f"{s} {v:.3f}" for s, v in seeds["sets"].items())
                  + f"), mean {seeds['mean']:.3f} ± {seeds['spread']:.3f} (the seeds' means: "
                  + ", ".join(f"{v:.3f}" for v in seeds["seed_means"]) + ")."]
    if studies:
        lines += ["", "Rows fine-tuned from a bundle cannot leave out a set the bundle was "
                  "trained on; `crack_loo_dice_*` are the study `report --loo-study` names "
                  f"({keys.get('crack_loo_study') or 'the runs made without a name'})."]
    arms = arm_rows(data)
    if arms:
        lines += ["", "### Same-budget arms (SAM-SP on crops)", "",
                  "Every arm trained from scratch on the mixture with the same optimiser steps "
                  "(`python -m bench.crack_sets runs --runs arms --steps S --epochs E --seeds 0,1"
                  " --unet`), mean over seeds of the per-set test Dice; `mean` is the mean over "
                  "seeds of each seed's mean over the sets (± their standard deviation); pass 0 = "
                  "the same SAM-SP model without its self-prompt."
                  + (f" {data['arms_note']}" if data.get("arms_note") else ""), "",
                  "| arm | seeds | " + " | ".join(sets) + " | mean | train s |",
                  "|---|---|" + "---|" * (len(sets) + 2)]
        for arm, row in sorted(arms.items(), key=lambda kv: -kv[1]["mean"]):
            cells = []
            for s in sets:
                cell = f"{row['sets'][s]:.3f}" if s in row["sets"] else ""
                if row.get("pass0") and s in row["pass0"]:
                    cell += f" (pass 0 {row['pass0'][s]:.3f})"
                cells.append(cell)
            spread = f" ± {row['spread']:.3f}" if row["spread"] is not None else ""
            secs = " / ".join(f"{t:.0f}" for t in row["train_s"] if t) or "?"
            lines.append(f"| {arm} | {row['seeds']} | " + " | ".join(cells)
                         + f" | {row['mean']:.3f}{spread} | {secs} |")
    lines += selection_lines(data)
    lines += ["", "Headline keys: " + ", ".join(f"`{k}` = {v}" for k, v in sorted(keys.items()))]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["score", "select", "runs", "report"])
    p.add_argument("--write", action="store_true",
                   help="select: write the chosen rule and threshold into the bundle")
    p.add_argument("--val-cut", action="append", default=[], metavar="MEMBER=N",
                   help="select: also score that member's validation images cut into N x N "
                        "crops (training's val_cut), a group of its own")
    p.add_argument("--committed", help="report: the model name whose numbers are the headlines")
    p.add_argument("--before", help="report: the model it replaced")
    p.add_argument("--loo-study", help="report: the runs --name whose leave-one-set-out runs "
                                        "are the headline (default: the runs made without one); "
                                        "a comma list: one recipe's seeds, averaged")
    p.add_argument("--model", help="bundle to score (score mode)")
    p.add_argument("--name", help="score: the model's name in the results; runs --runs loo: a "
                                   "study name, appended to every run's name and recorded")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="runs --runs loo: a jobs/train.py --set for every run (repeatable)")
    p.add_argument("--runs", default="loo,arms", help="loo, arms (runs mode)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps per run")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", default="0", help="arms: comma list of train.seed values")
    p.add_argument("--only", help="runs mode: only these run names (comma list)")
    p.add_argument("--unet", action="store_true",
                   help="arms: add the U-Net arm (segmentation-models-pytorch, benchmark-only)")
    p.add_argument("--sets", default=",".join(TEST_SETS))
    p.add_argument("--init", help="fine-tune this bundle (path or name) in every run")
    p.add_argument("--loo-sets", help="sets to leave out one at a time (default: --sets)")
    p.add_argument("--limit", type=int, default=300, help="test images per set (0 = all)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="out/crack_sets")
    p.add_argument("--small-images", choices=("pad", "fill"),
                   help="score/select: photos smaller than the window padded or filled "
                        "(default: the bundle's small_images)")
    args = p.parse_args(argv)
    sets = args.sets.split(",")
    if args.mode == "report":
        path = RESULTS / "results_crack_sets.json"
        data = json.loads(path.read_text())
        studies = args.loo_study.split(",") if args.loo_study else None
        missing = [s for s in studies or [] if s not in loo_studies(data)]
        if missing:
            p.error(f"--loo-study {','.join(missing)}: no leave-one-set-out run of that study")
        try:
            keys = headlines(data, args.committed, args.before, studies)
        except ValueError as err:
            p.error(f"--loo-study: {err}")
        data = {k: v for k, v in data.items() if not k.startswith("crack_")} | keys
        path.write_text(json.dumps(data, indent=1, sort_keys=True))
        (RESULTS / "CRACK_SETS_RESULTS.md").write_text(markdown(data, keys))
        return 0
    if args.mode == "select":
        if not args.model:
            p.error("select needs --model (a local bundle folder)")
        cuts = {k: int(v) for k, v in (c.split("=") for c in args.val_cut)}
        choice = select_rule(args.model, args.threads, cuts)
        merge_selection(args.model, choice)
        if args.write:
            write_choice(args.model, choice)
        return 0
    if args.mode == "score":
        entry = score_model(args.model, sets, args.limit, args.threads, args.small_images)
        merge({args.name or Path(args.model).name: entry})
        return 0
    if (args.name or args.overrides) and args.runs != "loo":
        # arm rows group seeds by name and the U-Net arm trains outside train.py: a study
        # name or extra overrides would split or misrecord them
        p.error("--name and --set are for --runs loo only")
    out = Path(args.out).resolve()
    loo_sets = args.loo_sets.split(",") if args.loo_sets else None
    seeds = tuple(int(v) for v in args.seeds.split(","))
    for name, held, overrides in planned_runs(args.runs.split(","), sets, args.init, loo_sets,
                                              seeds, args.unet):
        named = f"{name}-{args.name}" if args.name else name
        if args.only and not {name, named} & set(args.only.split(",")):
            continue
        name = named
        overrides = [*overrides, *args.overrides]
        config = run_config(name, args.steps, args.epochs, held, sets, out)
        if UNET in overrides:
            from bench.crack_unet import run_unet

            if name in done_runs():
                log(f"{name}: scored before, not retrained")
                continue
            seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("train.seed=")), 0)
            entry = run_unet(config, args.steps, seed, out / "runs" / name, args.threads,
                             lambda w, t: score_window(w, t, sets, args.limit, name))
            entry.update(held_out=None, steps=args.steps, overrides=overrides, init=None)
            merge({name: entry})
            continue
        bundle = train(name, config, overrides, out)
        entry = score_model(str(bundle), [held] if held else sets, args.limit, args.threads)
        entry.update(held_out=held, steps=args.steps, overrides=overrides, init=args.init,
                     train_s=train_seconds(out, name), study=args.name)
        merge({name: entry})
    return 0


if __name__ == "__main__":
    sys.exit(main())
