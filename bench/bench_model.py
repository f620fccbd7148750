"""Model speed benchmarks (P2, P4, model-only throughput), measured in one process as ratios.

    .venv/bin/python bench/bench_model.py --quick      # ~25 min on 2 busy CPU cores
    .venv/bin/python bench/bench_model.py              # more repeats
    .venv/bin/python bench/bench_model.py --merge --skip p2p4,tiny,vitb   # redo one phase

Phases (``--skip`` any of them; ``--merge`` keeps the previous run's phases that this run skips,
and the report lists every run's command):

* ``p2p4`` -- ``vit_b`` at 1024 px (random weights), one tile through
  ``samsp.predict.TilePredictor`` (the production path: uint8 tile in, probabilities out) with
  K = 0 (single pass), K = 1 and K = 2, interleaved with ``segment_anything``'s
  ``SamAutomaticMaskGenerator(points_per_side=32)`` (its defaults otherwise; samgeo's default) on
  the same tile. A forward hook times the image encoder inside every call and counts its calls
  (must be 1 per forward). ``P4_vs_amg_ratio = median AMG / median SamSP K=1`` (same rounds).
  With random weights AMG's quality filters drop most masks early, which makes AMG cheaper than
  with trained weights (``--amg-unfiltered`` also times it with the filters off: ~15 min here).
* ``p2dec`` -- the same TilePredictor calls with the image encoder replaced by its cached output,
  many interleaved repeats: the cost of everything but the encoder for K = 0, 1, 2.
  ``P2_sp_overhead_pct = (median K=1 - median K=0) / median single-pass time (from p2p4)``. The
  whole-call estimates (``*_e2e``, ``*_rounds``) are kept too but are dominated by encoder noise.
* ``tiny`` / ``vitb`` -- model-only throughput (``SamSP.forward`` on prepared tensors, K = 1,
  inference mode) in megapixels of model input per second at batch 1, 4, 8. vit_b needs about
  2.4 GB per image of attention temporaries in its global-attention blocks: a batch whose peak
  RSS (extrapolated from the smaller batches) does not fit the free memory is skipped and says so.

Noise: arms are interleaved in a seeded random order each round; medians (with min/max) are
reported with the load average at start and end. Writes ``--md`` (bench/results/MODEL_RESULTS.md),
``--json`` (bench/results/results_model.json, flat name -> number) and bench/results/model_bench_raw.json (every
sample; deliberately not named results_*.json, which bench/merge_results.py merges).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import log, machine, random_bundle  # noqa: E402


def test_tile(size: int) -> np.ndarray:
    """A real photo tile (DeepCrack test image resized) when the shared data is there."""
    from PIL import Image

    src = REPO.parent / "shared" / "data" / "deepcrack" / "test_img"
    files = sorted(src.glob("*.jpg")) if src.is_dir() else []
    if files:
        with Image.open(files[0]) as im:
            arr = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        return arr, f"{files[0].name} resized to {size}x{size}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8), f"random uint8 {size}x{size}"


class EncoderClock:
    """Forward hooks timing every call of a module (the image encoder)."""

    def __init__(self, module: torch.nn.Module):
        self.calls: list[float] = []
        self._t0 = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.calls.append(time.perf_counter() - self._t0)

    def reset(self):
        self.calls = []


def med(values):
    return statistics.median(values)


def stats(values) -> dict:
    return {"median": med(values), "min": min(values), "max": max(values), "n": len(values)}


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class PeakRss:
    """Samples this process's RSS in a thread; ``.peak_gib`` is the maximum seen in the block."""

    def __init__(self, every_s: float = 0.05):
        import threading

        import psutil

        self._proc = psutil.Process()
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_gib = 0.0

    def _run(self):
        while not self._stop.is_set():
            self.peak_gib = max(self.peak_gib, self._proc.memory_info().rss / 2**30)
            self._stop.wait(self._every)

    def __enter__(self):
        self.peak_gib = self._proc.memory_info().rss / 2**30
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_gib = max(self.peak_gib, self._proc.memory_info().rss / 2**30)


# ============================================================================ P2 + P4

