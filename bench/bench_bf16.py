"""bf16 against fp32 where users feel it: model-only tiles/s, the segment job, a training step.

    python -m bench.bench_bf16 [--scene-size 4096] [--repeats 3]

Every pair is measured alternately (fp32, bf16, fp32, bf16, ...) in one run on one machine and
compared by medians: the machine is shared and its load swings. What it reports
(bench/results/results_bf16.json, bench/results/BF16_RESULTS.md):

* ``P6_bf16_speedup_model``: TilePredictor tiles/s bf16 / fp32, vit_tiny (the committed crack
  model), batch 8, the crack scene's own 256² tiles, one stream on every core.
* ``P6_bf16_speedup_job``: segment-job steady Mpx/s with ``predict.precision: auto`` / ``fp32``,
  same scene, default (Ray) engine.
* ``P1_pipeline_efficiency_bf16`` (and ``_batch``, a 4-scene folder): the job's steady Mpx/s with
  ``auto`` / model-only Mpx/s in bf16 (the best of 1 thread, all threads, one lane per core, as
  bench_segment's P1): does the pipeline keep up with a model twice as fast.
* ``P7_bf16_speedup_train``: SAM-SP training steps/s (vit_tiny, batch 8, K = 1, box prompt,
  jobs/train.py's model, loss and AdamW) bf16 autocast / fp32.
The DeepCrack Dice delta (``P6_bf16_dice_delta``) comes from two ``jobs/evaluate.py`` runs; see
the section's command lines.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.bench_segment import (make_batch_folder, make_crack_scene, model_only,
                                 model_only_run, run_job)
from bench.common import log, machine
from jobs.runtime.config import load_config
from jobs.training.config import TrainConfig
from jobs.training.model import build_model, param_groups, training_loss

REPO = Path(__file__).resolve().parents[1]
CRACK_MODEL = REPO / "models" / "samsp-crack-tiny"


def model_rate(bundle: str, scene: str, precision: str, seconds: float) -> dict:
    """One stream on every core (torch's default threads), batch 8."""

    return model_only_run(bundle, scene, 8, os.cpu_count() or 1, seconds, precision=precision)


def train_step_fn(precision: str):
    """A jobs/train.py step (same model build, loss, AdamW, clipping) under ``precision``."""
    import numpy as np
    import torch

    from samsp.precision import autocast, resolve_precision
    from samsp.preprocess import prepare_batch, prepare_targets

    cfg = load_config(TrainConfig, None, ["model.type=vit_tiny", "model.iterations=1",
                                          "model.prompt=box", "model.finetune=full"])
    torch.manual_seed(0)
    model = build_model(cfg)
    size = model.image_size
    mean = model.sam.pixel_mean.flatten().tolist()
    std = model.sam.pixel_std.flatten().tolist()
    opt = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (8, 3, size, size), dtype=np.uint8)
    mask = np.zeros((8, size, size), bool)
    for i in range(8):  # a few thin "cracks" per crop
        for _ in range(3):
            r = int(rng.integers(0, size))
            mask[i, r:r + 3, :] = True
    resolved = resolve_precision(precision, "cpu")

    def step() -> None:
        x, _ = prepare_batch(img, size, mean, std)
        target, ok = prepare_targets(mask, size)
        with autocast(resolved, "cpu"):
            out = model(x, valid=ok)
        parts = training_loss(cfg, out, target, ok)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_rate(precision: str, seconds: float) -> float:
    step = train_step_fn(precision)
    for _ in range(2):
        step()  # warm-up (allocator, oneDNN kernels)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def alternate(fn, repeats: int) -> dict[str, list]:
    """``fn(precision)`` for fp32 and bf16 in turn, ``repeats`` times each."""
    runs: dict[str, list] = {"fp32": [], "bf16": []}
    for r in range(repeats):
        for precision in ("fp32", "bf16"):
            runs[precision].append(fn(precision))
            log(f"  #{r + 1} {precision}: {runs[precision][-1]}", "bench_bf16")
    return runs


