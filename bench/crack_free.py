"""Crack-free windows (issue 31): what a crack model does where there is nothing to find, and how
many crack-free windows its training crops showed it.

    # the share of training crops holding no crack pixel, per set of the mixture recipe
    python -m bench.crack_free [--set augment.empty_crops=0.5] [--images 60] [--draws 3]

``bench.small_images`` uses the accounting below on its 3x3 DeepCrack crops: a crack-free crop
with at least ``CLEAN_ALARM`` of its pixels marked is a false alarm, and the alarms are also
counted at raised output thresholds (what ``predict.threshold`` buys a quiet sweep).
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

#: a crack-free crop with at least this share of its pixels marked is a false alarm: a photo an
#: inspector would open for nothing (a real crack covers ~1-10 % of a DeepCrack crop)
CLEAN_ALARM = 0.01
#: the mixture recipe whose training crops are counted (``bench.crack_sets`` trains with it)
MIXTURE_CONFIG = REPO / "configs" / "train_cracks_mixture_cpu.yaml"
#: output thresholds reported besides the bundle's
QUIET_THRESHOLDS = (0.5, 0.6, 0.7, 0.8)


def quiet_thresholds(bundle_threshold: float) -> tuple[float, ...]:
    """The bundle's threshold and the raised ones, ascending, without repeats."""
    return tuple(sorted({round(float(bundle_threshold), 4), *QUIET_THRESHOLDS}))


def record_clean_crop(pooled: dict, crop_probs: np.ndarray, whole_probs: np.ndarray,
                      threshold: float, thresholds: tuple[float, ...]) -> None:
    """Count one crack-free crop: pixels marked in it (``crop_probs``, the crop run alone) and
    in the same region of the whole-image run (``whole_probs``), and whether it raises an alarm
    at each of ``thresholds``."""
    marked = crop_probs > threshold
    pooled.setdefault("clean", []).append(
        (int(marked.sum()), marked.size, int((whole_probs > threshold).sum())))
    pooled.setdefault("clean_at", []).append(
        [(crop_probs > t).mean() >= CLEAN_ALARM for t in thresholds])


def clean_scores(pooled: dict, thresholds: tuple[float, ...], fp_crops: int,
                 fp_whole: int) -> dict:
    """Flat result keys of the crack-free crops (None where no crop was crack-free)."""
    clean = np.asarray(pooled.get("clean", []), float).reshape(-1, 3)
    n = len(clean)
    marked, px, marked_whole = clean.sum(0) if n else (0.0, 0.0, 0.0)
    excess = fp_crops - fp_whole  # false positives the crops make over the whole images
    out = {
        "clean_crops_n": n,
        "clean_crops_fp_rate": round(marked / px, 5) if n else None,
        "clean_crops_alarm_share": (round(float((clean[:, 0] / clean[:, 1] >= CLEAN_ALARM)
                                                .mean()), 4) if n else None),
        "clean_crops_share_of_crop_fp": round(marked / max(1.0, fp_crops), 4),
        "clean_regions_fp_px_whole": int(marked_whole),
        # of the crops' excess false positives, the share in crack-free crops
        "clean_crops_share_of_excess_fp": (round((marked - marked_whole) / excess, 4)
                                           if excess > 0 else None),
        "whole_windows": int(pooled.get("whole_windows", 0)),
        "whole_windows_crack_free": int(pooled.get("whole_windows_clean", 0)),
    }
    if n:
        for t, share in zip(thresholds, np.mean(pooled["clean_at"], axis=0)):
            out[f"clean_crops_alarm_share_at_{t}"] = round(float(share), 4)
    return out


def count_whole_windows(pooled: dict, windows: list[tuple[int, int, int, int]],
                        truth: np.ndarray) -> None:
    """Count the whole image's model windows ``(r0, c0, r1, c1)``, and those without a crack."""
    pooled["whole_windows"] = pooled.get("whole_windows", 0) + len(windows)
    pooled["whole_windows_clean"] = pooled.get("whole_windows_clean", 0) + sum(
        not truth[max(r0, 0):r1, max(c0, 0):c1].any() for r0, c0, r1, c1 in windows)


