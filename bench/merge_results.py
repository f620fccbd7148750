"""Merge bench/results/results_<part>.json into bench/results.json and rebuild BENCHMARKS.md.

Each benchmark writes its own results file and markdown section (bench/results/*_RESULTS.md,
with the exact command, machine and date), so they can run separately; this keeps the flat headline file
(name -> number) and BENCHMARKS.md in step with them. Run: `python -m bench.merge_results`.
"""
from __future__ import annotations

import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"  # every part's results_<part>.json and markdown section

# (key, target text, check) for the headline table; None check = no target.
HEADLINES = [
    ("P1_pipeline_efficiency", ">= 0.90", lambda v: v >= 0.90),
    ("P2_sp_overhead_pct", "<= 5 %", lambda v: v <= 5.0),
    ("P3_rss_growth_pct", "<= 10 %", lambda v: v <= 10.0),
    ("P4_vs_amg_ratio", ">= 3x", lambda v: v >= 3.0),
    ("P5_vs_sequential_ratio", ">= 1.5x", lambda v: v >= 1.5),
    ("P1_pipeline_efficiency_local", ">= 0.90 (local engine)", lambda v: v >= 0.90),
    ("P5_vs_sequential_ratio_local", ">= 1.5x (local engine)", lambda v: v >= 1.5),
    ("P1_pipeline_efficiency_batch", ">= 0.90 (4-scene batch)", lambda v: v >= 0.90),
    ("P1_pipeline_efficiency_local_batch", ">= 0.90 (4-scene batch, local)", lambda v: v >= 0.90),
    ("dice_deepcrack_sp_box", "(5 min, before issue 17's fixes)", None),
    ("dice_deepcrack_spsd_box", ">= 0.85 (aim; 5 min, before issue 17's fixes)",
     lambda v: v >= 0.85),
    ("dice_roads_spsd", "(5 min, before issue 17's fixes)", None),
    ("dice_deepcrack_spsd_best", ">= single + 0.01 and > U-Net (10 min, issue 17)",
     lambda v, r: v >= r.get("dice_deepcrack_single", 1) + 0.01
     and v > r.get("dice_deepcrack_unet", 1)),
    ("dice_deepcrack_single", "(10 min)", None),
    ("dice_deepcrack_unet", "(10 min)", None),
    ("dice_pooled_deepcrack_spsd_best", "(10 min; the papers' F)", None),
    ("dice_deepcrack_best_60min", "(per image, 60 min)", None),
    ("dice_pooled_deepcrack_best_60min", ">= 0.865 (60 min, DeepCrack paper's F)",
     lambda v: v >= 0.865),
    ("dice_deepcrack_sam_60min", "(best SAM arm, 60 min)", None),
    ("dice_deepcrack_unet_60min", "(U-Net, 60 min)", None),
    ("dice_roads_best", ">= 0.75 (EPFL roads, per image)", lambda v: v >= 0.75),
    ("dice_roads_unet", "", None),
    ("P6_vit_b_encoder_s_fp32", "", None),
    ("P6_vit_b_encoder_s_bf16", "", None),
    ("P6_vit_b_encoder_s_bf16_sdpa", "", None),
    ("P6_vit_b_peak_fraction", ">= 0.45", lambda v: v >= 0.45),
    ("P6_vit_b_b8_rss_gib", "<= 8 GiB", lambda v: v <= 8.0),
    ("P6_bf16_speedup_model", ">= 2.0 (vit_tiny batch 8)", lambda v: v >= 2.0),
    ("P6_bf16_speedup_job", ">= 1.7 (segment job, auto / fp32)", lambda v: v >= 1.7),
    ("P7_bf16_speedup_train", ">= 1.6 (training steps/s)", lambda v: v >= 1.6),
    ("P6_bf16_dice_delta", "<= 0.003 (DeepCrack test)", lambda v: v <= 0.003),
    ("P1_pipeline_efficiency_bf16", ">= 0.90 (bf16 model)", lambda v: v >= 0.90),
    ("P1_pipeline_efficiency_bf16_batch", ">= 0.85 (bf16 model, 4 scenes)", lambda v: v >= 0.85),
    ("P1_pipeline_efficiency_bf16_local", ">= 0.90 (bf16 model, local engine)", lambda v: v >= 0.90),
    ("P1_pipeline_efficiency_bf16_batch_local", ">= 0.85 (bf16, 4 scenes, local)",
     lambda v: v >= 0.85),
    ("geo_train_s3_over_local", ">= 0.8 (windows/s, S3 COG + GeoParquet / local PNG)",
     lambda v: v >= 0.8),
    ("geo_train_worker_rss_growth_pct", "<= 10 % (2,000² -> 16,000² scene)", lambda v: v <= 10.0),
    ("geo_train_plan_s_per_scene_ratio", "<= 1.2 (1,000 vs 100 scenes; training's plan, CPU s)",
     lambda v: v <= 1.2),
    ("geo_train_plan_rss_growth_pct", "<= 10 % (training's plan, 100 -> 1,000 scenes)",
     lambda v: v <= 10.0),
    ("crack_test_dice_mean", ">= 0.62 (4 crack sets, issue 31)", lambda v: v >= 0.62),
    ("crack_test_dice_min", ">= 0.45 (every set)", lambda v: v >= 0.45),
    ("crack_test_dice_deepcrack", ">= 0.78 (DeepCrack whole images kept)", lambda v: v >= 0.78),
    ("crack_loo_dice_mean", ">= 0.45 (leave one set out)", lambda v: v >= 0.45),
    ("crack_before_test_dice_mean", "(the model it replaced)", None),
    ("N1_driver_rss_growth_pct", "<= 10 % (100 -> 1,000 scenes)", lambda v: v <= 10.0),
    ("N1_plan_s_per_scene_ratio", "<= 1.2 (1,000 vs 100 scenes)", lambda v: v <= 1.2),
    ("N1_scenes_per_min", "", None),
    ("V1_rss_growth_pct", "<= 20 % (streaming polygons, 2048² -> 16384²)", lambda v: v <= 20.0),
    ("V1_seconds_ratio", "<= 1.5 (streaming / whole-array, 8192²)", lambda v: v <= 1.5),
    ("S1_single_tile_efficiency", ">= 0.8 (one-tile scene, vit_b, Ray)", lambda v: v >= 0.8),
    ("S1_single_tile_efficiency_vit_b_local", ">= 0.8 (vit_b, local engine)", lambda v: v >= 0.8),
    ("S1_single_tile_efficiency_vit_tiny", ">= 0.8 (vit_tiny, Ray)", lambda v: v >= 0.8),
    ("S1_single_tile_efficiency_vit_tiny_local", ">= 0.8 (vit_tiny, local engine)", lambda v: v >= 0.8),
    ("small_image_gap", "<= 0.02 (DeepCrack Dice, whole - 3x3 crops)", lambda v: v <= 0.02),
    ("clean_crops_alarm_share", "(crack-free DeepCrack 3x3 crops with >= 1 % marked; issue 31)",
     None),
    ("geo_val_dice_spatial", "(SpaceNet tile, spatial split; road model fine-tuned 24 epochs, 16 val windows, pooled Dice)", None),
    ("geo_val_dice_random", "(the same, random split)", None),
    ("train_startup_s", "(train_tiny: launch -> first step; issue 33 saw 59 s of 111)", None),
    ("eval_inference_s_per_image", "(DeepCrack 544x384; issue 33 saw 5.3 s/image)", None),
]
SECTIONS = ["INGEST_RESULTS.md", "MODEL_RESULTS.md", "SEGMENT_RESULTS.md", "TRAIN_RESULTS.md",
            "QUALITY_RESULTS.md", "ABLATION_DEEPCRACK_RESULTS.md", "ABLATION_EPFL_RESULTS.md",
            "PRECISION_RESULTS.md", "BF16_RESULTS.md", "RECIPE_RESULTS.md",
            "RECIPE_BUDGET_RESULTS.md", "ORACLE_PROMPTS_RESULTS.md",
            "NIGHTLY_RESULTS.md",
            "VECTORS_RESULTS.md",
            "SINGLE_TILE_RESULTS.md",
            "SMALL_IMAGES_RESULTS.md",
            "CRACK_SETS_RESULTS.md",
            "GEO_TRAIN_RESULTS.md",
            "GEO_PLAN_RESULTS.md",
            "STARTUP_RESULTS.md",
            "GEO_SPLIT_RESULTS.md",
            "PRESENCE_GATE_RESULTS.md"]