def bench_p2_p4(rounds: int, amg_unfiltered: bool, seed: int, model_type: str = "vit_b") -> dict:
    from segment_anything import SamAutomaticMaskGenerator

    from samsp.predict import TilePredictor

    bundle = random_bundle(model_type)
    sam, size = bundle.model.sam, bundle.meta.image_size
    predictors = {k: TilePredictor(bundle, iterations=k) for k in (0, 1, 2)}
    clock = EncoderClock(sam.image_encoder)
    tile_hwc, tile_desc = test_tile(size)
    tile = np.ascontiguousarray(tile_hwc.transpose(2, 0, 1))[None]  # [1,3,S,S]
    amg = SamAutomaticMaskGenerator(sam, points_per_side=32)

    results: dict[str, list] = {f"k{k}": [] for k in (0, 1, 2)}
    results.update(k0_enc=[], k1_enc=[], k2_enc=[], amg=[], amg_enc=[], encoder_calls=[])
    amg_masks = []

    def run_samsp(k):
        clock.reset()
        t0 = time.perf_counter()
        out = predictors[k](tile)
        total = time.perf_counter() - t0
        assert out["prob"].shape == (1, size, size)
        results[f"k{k}"].append(total)
        results[f"k{k}_enc"].append(sum(clock.calls))
        results["encoder_calls"].append(len(clock.calls))
        return total

    def run_amg(generator):
        clock.reset()
        t0 = time.perf_counter()
        with torch.inference_mode():
            masks = generator.generate(tile_hwc)
        return time.perf_counter() - t0, sum(clock.calls), len(masks)

    log(f"P2/P4 on {tile_desc}: warm-up (K=0)")
    run_samsp(0)
    for key in results:
        results[key].clear()
    rng = random.Random(seed)
    for r in range(rounds):
        arms = ["k0", "k1", "k2", "amg"]
        rng.shuffle(arms)
        for arm in arms:
            if arm == "amg":
                t, enc, n = run_amg(amg)
                results["amg"].append(t)
                results["amg_enc"].append(enc)
                amg_masks.append(n)
            else:
                t = run_samsp(int(arm[1]))
            log(f"round {r + 1}/{rounds} {arm}: {t:.2f}s")
    out = {"model": model_type, "tile": tile_desc, "rounds": rounds, "order_seed": seed,
           "raw": results,
           "amg_masks": amg_masks}
    if amg_unfiltered:
        loose = SamAutomaticMaskGenerator(sam, points_per_side=32, pred_iou_thresh=0.0,
                                          stability_score_thresh=0.0)
        t, enc, n = run_amg(loose)
        log(f"AMG unfiltered: {t:.2f}s, {n} masks")
        out["amg_unfiltered"] = {"s": t, "encoder_s": enc, "masks": n}
    return out


class CachedEncoder(torch.nn.Module):
    """Stands in for the image encoder: returns precomputed embeddings (bench-only)."""

    def __init__(self, embeddings: torch.Tensor, img_size: int):
        super().__init__()
        self.embeddings = embeddings
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embeddings.expand(x.shape[0], -1, -1, -1)


def bench_p2_decoder(repeats: int, seed: int, model_type: str = "vit_b") -> dict:
    """Everything but the image encoder, many interleaved repeats: the same TilePredictor calls
    as P2 with the encoder replaced by its cached output for this tile."""
    from samsp.predict import TilePredictor
    from samsp.preprocess import prepare_batch

    bundle = random_bundle(model_type)
    sam, meta, size = bundle.model.sam, bundle.meta, bundle.meta.image_size
    tile_hwc, tile_desc = test_tile(size)
    tile = np.ascontiguousarray(tile_hwc.transpose(2, 0, 1))[None]
    x, _ = prepare_batch(tile, size, meta.pixel_mean, meta.pixel_std)
    with torch.inference_mode():
        t0 = time.perf_counter()
        emb = sam.image_encoder(x)
        encoder_s = time.perf_counter() - t0
    sam.image_encoder = CachedEncoder(emb, size)
    predictors = {k: TilePredictor(bundle, iterations=k) for k in (0, 1, 2)}
    for k in predictors:  # warm-up
        predictors[k](tile)
    raw: dict[str, list] = {f"k{k}": [] for k in (0, 1, 2)}
    rng = random.Random(seed)
    for _ in range(repeats):
        arms = [0, 1, 2]
        rng.shuffle(arms)
        for k in arms:
            t0 = time.perf_counter()
            predictors[k](tile)
            raw[f"k{k}"].append(time.perf_counter() - t0)
    log("P2 decoder side (cached encoder): " + ", ".join(
        f"K={k} {med(raw[f'k{k}']):.3f}s" for k in (0, 1, 2)) + f" over {repeats} repeats; "
        f"encoder once {encoder_s:.1f}s")
    return {"model": model_type, "tile": tile_desc, "repeats": repeats, "order_seed": seed,
            "encoder_s": encoder_s, "raw": raw}