def p1_only(args, bundle: str, scene: str, work: Path, tag: str, started: str, info) -> int:
    """P1 against the bf16 model for both engines, the model-only reference measured between
    the jobs (the same load); writes the P1 keys and ``raw_p1``."""
    ref = model_only(bundle, scene, 8, min_seconds=args.seconds, precision="auto")
    res, raw = {}, {"started": started, "machine": info, "scene": f"crack {args.scene_size}²",
                    "model_only_reference_bf16": {k: ref[k] for k in ("mpx_per_s", "by_threads")}}
    for engine, key, batch_key in (
            ("ray", "P1_pipeline_efficiency_bf16", "P1_pipeline_efficiency_bf16_batch"),
            ("local", "P1_pipeline_efficiency_bf16_local",
             "P1_pipeline_efficiency_bf16_batch_local")):
        runs = []
        for _ in range(args.repeats):
            j = run_job(scene, work / f"job_{engine}", bundle, 8, engine=engine)
            runs.append(j["pixels"] / 1e6 / j["seconds"]["steady"])
            log(f"  {engine}: {runs[-1]:.3f} Mpx/s steady", tag)
        res[key] = round(statistics.median(runs) / ref["mpx_per_s"], 3)
        raw[f"job_mpx_per_s_steady_{engine}"] = [round(r, 3) for r in runs]
        if args.batch_scenes > 1:
            folder = make_batch_folder(scene, work / f"batch_{args.batch_scenes}",
                                       args.batch_scenes)
            j = run_job(folder, work / f"job_batch_{engine}", bundle, 8, engine=engine)
            res[batch_key] = round(
                j["pixels"] / 1e6 / j["seconds"]["steady"] / ref["mpx_per_s"], 3)
    raw["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    return publish(args, res, "raw_p1", raw)


def publish(args, res: dict, raw_key: str, raw: dict) -> int:
    """Merge ``res`` (and ``raw`` under ``raw_key``) into the JSON, rebuild the markdown."""
    old = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    old.update(res)
    old[raw_key] = raw
    Path(args.json).write_text(json.dumps(old, indent=2) + "\n")
    Path(args.md).write_text(markdown(old, args))
    for key, value in res.items():
        print(f"{key} = {value}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="per model-only / train run")
    ap.add_argument("--batch-scenes", type=int, default=4)
    ap.add_argument("--workdir", default=str(REPO / ".bench" / "bf16"))
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "results_bf16.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "BF16_RESULTS.md"))
    ap.add_argument("--p1-only", action="store_true",
                    help="only the P1 figures against the bf16 model (Ray and local engines); "
                         "the other keys of the JSON stay as they are")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    info = machine()
    from samsp.precision import resolve_precision

    auto = resolve_precision("auto", "cpu")
    bundle = str(CRACK_MODEL)
    scene = make_crack_scene(work / f"crack_{args.scene_size}.tif", args.scene_size)
    tag = "bench_bf16"

    if args.p1_only:
        return p1_only(args, bundle, scene, work, tag, started, info)
    log("model-only, vit_tiny batch 8, every core", tag)
    mo = alternate(lambda p: round(model_rate(bundle, scene, p, args.seconds)["tiles_per_s"], 3),
                   args.repeats)
    log("training step, vit_tiny batch 8, K=1", tag)
    tr = alternate(lambda p: round(train_rate(p, args.seconds), 3), args.repeats)
    log(f"segment job (Ray engine), predict.precision fp32 vs auto (= {auto})", tag)
    jobs: dict[str, list] = {"fp32": [], "auto": []}
    for r in range(args.repeats):
        for precision in ("fp32", "auto"):
            j = run_job(scene, work / "job", bundle, 8, sets=(f"predict.precision={precision}",))
            jobs[precision].append(j["pixels"] / 1e6 / j["seconds"]["steady"])
            log(f"  #{r + 1} {precision}: {jobs[precision][-1]:.3f} Mpx/s steady", tag)
    log("model-only reference for P1 in bf16 (1 thread, all threads, lanes)", tag)
    ref = model_only(bundle, scene, 8, min_seconds=args.seconds, precision="auto")
    batch_p1 = None
    if args.batch_scenes > 1:
        folder = make_batch_folder(scene, work / f"batch_{args.batch_scenes}", args.batch_scenes)
        j = run_job(folder, work / "job_batch", bundle, 8)
        batch_p1 = j["pixels"] / 1e6 / j["seconds"]["steady"] / ref["mpx_per_s"]

    med = statistics.median
    res = {
        "P6_bf16_speedup_model": round(med(mo["bf16"]) / med(mo["fp32"]), 3),
        "P6_bf16_speedup_job": round(med(jobs["auto"]) / med(jobs["fp32"]), 3),
        "P7_bf16_speedup_train": round(med(tr["bf16"]) / med(tr["fp32"]), 3),
        "P1_pipeline_efficiency_bf16": round(med(jobs["auto"]) / ref["mpx_per_s"], 3),
    }
    if batch_p1 is not None:
        res["P1_pipeline_efficiency_bf16_batch"] = round(batch_p1, 3)
    raw = {"started": started, "machine": info, "auto_precision": auto,
           "scene": f"crack {args.scene_size}²", "model_only_tiles_per_s": mo,
           "train_steps_per_s": tr, "job_mpx_per_s_steady": jobs,
           "model_only_reference_bf16": {k: ref[k] for k in ("mpx_per_s", "by_threads")},
           "load_avg_end": [round(v, 2) for v in os.getloadavg()]}
    return publish(args, res, "raw", raw)


def markdown(r: dict, args) -> str:
    raw = r["raw"]
    m = raw["machine"]
    lines = [
        "## bf16 vs fp32 (issue 15)",
        "",
        f"Command: `python -m bench.bench_bf16 --scene-size {args.scene_size} --repeats "
        f"{args.repeats}` ({raw['started']}; {m['cpu']}, {m['cores']} cores, load average "
        f"{m['load_avg']} at the start, {raw['load_avg_end']} at the end). `auto` resolved to "
        f"**{raw['auto_precision']}** on this CPU. Pairs alternate fp32/bf16; medians compared.",
        "",
        "| figure | fp32 runs | bf16 runs | ratio | target |",
        "|---|---|---|---|---|",
        f"| model-only tiles/s (vit_tiny, batch 8) | {raw['model_only_tiles_per_s']['fp32']} | "
        f"{raw['model_only_tiles_per_s']['bf16']} | `P6_bf16_speedup_model` = "
        f"{r['P6_bf16_speedup_model']} | >= 2.0 |",
        f"| segment job Mpx/s steady ({raw['scene']}) | "
        f"{[round(v, 3) for v in raw['job_mpx_per_s_steady']['fp32']]} | "
        f"{[round(v, 3) for v in raw['job_mpx_per_s_steady']['auto']]} | `P6_bf16_speedup_job` = "
        f"{r['P6_bf16_speedup_job']} | >= 1.7 |",
        f"| training steps/s (vit_tiny, batch 8, K = 1) | {raw['train_steps_per_s']['fp32']} | "
        f"{raw['train_steps_per_s']['bf16']} | `P7_bf16_speedup_train` = "
        f"{r['P7_bf16_speedup_train']} | >= 1.6 |",
        "",
        f"Pipeline against the bf16 model: `P1_pipeline_efficiency_bf16` = "
        f"{r['P1_pipeline_efficiency_bf16']} (one scene; job steady Mpx/s / model-only "
        f"{raw['model_only_reference_bf16']['mpx_per_s']:.3f} Mpx/s, by threads "
        f"{raw['model_only_reference_bf16']['by_threads']})"
        + (f", `P1_pipeline_efficiency_bf16_batch` = {r['P1_pipeline_efficiency_bf16_batch']} "
           "(4-scene folder; target >= 0.85)" if "P1_pipeline_efficiency_bf16_batch" in r else "")
        + ".",
    ]
    p1 = r.get("raw_p1")
    if p1:
        lines += ["", f"P1 against the bf16 model, both engines (`python -m bench.bench_bf16 "
                  f"--p1-only`, {p1['started']}, {p1['scene']}, load average "
                  f"{p1['machine']['load_avg']} at the start, {p1['load_avg_end']} at the end; "
                  f"model-only {p1['model_only_reference_bf16']['mpx_per_s']:.3f} Mpx/s, by "
                  f"threads {p1['model_only_reference_bf16']['by_threads']}): "
                  + ", ".join(f"`{k}` = {r[k]}" for k in sorted(r)
                              if k.startswith("P1_pipeline_efficiency_bf16"))
                  + f"; job Mpx/s steady Ray {p1.get('job_mpx_per_s_steady_ray')}, local "
                  f"{p1.get('job_mpx_per_s_steady_local')}."]
    if "P6_bf16_dice_delta" in r:
        lines += ["", r.get("dice_note", "")]
    notes = REPO / "bench" / "results" / "BF16_NOTES.md"  # findings, written by hand
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