PRECEDENCE = {"results_recipe_budget.json"}


def merge() -> dict:
    merged: dict = {}
    # Later parts win on a shared key: the recipe budget study's 10-minute arms supersede the
    # 5-minute ablation figures of the same name (dice_deepcrack_single / _unet / _spsd_best).
    parts = sorted(RESULTS.glob("results_*.json"), key=lambda p: (p.name in PRECEDENCE, p.name))
    for part in parts:
        for key, value in json.loads(part.read_text()).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = value
    (BENCH / "results.json").write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged


def render(results: dict) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every number here was produced by the command quoted in its section (this file is rebuilt",
        "by `python -m bench.merge_results` from `bench/results/*_RESULTS.md` and",
        "`bench/results/results_*.json`; `make bench` reruns everything). Headline figures,",
        "machine-readable, are in `bench/results.json`. Machine unless a section says otherwise:",
        "2-core AMD EPYC VM, 23.5 GiB, no GPU, Python 3.11, torch 2.14.1 (CPU). The 2 cores were",
        "shared with other work while these ran (load averages are quoted per section): ratios from",
        "the same run are meaningful, absolute seconds are pessimistic. Rerun on a quiet machine",
        "before quoting absolutes.",
        "",
        "| headline | value | target | met |",
        "|---|---|---|---|",
    ]
    for key, target, check in HEADLINES:
        if key in results:
            value = results[key]
            ok = None if check is None else (
                check(value, results) if check.__code__.co_argcount == 2 else check(value))
            met = "" if ok is None else ("yes" if ok else "**no**")
            lines.append(f"| `{key}` | {value:g} | {target} | {met} |")
        else:
            lines.append(f"| `{key}` | not measured yet | {target} | |")
    lines.append("")
    for name in SECTIONS:
        path = RESULTS / name
        if path.exists():
            lines += ["", path.read_text().rstrip(), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    results = merge()
    (REPO / "BENCHMARKS.md").write_text(render(results))
    for key, value in results.items():
        print(f"{key} = {value}")