def p2_decoder_figures(dec: dict, single_s: float | None) -> dict:
    r = dec["raw"]
    k = {i: med(r[f"k{i}"]) for i in (0, 1, 2)}
    single = single_s if single_s is not None else dec["encoder_s"] + k[0]
    return {
        "P2_dec_k0_s": k[0], "P2_dec_k1_s": k[1], "P2_dec_k2_s": k[2],
        "P2_sp_overhead_pct": 100 * (k[1] - k[0]) / single,
        "P2_k2_overhead_pct": 100 * (k[2] - k[0]) / single,
    }


def p2_p4_figures(raw: dict) -> dict:
    r = raw["raw"]
    total = {k: med(r[f"k{k}"]) for k in (0, 1, 2)}
    non_enc = {k: med([t - e for t, e in zip(r[f"k{k}"], r[f"k{k}_enc"])]) for k in (0, 1, 2)}
    fig = {
        "P2_single_s": total[0], "P2_k1_s": total[1], "P2_k2_s": total[2],
        "P2_encoder_s": med(r["k0_enc"] + r["k1_enc"] + r["k2_enc"]),
        "P2_non_encoder_k0_s": non_enc[0], "P2_non_encoder_k1_s": non_enc[1],
        "P2_non_encoder_k2_s": non_enc[2],
        "P2_encoder_calls_per_forward_max": max(r["encoder_calls"]),
        "P2_sp_overhead_pct_rounds": 100 * (non_enc[1] - non_enc[0]) / total[0],
        "P2_k2_overhead_pct_rounds": 100 * (non_enc[2] - non_enc[0]) / total[0],
        "P2_sp_overhead_pct_e2e": 100 * (total[1] - total[0]) / total[0],
        "P2_k2_overhead_pct_e2e": 100 * (total[2] - total[0]) / total[0],
        "P4_amg_s": med(r["amg"]), "P4_samsp_k1_s": total[1],
        "P4_vs_amg_ratio": med(r["amg"]) / total[1],
        "P4_amg_masks_kept": med(raw["amg_masks"]),
    }
    if "amg_unfiltered" in raw:
        fig["P4_amg_unfiltered_s"] = raw["amg_unfiltered"]["s"]
        fig["P4_vs_amg_unfiltered_ratio"] = raw["amg_unfiltered"]["s"] / total[1]
    return fig


# ============================================================================ throughput

def bench_throughput(model_type: str, batches, repeats: int, warm_batches) -> dict:
    import psutil

    from samsp import SamSP, build_sam

    torch.manual_seed(0)
    sam = build_sam(model_type)
    model = SamSP(sam, iterations=1, prompt="box").eval()
    size = model.image_size
    out: dict = {}
    peaks: dict[int, float] = {}
    vm = psutil.virtual_memory()
    for b in batches:
        if len(peaks) >= 2:
            # Peak RSS grows linearly with the batch (attention temporaries): extrapolate.
            (b0, p0), (b1, p1) = sorted(peaks.items())[-2:]
            predicted = p1 + (p1 - p0) / (b1 - b0) * (b - b1)
            current = psutil.Process().memory_info().rss / 2**30
            avail = psutil.virtual_memory().available / 2**30
            need = (predicted - current) * 1.1 + 2.0
            if avail < need or predicted > 0.6 * vm.total / 2**30:
                out[b] = {"skipped": f"predicted peak RSS {predicted:.1f} GiB (from batches "
                                     f"{b0} and {b1}); {avail:.1f} GiB available of "
                                     f"{vm.total / 2**30:.1f} GiB shared"}
                log(f"{model_type} batch {b}: skipped ({out[b]['skipped']})")
                continue
        x = torch.randn(b, 3, size, size)
        times = []
        with torch.inference_mode(), PeakRss() as peak:
            if b in warm_batches:
                model(x)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        peaks[b] = peak.peak_gib
        s = med(times)
        out[b] = {"s": s, "min": min(times), "max": max(times), "n": len(times),
                  "mpx_s": b * size * size / s / 1e6, "peak_rss_gib": peaks[b]}
        log(f"{model_type} batch {b}: median {s:.3f}s over {len(times)} -> "
            f"{out[b]['mpx_s']:.3f} Mpx/s (peak RSS {peaks[b]:.1f} GiB)")
    return {"image_size": size, "batches": out}


