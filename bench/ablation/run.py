"""SAM-SP ablations on real data with equal wall-clock training budgets per arm.

    # the real thing (hours on 2 CPU cores):
    .venv/bin/python bench/ablation/run.py --data ../shared/data/deepcrack --budget-s 1800 --seeds 0,1 \\
        --out out/ablate/deepcrack
    # EPFL roads (fixed train/test split made under --out):
    .venv/bin/python bench/ablation/run.py --dataset epfl --data ../shared/data/roads_epfl \\
        --arms single,spsd_box,unet --budget-s 900 --seeds 0,1 --out out/ablate/roads
    # smoke (minutes):
    .venv/bin/python bench/ablation/run.py --data ../shared/data/deepcrack --budget-s 20 --seeds 0 \\
        --arms single,spsd_box,infer_k2,unet --test-limit 6 --val-limit 4 --out out/ablate/smoke

Arms (``--arms``, comma list or ``all``):

=============  ===============================================================================
single         K = 0 (no self-prompting)
sp_<prompt>    K = 1, prompt box | mask | boxmask | points, no distillation (distill_weight 0)
spsd_<prompt>  the same with self-distillation (distill_weight ``--distill``; spsd_box = SAM-SP)
train_k2       trained with K = 2 (box + distillation)
infer_k2/k3    no training: the best K = 1 arm (mean validation Dice over seeds) run with K = 2/3
unet           segmentation_models_pytorch U-Net (random init), same data, loss, optimiser,
               schedule and budget (in-process loop; SMP is a benchmark-only dependency)
=============  ===============================================================================

Every SAM arm trains through ``jobs/train.py`` itself (its CLI, one Ray Train worker, ``--set``
overrides; model ``vit_tiny``, ``finetune: full``), which exports the best-validation bundle.
Equal budgets: ``jobs/train.py`` has no time limit, so each arm's optimizer-step rate is first
measured in-process on the same model, data pipeline, loss and optimiser (``--calib-s``), and the
run gets ``budget x rate`` steps (epochs x samples_per_item chosen to match; for budgets shorter
than one epoch, ``data.source.limit`` shrinks the training set -- smoke runs only, flagged).
Measured training seconds and steps of every run are reported, so the equality can be checked.

Evaluation (``jobs/evaluate.py`` functions): threshold chosen on the run's validation split
(mean Dice of the output pass), then the test set with sliding windows over full-size images
(tile = model input, overlap ``--eval-overlap``, cores stitched). Per arm: mean +- sample std,
min/max and a 95 % t-interval over seeds. Results: ``<out>/ablation.json`` and
``<out>/ABLATION.md``; every run's record under ``<out>/runs/<arm>-s<seed>/`` (a rerun skips
finished runs, so an interrupted ablation resumes). The in-process training steps (calibration,
U-Net) are in ``bench/ablation/steps.py``, the report in ``bench/ablation/report.py``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.ablation.report import aggregate, headline, publish, write_md  # noqa: E402
from bench.ablation.steps import augmented_batches, measure_rate, sam_step_fn, unet_parts  # noqa: E402
from bench.common import cpu_label
from bench.common import machine as machine_info
from jobs.evaluation import run as ev
from jobs.evaluation.data import list_pairs
from jobs.inference.sliding_window import SlidingWindow, bundle_forward
from jobs.runtime.config import load_config
from jobs.training.config import TrainConfig
from jobs.training.data import TrainDataset, plan_data, split_items

PROMPTS = {"box": "box", "mask": "mask", "boxmask": "box+mask", "points": "points"}


def _arm_table(distill: float) -> dict[str, dict]:
    arms: dict[str, dict] = {
        "single": {"kind": "sam", "iterations": 0, "prompt": "box", "distill": 0.0,
                   "what": "single pass, K=0"},
    }
    for name, prompt in PROMPTS.items():
        arms[f"sp_{name}"] = {"kind": "sam", "iterations": 1, "prompt": prompt, "distill": 0.0,
                              "what": f"K=1 {prompt}, no distillation"}
    for name, prompt in PROMPTS.items():
        arms[f"spsd_{name}"] = {"kind": "sam", "iterations": 1, "prompt": prompt,
                                "distill": distill,
                                "what": f"K=1 {prompt} + self-distillation"}
    arms["train_k2"] = {"kind": "sam", "iterations": 2, "prompt": "box", "distill": distill,
                        "what": "trained K=2 box + self-distillation"}
    arms["infer_k2"] = {"kind": "infer", "iterations": 2,
                        "what": "best K=1 arm, K=2 at inference"}
    arms["infer_k3"] = {"kind": "infer", "iterations": 3,
                        "what": "best K=1 arm, K=3 at inference"}
    # Issue 17: promptable pre-training (the first 30 % of the steps prompt pass 1 from the
    # ground truth, inside the same budget) and the detail branch, alone and together.
    arms["spsd_box_pp"] = {**arms["spsd_box"], "sets": ["train.prompt_pretraining=0.3"],
                           "what": "K=1 box + distillation after promptable pre-training"}
    for name in ("single", "spsd_box", "spsd_mask", "spsd_box_pp"):
        base = arms[name]
        arms[f"{name}_detail"] = {**base, "sets": base.get("sets", []) + [
            "model.detail_branch=true", "model.detail_stride=2"],
            "what": base["what"] + ", detail branch (stride 2)"}
    # Issue 17's loss options, on the best 10-minute SAM-SP arm (each against its default):
    # skeleton recall (recall is the weak side on cracks) and BCE at half the Dice weight.
    base = arms["spsd_box_pp_detail"]
    for suffix, setting, what in (("skel", "loss.skeleton_weight=1.0", "+ skeleton recall (weight 1)"),
                                  ("bce05", "loss.bce_weight=0.5", "BCE weight 0.5 (Dice 1)")):
        arms[f"spsd_box_pp_detail_{suffix}"] = {**base, "sets": base["sets"] + [setting],
                                                "what": f"{base['what']}, {what}"}
    arms["unet"] = {"kind": "unet", "what": "SMP U-Net, random init"}
    return arms


def log(msg: str) -> None:
    print(f"[ablate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ============================================================================ data

def epfl_split(root: Path, out: Path, test_fraction: float = 0.2, seed: int = 20240823):
    """Fixed EPFL train/test split as symlink folders under ``out``; returns (trainval, test)."""

    items = list_pairs(str(root), "epfl")
    trainval, test = split_items(items, test_fraction, seed)
    dirs = {}
    for name, part in (("trainval", trainval), ("test", test)):
        base = out / f"epfl_{name}"
        for sub in ("images", "groundtruth"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for it in part:
            for key, sub in (("image", "images"), ("mask", "groundtruth")):
                link = base / sub / Path(it[key]).name
                if not link.exists():
                    link.symlink_to(Path(it[key]).resolve())
        dirs[name] = base
    (out / "epfl_split.json").write_text(json.dumps(
        {"seed": seed, "test_fraction": test_fraction,
         "test": sorted(it["key"] for it in test)}, indent=1))
    return dirs["trainval"], dirs["test"]


def dataset_spec(args) -> dict:
    """Training source (train.py ``data.source``) and test pair folder for the dataset."""
    root = Path(args.data).resolve()
    if args.dataset == "deepcrack":
        return {"train": {"root": str(root), "layout": "deepcrack"},
                "test": {"root": str(root), "layout": "deepcrack_test"}}
    trainval, test = epfl_split(root, Path(args.out).resolve() / "data")
    return {"train": {"root": str(trainval), "layout": "epfl"},
            "test": {"root": str(test), "layout": "epfl"}}


# ============================================================================ configs

def base_overrides(args, spec: dict, seed: int) -> list[str]:
    train = spec["train"]
    sets = [
        "model.type=vit_tiny", "model.finetune=full", "model.checkpoint=null",
        "data.source.kind=pairs", f"data.source.root={train['root']}",
        f"data.source.layout={train['layout']}",
        f"data.split.val_fraction={args.val_fraction}", "data.split.seed=0",
        f"augment.crop={args.crop}", f"train.batch_size={args.batch_size}", f"train.seed={seed}",
        "train.log_every=0", "scaling.num_workers=1", f"scaling.cpus_per_worker={args.threads}",
        f"scaling.torch_threads={args.threads}", "scaling.use_gpu=false", "run.max_failures=0",
    ]
    return sets + list(args.train_set)


def arm_overrides(arm: dict) -> list[str]:
    return [f"model.iterations={arm['iterations']}", f"model.prompt={arm['prompt']}",
            f"loss.distill_weight={arm['distill']}"] + list(arm.get("sets", []))


def load_cfg(sets: list[str]):

    return load_config(TrainConfig, None, sets)


def schedule(steps: int, n_train: int, batch: int, max_epochs: int = 4) -> dict:
    """Epochs x samples_per_item (x optional item limit) giving about ``steps`` optimizer steps
    with one worker."""
    steps = max(1, int(steps))
    best = None
    for epochs in range(1, max_epochs + 1):
        for spi in range(1, 200):
            per_epoch = math.ceil(n_train * spi / batch)
            total = epochs * per_epoch
            err = abs(total - steps) / steps
            key = (err, epochs)
            if best is None or key < best[0]:
                best = (key, {"epochs": epochs, "samples_per_item": spi, "steps": total,
                              "limit": None})
            if total > steps:
                break
    plan = best[1]
    if math.ceil(n_train / batch) > 1.25 * steps:  # not even one epoch fits the budget
        n_items = max(2, steps * batch)
        plan = {"epochs": 1, "samples_per_item": 1, "steps": math.ceil(n_items / batch),
                "limit_train_items": n_items}
    return plan


# ============================================================================ evaluation

def evaluate_run(args, forward, plan: dict, test_items: list[dict]) -> dict:
    """Threshold on validation (output pass), then test metrics of every pass."""

    window = SlidingWindow(forward, args.crop, args.eval_overlap, "core", args.eval_batch)
    val_items = plan["val"][:args.val_limit] if args.val_limit else plan["val"]
    sweep = ev.sweep_thresholds(window, val_items, ev.parse_thresholds(args.thresholds),
                                scenes=plan["scenes"])
    res = ev.evaluate_items(window, test_items, sweep["best"], extra_thresholds=[0.5])
    out = res.summary["output"]
    return {
        "threshold": sweep["best"], "val_dice": sweep["best_dice"], "val_images": sweep["images"],
        "test_images": res.summary["images"],
        "test": {k: out[k] for k in ("dice", "iou", "precision", "recall", "tol_f1",
                                     "dice_pooled")},
        "test_at_0.5": {k: res.summary["output_at"]["0.5"][k] for k in ("dice", "tol_f1")}
        if "0.5" in res.summary["output_at"] else
        {k: out[k] for k in ("dice", "tol_f1")},
        "test_passes": {k: {m: v[m] for m in ("dice", "iou", "tol_f1")}
                        for k, v in res.summary["passes"].items()},
        "inference_s_per_image": res.summary["inference_s_per_image"],
    }


# ============================================================================ runs

class Ablation:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.arms = _arm_table(args.distill)
        self.spec = dataset_spec(args)
        self.calib_path = self.out / "calibration.json"
        self.calib = json.loads(self.calib_path.read_text()) if self.calib_path.exists() else {}
        self._plans: dict[int, dict] = {}
        self._test = None

    # -- shared pieces
    def plan(self, seed: int, limit: int | None = None) -> dict:

        key = (seed, limit)
        if key not in self._plans:
            cfg = load_cfg(base_overrides(self.args, self.spec, seed)
                           + ([f"data.source.limit={limit}"] if limit else []))
            self._plans[key] = plan_data(cfg.data.model_dump(mode="json"))
        return self._plans[key]

    def test_items(self) -> list[dict]:

        if self._test is None:
            t = self.spec["test"]
            self._test = list_pairs(t["root"], t["layout"], limit=self.args.test_limit)
        return self._test

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.out / "runs" / f"{arm}-s{seed}"

    def done(self, arm: str, seed: int) -> dict | None:
        path = self.run_dir(arm, seed) / "result.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, arm: str, seed: int, record: dict) -> dict:
        d = self.run_dir(arm, seed)
        d.mkdir(parents=True, exist_ok=True)

        record.setdefault("machine", cpu_label())
        (d / "result.json").write_text(json.dumps(record, indent=1))
        return record

    def rate(self, arm_name: str) -> dict:
        """Calibrated steps/s of an arm (measured once, reused across seeds and reruns)."""
        if arm_name in self.calib:
            return self.calib[arm_name]
        import torch

        torch.set_num_threads(self.args.threads)
        arm = self.arms[arm_name]
        cfg = load_cfg(base_overrides(self.args, self.spec, 0)
                       + (arm_overrides(arm) if arm["kind"] == "sam" else []))
        plan = self.plan(0)
        ds = TrainDataset(plan, self.args.crop, cfg.augment.model_dump(), 0, 1, cache=True)
        torch.manual_seed(0)
        if arm["kind"] == "sam":
            step = sam_step_fn(cfg)
        else:
            make, _ = unet_parts(self.args, cfg)
            _, step = make(1000)
        seconds = self.args.calib_s if self.args.calib_s is not None else \
            min(60.0, max(5.0, 0.05 * self.args.budget_s))
        res = measure_rate(step, ds, self.args.batch_size, seconds)
        log(f"calibrated {arm_name}: {res['steps_per_s']:.3f} steps/s "
            f"({res['steps']} steps in {res['seconds']:.1f}s)")
        self.calib[arm_name] = res
        self.calib_path.write_text(json.dumps(self.calib, indent=1))
        return res

    # -- arms
    def run_sam(self, name: str, seed: int) -> dict:
        args, arm = self.args, self.arms[name]
        if args.steps:  # equal steps (a shared, noisy machine: rates measured there mislead)
            rate = {"steps_per_s": args.steps / args.budget_s}
        else:
            rate = self.rate(name)
        target = max(1, int(args.budget_s * rate["steps_per_s"]))
        n_train = len(self.plan(seed)["train"])
        sched = schedule(target, n_train, args.batch_size, args.max_epochs)
        d = self.run_dir(name, seed)
        if d.exists():
            shutil.rmtree(d)  # unfinished earlier attempt: start fresh (train.py would resume)
        d.mkdir(parents=True)
        bundle = d / "bundle"
        sets = base_overrides(args, self.spec, seed) + arm_overrides(arm) + [
            f"run.name=ablate-{name}-s{seed}", f"run.storage_path={d / 'ray'}",
            f"export.uri={bundle}", f"train.epochs={sched['epochs']}",
            f"train.samples_per_item={sched['samples_per_item']}", "run.num_to_keep=1",
        ]
        limit = None
        if sched.get("limit_train_items"):
            # Items are limited before the split: keep about this many for training.
            limit = max(4, math.ceil(sched["limit_train_items"] / (1 - args.val_fraction)))
            sets.append(f"data.source.limit={limit}")
        cmd = [sys.executable, str(REPO / "jobs" / "train.py"),
               "--summary", str(d / "summary.json")]
        for s in sets:
            cmd += ["--set", s]
        (d / "command.txt").write_text(shlex.join(cmd) + "\n")
        log(f"{name} seed {seed}: {sched} (target {target} steps at "
            f"{rate['steps_per_s']:.3f} steps/s)")
        t0 = time.perf_counter()
        with open(d / "train.log", "w") as logf:
            proc = subprocess.run(cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = (d / "train.log").read_text().strip().splitlines()[-3:]
            raise RuntimeError(f"jobs/train.py exited {proc.returncode}: {' | '.join(tail)}")
        summary = json.loads((d / "summary.json").read_text())
        hist = summary.get("history") or []
        record = {
            "arm": name, "seed": seed, "what": arm["what"], "kind": "sam",
            "config": {k: arm[k] for k in ("iterations", "prompt", "distill")},
            "schedule": sched, "data_limit": limit, "target_steps": target,
            "steps": hist[-1]["global_step"] if hist else None,
            "train_s": round(sum(h.get("train_s", 0.0) for h in hist), 1),
            "wall_s": round(wall, 1), "bundle": str(bundle),
            "train_val_dice": summary.get("best_val_dice"),
            "trainable_params": summary.get("trainable_params"),
        }
        record.update(self.eval_bundle(str(bundle), seed, None, limit))
        return self.save(name, seed, record)

    def eval_bundle(self, uri: str, seed: int, iterations: int | None,
                    limit: int | None = None) -> dict:
        import torch

        from samsp import load_bundle

        torch.set_num_threads(self.args.threads)
        bundle = load_bundle(uri)
        t0 = time.perf_counter()
        res = evaluate_run(self.args, bundle_forward(bundle, iterations), self.plan(seed, limit),
                           self.test_items())
        res["eval_s"] = round(time.perf_counter() - t0, 1)
        return res

    def run_infer(self, name: str, seed: int, results: dict) -> dict:
        arm = self.arms[name]
        k1 = {a: [r for r in rs if r.get("val_dice") is not None]
              for a, rs in results.items() if a in self.arms and self.arms[a].get("kind") == "sam"
              and self.arms[a]["iterations"] == 1}
        k1 = {a: rs for a, rs in k1.items() if rs}
        if not k1:
            raise RuntimeError("no K=1 arm has finished: run sp_*/spsd_* arms first")
        best = max(k1, key=lambda a: float(np.mean([r["val_dice"] for r in k1[a]])))
        src = next((r for r in k1[best] if r["seed"] == seed), None)
        if src is None:
            raise RuntimeError(f"best K=1 arm {best} has no seed {seed}")
        record = {"arm": name, "seed": seed, "what": arm["what"], "kind": "infer",
                  "source_arm": best, "config": {"iterations": arm["iterations"]},
                  "steps": src["steps"], "train_s": src["train_s"], "bundle": src["bundle"]}
        log(f"{name} seed {seed}: {best} with K={arm['iterations']}")
        record.update(self.eval_bundle(src["bundle"], seed, arm["iterations"],
                                       src.get("data_limit")))
        return self.save(name, seed, record)

    def run_unet(self, name: str, seed: int) -> dict:
        import torch

        args = self.args
        torch.set_num_threads(args.threads)
        rate = self.rate(name)
        target = max(1, int(args.budget_s * rate["steps_per_s"]))
        n_train = len(self.plan(seed)["train"])
        sched = schedule(target, n_train, args.batch_size, args.max_epochs)
        limit = None
        if sched.get("limit_train_items"):
            limit = max(4, math.ceil(sched["limit_train_items"] / (1 - args.val_fraction)))
        plan = self.plan(seed, limit)
        cfg = load_cfg(base_overrides(args, self.spec, seed))
        torch.manual_seed(seed)
        make, forward_fn = unet_parts(args, cfg)
        model, step = make(target)
        ds = TrainDataset(plan, args.crop, cfg.augment.model_dump(), seed, 1, cache=True)
        rng = np.random.default_rng(seed)
        batches = augmented_batches(ds, min(args.batch_size, len(ds)), rng)
        log(f"{name} seed {seed}: {target} steps (in-process, {rate['steps_per_s']:.3f} steps/s)")
        t0 = time.perf_counter()
        losses = []
        for i in range(target):
            losses.append(step(*next(batches)))
        train_s = time.perf_counter() - t0
        model.eval()
        d = self.run_dir(name, seed)
        d.mkdir(parents=True, exist_ok=True)
        record = {"arm": name, "seed": seed, "what": f"{self.arms[name]['what']} "
                  f"({args.unet_encoder} encoder"
                  + (", bf16 training)" if args.unet_precision == "bf16" else ")"),
                  "kind": "unet", "precision": args.unet_precision, "target_steps": target,
                  "steps": target, "train_s": round(train_s, 1), "data_limit": limit,
                  "final_loss": float(np.mean(losses[-10:])),
                  "trainable_params": sum(p.numel() for p in model.parameters())}
        torch.save(model.state_dict(), d / "unet.pt")
        t1 = time.perf_counter()
        record.update(evaluate_run(args, forward_fn(model), plan, self.test_items()))
        record["eval_s"] = round(time.perf_counter() - t1, 1)
        return self.save(name, seed, record)


# ============================================================================ main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset root (DeepCrack or EPFL roads)")
    p.add_argument("--dataset", default="deepcrack", choices=("deepcrack", "epfl"))
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--arms", default="all", help="comma list of arms, or all")
    p.add_argument("--seeds", default="0,1", help="comma list of training seeds")
    p.add_argument("--budget-s", type=float, required=True,
                   help="training wall-clock budget per arm and seed (seconds)")
    p.add_argument("--calib-s", type=float,
                   help="seconds of step timing per arm (default 5 %% of the budget, 5..60)")
    p.add_argument("--steps", type=int,
                   help="give every SAM arm this many optimizer steps instead of budget x "
                        "calibrated rate (equal steps; for a machine too loaded to calibrate)")
    p.add_argument("--max-epochs", type=int, default=4,
                   help="at most this many epochs (validation + checkpoint each)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=256, help="training crop = eval window (px)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--distill", type=float, default=0.5, help="distill_weight of spsd arms")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra jobs/train.py override for every SAM arm (lr etc. also reach "
                        "the U-Net through the same config)")
    p.add_argument("--unet-encoder", default="resnet18")
    p.add_argument("--unet-precision", default="fp32", choices=("fp32", "bf16"),
                   help="U-Net training precision (bf16: CPU autocast, as the SAM arms train)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-overlap", type=int, default=32)
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--thresholds", default="0.1:0.9:0.05", help="validation sweep thresholds")
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--val-limit", type=int, help="sweep on the first N validation images only")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--calibrate-only", action="store_true",
                   help="measure the step rates of the listed training arms and stop")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: aggregate the finished runs of the listed arms/seeds")
    p.add_argument("--publish", action="store_true",
                   help="also write bench/results/ABLATION_<DATASET>_RESULTS.md and "
                        "bench/results/results_ablation_<dataset>.json (headline) for BENCHMARKS.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    arms_table = _arm_table(args.distill)
    names = list(arms_table) if args.arms == "all" else [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in names if a not in arms_table]
    if unknown:
        print(f"error: unknown arm(s) {unknown}; choose from {list(arms_table)}", file=sys.stderr)
        return 2
    if args.budget_s <= 0:
        print("error: --budget-s must be positive", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    # Training arms first, then inference-only arms (they need K=1 bundles), U-Net last.
    order = ([a for a in names if arms_table[a]["kind"] == "sam"]
             + [a for a in names if arms_table[a]["kind"] == "infer"]
             + [a for a in names if arms_table[a]["kind"] == "unet"])
    ab = Ablation(args)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    results: dict[str, list[dict]] = {a: [] for a in order}
    # Also consider finished K=1 runs outside --arms when choosing the infer arms' source.
    pool: dict[str, list[dict]] = {a: [] for a in arms_table}
    for a in arms_table:
        for s in seeds:
            rec = ab.done(a, s)
            if rec and "error" not in rec:
                pool[a].append(rec)
    t0 = time.perf_counter()
    if not args.report_only:
        # Every training arm's step rate is measured back to back before any training, so all
        # arms are calibrated under the same machine conditions (a rerun reuses calibration.json).
        for arm in order:
            if arms_table[arm]["kind"] in ("sam", "unet"):
                ab.rate(arm)
        if args.calibrate_only:
            log(f"calibration in {ab.calib_path}")
            return 0
    for seed in seeds:
        for arm in order:
            rec = None if args.force else ab.done(arm, seed)
            if args.report_only and (rec is None or "error" in rec):
                continue
            if rec is None or "error" in rec:
                try:
                    kind = arms_table[arm]["kind"]
                    if kind == "sam":
                        rec = ab.run_sam(arm, seed)
                    elif kind == "infer":
                        rec = ab.run_infer(arm, seed, pool)
                    else:
                        rec = ab.run_unet(arm, seed)
                except Exception as err:  # noqa: BLE001 - record, go on with the other arms
                    rec = {"arm": arm, "seed": seed, "what": arms_table[arm]["what"],
                           "error": f"{type(err).__name__}: {err}"}
                    log(f"{arm} seed {seed} FAILED: {rec['error']}")
                    ab.save(arm, seed, rec)
            else:
                log(f"{arm} seed {seed}: done earlier, reusing")
            results[arm].append(rec)
            if "error" not in rec:
                pool[arm] = [r for r in pool[arm] if r["seed"] != seed] + [rec]
                log(f"{arm} seed {seed}: test Dice {rec['test']['dice']:.4f} (thr "
                    f"{rec['threshold']:.2f}, val {rec['val_dice']:.4f}), "
                    f"steps {rec.get('steps')}, "
                    f"train {rec.get('train_s')}s")
    import platform

    info = machine_info()
    # Smoke = data subsets (the numbers say nothing about the method). A short budget or a single
    # seed is a real but limited result: reported, with the budget in the headline.
    smoke = bool(args.test_limit or args.val_limit
                 or any(r.get("data_limit") for rs in results.values() for r in rs))
    results = {a: rs for a, rs in results.items() if rs}
    arms = aggregate(results)
    report = {
        "smoke": smoke, "date": started, "seconds": round(time.perf_counter() - t0, 1),
        "command": "python bench/ablation/run.py " + shlex.join(argv if argv is not None
                                                           else sys.argv[1:]),
        "machine": f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, torch "
                   f"{info['torch']}, Python {platform.python_version()}",
        "settings": {**{k: v for k, v in vars(args).items()}, "seeds": seeds,
                     "test": f"{ab.spec['test']['root']} ({ab.spec['test']['layout']})"},
        "test_images": len(ab.test_items()), "calibration": ab.calib,
        "arms": arms, "runs": results,
        # Figures for bench/results.json -- only from a real (non-smoke) run.
        "headline": {} if smoke else {**headline(arms, args.dataset),
                                      f"ablation_budget_s_{args.dataset}": args.budget_s},
    }
    (ab.out / "ablation.json").write_text(json.dumps(report, indent=1, default=str))
    write_md(ab.out / "ABLATION.md", report)
    log(f"wrote {ab.out / 'ablation.json'} and {ab.out / 'ABLATION.md'}"
        + (" (SMOKE: not results)" if smoke else ""))
    if args.publish:
        n = publish(report, ab.out / "ABLATION.md", args.dataset)
        log(f"published {n} headline number(s) to bench/results/results_ablation_{args.dataset}.json")
    return 0 if not any("error" in r for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