def fmt(value, spec: str) -> str:
    """``value`` formatted, or ``n/a`` (a key a run with no crack-free crop does not have)."""
    return "n/a" if value is None else format(value, spec)


def clean_markdown(result: dict, thresholds: tuple[float, ...]) -> str:
    """The report's crack-free section."""
    return (
        "## Crack-free crops\n\n"
        f"{result['clean_crops_n']} of the crops hold no crack pixel -- a window a sweep sees "
        f"most of the time, and one the whole images seldom show the model "
        f"({result['whole_windows_crack_free']} of their {result['whole_windows']} windows "
        f"hold no crack pixel). The model marks {fmt(result['clean_crops_fp_rate'], '.2%')} of "
        f"their pixels; {fmt(result['clean_crops_alarm_share'], '.1%')} of them have at least "
        f"{CLEAN_ALARM:.0%} marked (a false alarm). They hold "
        f"{fmt(result['clean_crops_share_of_crop_fp'], '.1%')} of the crops' false-positive "
        f"pixels; the same regions of the whole images hold "
        f"{result['clean_regions_fp_px_whole']}, so of what the crops add over the whole "
        f"images, {fmt(result['clean_crops_share_of_excess_fp'], '.1%')} is on crack-free "
        "crops.\n\n"
        "Raising the output threshold (`predict.threshold`) quietens a sweep at some cost in "
        "cracks found:\n\n| threshold | crack-free crops with a false alarm | whole-image Dice "
        "|\n|---|---|---|\n"
        + "".join(f"| {t} | {fmt(result.get(f'clean_crops_alarm_share_at_{t}'), '.1%')} | "
                  f"{fmt(result.get(f'small_dice_whole_at_{t}'), '.4f')} |\n"
                  for t in thresholds)
        + "\n")


# ------------------------------------------------------------------ training crops (the CLI)

def training_crack_free_share(overrides: list[str], images: int, draws: int,
                              seed: int = 0, config: Path = MIXTURE_CONFIG) -> dict:
    """Per mixture member, the share of training crops (the recipe's augmentation with
    ``overrides``) that hold no positive pixel, over the first ``images`` train pairs."""
    from jobs.runtime.config import load_config
    from jobs.training.augment import augment
    from jobs.training.config import TrainConfig
    from jobs.training.data import ItemLoader, plan_data
    from jobs.training.mixture import member_augment
    from samsp.config import get_config

    cfg = load_config(TrainConfig, str(config), overrides)
    plan = plan_data(cfg.data.model_dump(mode="json"))  # the recipe's paths are relative to the repo
    names = [g["name"] for g in plan["groups"]]
    loader = ItemLoader(plan["scenes"], cache=False)
    aug = cfg.augment.model_dump()
    crop = cfg.augment.crop or get_config(cfg.model.type, cfg.model.image_size).image_size
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = {}
    for item in plan["train"]:
        seen = by_group.setdefault(names[item.get("group", 0)], [0, 0])
        if seen[1] >= images * draws:
            continue
        img, mask, valid = loader.load(item)
        for _ in range(draws):
            own = member_augment(aug, plan["groups"][item.get("group", 0)])
            seen[0] += not augment(img, mask, valid, crop, own, rng)[1].any()
            seen[1] += 1
    return {g: round(free / max(1, n), 3) for g, (free, n) in by_group.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--images", type=int, default=60, help="train pairs per set")
    p.add_argument("--draws", type=int, default=3, help="crops per pair")
    args = p.parse_args(argv)
    shares = training_crack_free_share(args.overrides, args.images, args.draws)
    print(json.dumps({"overrides": args.overrides, "crack_free_share": shares,
                      "mean": round(float(np.mean(list(shares.values()))), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