# ============================================================================ report

def _table(rows) -> list[str]:
    out = ["| arm | median s | min s | max s | n |", "|---|---|---|---|---|"]
    for name, values in rows:
        s = stats(values)
        out.append(f"| {name} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {s['n']} |")
    return out


def md_header(state: dict) -> list[str]:
    """Title, machine and one line per run of the MODEL_RESULTS section."""
    info, runs = state["machine"], state["runs"]
    lines = [
        "# Model speed benchmarks (P2, P4, throughput)",
        "",
        "Written by `bench/bench_model.py`; every number below comes from the run(s) listed here"
        " (a later run with `--merge` adds phases and keeps the earlier ones)."
        + ("" if state.get("complete") else " **Partial: the last run had not finished.**"),
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB RAM; "
        f"torch {info['torch']} ({info['torch_threads']} threads), Python {info['python']}",
    ]
    for run in runs:
        mins = f", {run['minutes']:.1f} min" if run.get("minutes") is not None else ""
        load = run.get("load")
        load_txt = (f"; load average (1 min) {load[0][0]:.1f} at start, {load[1][0]:.1f} at end"
                    if load else "")
        lines.append(f"- run `{run['command']}` -- {run['date']} UTC{mins}; phases "
                     f"{', '.join(run['phases'])}{load_txt}")
    lines += [
        "- the 2 cores were shared with other engineers' test and training runs during every "
        "run (load averages above, up to ~25 on 2 cores): absolute seconds are inflated and "
        "noisy. Arms are interleaved in a seeded random order each round and medians (min/max) "
        "are reported; ratios come from the same rounds.",
        "- quick mode: 3 P2/P4 rounds, 5 timed repeats per vit_tiny batch, 1 per vit_b batch.",
        "",
    ]
    return lines


def md_p2(p2: dict, fig: dict) -> list[str]:
    """P2 -- the self-prompting overhead measured on whole calls."""
    r = p2["raw"]
    return [
        f"## P2 -- self-prompting overhead, {p2['model']} at 1024 px (TilePredictor: uint8 "
        "tile in, probabilities out)", "",
        f"Tile: {p2['tile']}; random weights (timing only).", "",
        f"### Whole calls ({p2['rounds']} interleaved rounds, same rounds as P4)", "",
        *_table([("single pass (K=0)", r["k0"]), ("K=1 (box)", r["k1"]),
                 ("K=2 (box)", r["k2"]),
                 ("image encoder, inside those calls",
                  r["k0_enc"] + r["k1_enc"] + r["k2_enc"])]),
        "",
        f"- image encoder calls per forward: at most "
        f"{fig['P2_encoder_calls_per_forward_max']:g} (counted by a forward hook): passes >= 1 "
        "reuse the embeddings.",
        f"- end-to-end ratio of medians: K=1 {fig['P2_sp_overhead_pct_e2e']:+.2f} %, K=2 "
        f"{fig['P2_k2_overhead_pct_e2e']:+.2f} % -- dominated by encoder-time noise under this "
        "load (the K=2 arm came out faster than K=0), so not a measurement of the overhead.",
        f"- non-encoder time of the same calls (total minus the hooked encoder time), medians: "
        f"K=0 {fig['P2_non_encoder_k0_s']:.3f} s, K=1 {fig['P2_non_encoder_k1_s']:.3f} s, K=2 "
        f"{fig['P2_non_encoder_k2_s']:.3f} s -> "
        f"{fig['P2_sp_overhead_pct_rounds']:.2f} % (K=1), "
        f"{fig['P2_k2_overhead_pct_rounds']:.2f} % (K=2) of the single pass; only 3 samples "
        "each and not monotone in K, so noise-dominated too.",
        "",
    ]


def md_decoder(dec: dict, fig: dict, has_p2: bool) -> list[str]:
    """P2 again: everything but the image encoder (the encoder replaced by its cached output)."""
    r = dec["raw"]
    single = "the single-pass median above" if has_p2 else "encoder + K=0 of this phase"
    return [
        f"### Everything but the encoder ({dec['model']}, {dec['repeats']} interleaved "
        "repeats)", "",
        "The same TilePredictor calls with the image encoder replaced by its cached output "
        "for this tile (pre-processing, prompt derivation, prompt encoder, mask decoder, "
        "upsampling, post-processing):", "",
        *_table([("K=0", r["k0"]), ("K=1 (box)", r["k1"]), ("K=2 (box)", r["k2"])]),
        "",
        f"- **P2_sp_overhead_pct (K=1) = {fig['P2_sp_overhead_pct']:.2f} %** = (median K=1 - "
        f"median K=0) / {single} (target <= 5 %); K=2: {fig['P2_k2_overhead_pct']:.2f} %.",
        f"- this phase's single encoder call took {dec['encoder_s']:.1f} s.",
        "",
    ]


def md_p4(p2: dict, fig: dict) -> list[str]:
    """P4 -- SamAutomaticMaskGenerator against SamSP K=1 on the same tile."""
    r = p2["raw"]
    lines = [
        "## P4 -- SamAutomaticMaskGenerator(points_per_side=32) vs SamSP K=1, same tile", "",
        *_table([("AMG, default filters", r["amg"]), ("SamSP K=1", r["k1"])]), "",
        f"- **P4_vs_amg_ratio = {fig['P4_vs_amg_ratio']:.2f}x** (target >= 3x), medians of "
        f"the same interleaved rounds. AMG kept {fig['P4_amg_masks_kept']:g} masks (median): "
        "with random weights its quality filters drop nearly every mask before RLE/NMS, so "
        "this understates AMG's cost with trained weights.",
    ]
    if "P4_amg_unfiltered_s" in fig:
        lines.append(
            f"- AMG with pred_iou_thresh=0, stability_score_thresh=0 "
            f"({p2['amg_unfiltered']['masks']} masks after NMS; 1 run): "
            f"{fig['P4_amg_unfiltered_s']:.2f} s = {fig['P4_vs_amg_unfiltered_ratio']:.2f}x "
            "SamSP K=1.")
    lines.append("")
    return lines


def md_throughput(thr: dict) -> list[str]:
    """Model-only throughput per model and batch size."""
    lines = ["## Model-only throughput (SamSP.forward, K=1, inference mode, CPU)", "",
             "| model | input | batch | median s | min s | max s | n | Mpx/s (median) | "
             "Mpx/s (min time) | peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mt, res in thr.items():
        for b, v in res["batches"].items():
            if "skipped" in v:
                lines.append(f"| {mt} | {res['image_size']} | {b} | skipped: {v['skipped']} "
                             "| | | | | | |")
                continue
            px = int(b) * res["image_size"] ** 2 / 1e6
            lines.append(f"| {mt} | {res['image_size']} | {b} | {v['s']:.3f} | {v['min']:.3f} "
                         f"| {v['max']:.3f} | {v['n']} | {v['mpx_s']:.3f} | "
                         f"{px / v['min']:.3f} | {v['peak_rss_gib']:.1f} |")
    lines += ["", "Mpx/s counts model-input pixels (256² per vit_tiny image, 1024² per vit_b "
              "image); `throughput_*` in results_model.json are the median-based values. "
              "Peak RSS: this process, sampled every 50 ms during that batch's calls. The "
              "vit_tiny rows are the most load-sensitive (sub-second calls with 2 OpenMP "
              "threads on 2 oversubscribed cores): min-time figures are closer to what an idle "
              "machine gives.", ""]
    return lines


def write_md(path: Path, state: dict) -> None:
    fig = state["figures"]
    p2, dec, thr = state.get("p2p4") or {}, state.get("p2dec") or {}, state.get("throughput") or {}
    lines = md_header(state)
    if p2:
        lines += md_p2(p2, fig)
    if dec:
        lines += md_decoder(dec, fig, bool(p2))
    if p2:
        lines += md_p4(p2, fig)
    if thr:
        lines += md_throughput(thr)
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="3 rounds of P2/P4, 1 timed repeat of vit_b throughput per batch")
    p.add_argument("--rounds", type=int, help="P2/P4 rounds (default 3 quick, 5 full)")
    p.add_argument("--dec-repeats", type=int, default=15,
                   help="repeats of the cached-encoder P2 phase (p2dec)")
    p.add_argument("--amg-unfiltered", action="store_true",
                   help="also time AMG with its quality filters off (slow: ~15 min here)")
    p.add_argument("--skip", default="", help="comma list of p2p4,p2dec,tiny,vitb to skip")
    p.add_argument("--merge", action="store_true",
                   help="keep phases of the previous run (model_bench_raw.json) that this "
                        "run skips")
    p.add_argument("--md", default=str(REPO / "bench" / "results" / "MODEL_RESULTS.md"))
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "results_model.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--p2-model", default="vit_b", help=argparse.SUPPRESS)  # smoke tests only
    args = p.parse_args(argv)
    cmd = " ".join(["python bench/bench_model.py",
                    shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    skip = set(filter(None, args.skip.split(",")))
    rounds = args.rounds or (3 if args.quick else 5)
    # Not results_*.json: bench/merge_results.py merges every file of that name.
    raw_path = Path(args.json).with_name("model_bench_raw.json")
    state: dict = {"runs": [], "p2p4": {}, "p2dec": {}, "throughput": {}}
    if args.merge and raw_path.exists():
        old = json.loads(raw_path.read_text())
        runs = old.get("runs") or [{"command": old["command"], "date": old["date"],
                                    "load": old.get("load"), "minutes": None,
                                    "phases": [k for k in ("p2p4", "throughput") if old.get(k)]}]
        state.update(runs=runs, p2p4=old.get("p2p4") or {}, p2dec=old.get("p2dec") or {},
                     throughput=old.get("throughput") or {})
    run = {"command": cmd, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
           "phases": [], "minutes": 0.0}
    state["runs"].append(run)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    state["machine"] = machine()
    log(f"machine: {state['machine']}")

    def save(final: bool) -> None:
        """Write what is measured so far (a crash later keeps the finished phases)."""
        fig: dict = {}
        if state["p2p4"]:
            fig.update(p2_p4_figures(state["p2p4"]))
        if state["p2dec"]:
            fig.update(p2_decoder_figures(state["p2dec"], fig.get("P2_single_s")))
        for mt, res in state["throughput"].items():
            for b, v in res["batches"].items():
                if "mpx_s" in v:
                    fig[f"throughput_{mt}_b{b}_mpx_s"] = v["mpx_s"]
        state["figures"] = {k: round(float(v), 4) for k, v in fig.items()}
        state["complete"] = final
        run.update(load=[load0, os.getloadavg()],
                   minutes=round((time.perf_counter() - t_start) / 60, 1))
        Path(args.json).write_text(json.dumps(state["figures"], indent=1) + "\n")
        write_md(Path(args.md), state)
        raw_path.write_text(json.dumps(state, indent=1, default=str))

    if "p2p4" not in skip:
        state["p2p4"] = bench_p2_p4(rounds, args.amg_unfiltered, args.seed, args.p2_model)
        run["phases"].append("p2p4")
        save(False)
    if "p2dec" not in skip:
        state["p2dec"] = bench_p2_decoder(args.dec_repeats, args.seed, args.p2_model)
        run["phases"].append("p2dec")
        save(False)
    if "tiny" not in skip:
        state["throughput"]["vit_tiny"] = bench_throughput(
            "vit_tiny", (1, 4, 8), 5 if args.quick else 9, (1, 4, 8))
        run["phases"].append("tiny")
        save(False)
    if "vitb" not in skip:
        state["throughput"]["vit_b"] = bench_throughput(
            "vit_b", (1, 4, 8), 1 if args.quick else 3, (1,) if args.quick else (1, 4, 8))
        run["phases"].append("vitb")
    save(True)
    log(f"wrote {args.json}, {args.md}, {raw_path}")
    print(json.dumps(state["figures"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
