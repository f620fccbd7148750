"""Every CUDA path samsp has, exercised in a few minutes on one GPU (``bench/gpu_check.sh``).

CI never has a GPU, so this is the check the first GPU machine runs. Each part runs on its own
(one failing part is recorded, the others still run) and writes what it measured to
``bench/results/results_gpu.json`` (and ``$OUT/results_gpu.json`` when ``OUT`` is set):

* ``env``: torch/CUDA build, card, compute capability, driver, what ``precision: auto`` picks,
  Ray's device check (``jobs.runtime.devices.worker_device``) passing (issue 19 items 1, 8).
* ``encoder``: vit_b image encoder at 1024², batch 4: seconds per image and TFLOP/s in fp32,
  bf16, bf16 + fused attention (and + ``torch.compile``), peak memory each (issue 15).
* ``syncs``: host syncs inside one fused vit_b encoder forward and one SamSP K=1 forward
  (``torch.cuda.set_sync_debug_mode``; issue 19 item 7).
* ``oom``: a vit_b predictor at batch 16 under a memory cap: the batch halves, outputs equal
  batch-1 outputs (issue 19 item 3).
* ``segment``: jobs/segment.py on a GPU actor (embedded Ray, ``predict.num_gpus=1``) and on the
  local engine: Mpx/s, actors, precision (items 2, 5).
* ``train``: a 1-GPU nccl Ray Train run of ``configs/train_tiny.yaml`` in bf16 (items 4, 6).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from bench.common import random_bundle
from jobs.local_stack.demo_scene import CrackScene, write_scene
from jobs.runtime.devices import worker_device

REPO = Path(__file__).resolve().parents[1]
VIT_B_GFLOP = 972.0  # per 1024² image (torch.utils.flop_counter; BENCHMARKS.md, P6)


def part_env() -> dict:
    import torch

    from samsp.gpu import nvidia_driver_version
    from samsp.precision import resolve_precision

    dev = torch.device("cuda")
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda,
            "device": torch.cuda.get_device_name(dev),
            "capability": list(torch.cuda.get_device_capability(dev)),
            "memory_gib": round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1),
            "driver": nvidia_driver_version(), "auto_precision": resolve_precision("auto", dev),
            "worker_device": worker_device("auto")}


def _encoder(fused: bool):
    import torch

    from samsp import build_sam

    torch.manual_seed(0)
    return build_sam("vit_b", fused_attention=fused).image_encoder.cuda().eval()


def _time_encoder(encoder, x, precision: str, repeats: int = 5) -> dict:
    import torch

    from samsp.precision import autocast

    with torch.inference_mode(), autocast(precision, "cuda"):
        for _ in range(2):
            encoder(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(repeats):
            encoder(x)
        torch.cuda.synchronize()
    per_image = (time.perf_counter() - t0) / repeats / len(x)
    return {"s_per_image": round(per_image, 5), "tflops": round(VIT_B_GFLOP / per_image / 1e3, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def part_encoder(batch: int = 4, compile_too: bool = True) -> dict:
    import torch

    x = torch.randn(batch, 3, 1024, 1024, device="cuda")
    out = {"batch": batch}
    reference = _encoder(fused=False)
    out["fp32"] = _time_encoder(reference, x, "fp32")
    out["bf16"] = _time_encoder(reference, x, "bf16")
    fused = _encoder(fused=True)
    out["bf16_fused"] = _time_encoder(fused, x, "bf16")
    with torch.inference_mode():
        ref = reference(x[:1]).float()
        got = fused(x[:1]).float()
    out["fused_vs_reference_fp32_max_abs"] = float((ref - got).abs().max())
    if compile_too:
        t0 = time.perf_counter()
        compiled = torch.compile(fused)
        out["bf16_fused_compile"] = _time_encoder(compiled, x, "bf16")
        out["compile_s"] = round(time.perf_counter() - t0, 1)
    return out


def part_syncs() -> dict:
    import torch

    from samsp import SamSP, build_sam
    from samsp.precision import autocast

    torch.manual_seed(0)
    model = SamSP(build_sam("vit_b"), iterations=1, prompt="box").cuda().eval()
    x = torch.randn(2, 3, 1024, 1024, device="cuda")
    valid = torch.ones(2, 1, 1024, 1024, dtype=torch.bool, device="cuda")
    counts = {}
    for name, fn in (("encoder", lambda: model.sam.image_encoder(x)),
                     ("samsp_k1", lambda: model(x, valid=valid))):
        with torch.inference_mode(), autocast("bf16", "cuda"):
            fn()  # warm: index caches built
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    fn()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        counts[name] = sum("synchroniz" in str(w.message) for w in caught)
    return {"host_syncs": counts}


def part_oom(cap_gib: float = 12.0, batch: int = 16) -> dict:
    import numpy as np
    import torch

    from samsp.gpu import HalvingBatches
    from samsp.predict import TilePredictor

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total))
    try:
        predictor = TilePredictor(random_bundle("vit_b"), device="cuda", precision="fp32")
        tiles = np.random.default_rng(0).integers(0, 255, (batch, 3, 1024, 1024), np.uint8)
        halving = HalvingBatches(name="gpu_check")
        parts = halving(batch, lambda items: predictor(tiles[items]))
        probs = np.concatenate([r["prob"] for _, r in parts if not isinstance(r, str)])
        one = predictor(tiles[:1])["prob"]
        return {"cap_gib": cap_gib, "batch": batch, "final_limit": halving.limit,
                "chunks": len(parts), "failed": sum(isinstance(r, str) for _, r in parts),
                "batch1_max_abs_diff": float(np.abs(probs[:1] - one).max())}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def _job(cmd: list[str], timeout: int) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        summary = {}
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "summary": summary, "tail": (proc.stdout + proc.stderr)[-1500:]}


def part_segment(size: int = 4096) -> dict:

    work = Path(tempfile.mkdtemp(prefix="samsp-gpu-"))
    scene = work / "crack.tif"
    write_scene(CrackScene(size=size, seed=3), scene, work / "truth.tif")
    model = str(REPO / "models" / "samsp-crack-tiny")
    out = {}
    for engine, sets in (("ray", ["predict.num_gpus=1"]), ("local", [])):
        cmd = [sys.executable, "jobs/segment.py", "--input", str(scene), "--output",
               str(work / f"out_{engine}"), "--model", model, "--set", f"pipeline.engine={engine}",
               "--set", "predict.batch_size=32"]
        for s in sets:
            cmd += ["--set", s]
        r = _job(cmd, timeout=240)
        s = r["summary"]
        steady = (s.get("seconds") or {}).get("steady")
        r["mpx_per_s_steady"] = round(s["pixels"] / 1e6 / steady, 2) if steady and "pixels" in s \
            else None
        out[engine] = r
    return out


def part_train() -> dict:
    storage = tempfile.mkdtemp(prefix="samsp-gpu-train-")
    cmd = [sys.executable, "jobs/train.py", "--config", "configs/train_tiny.yaml",
           "--set", "scaling.use_gpu=true", "--set", "scaling.num_workers=1",
           "--set", "train.precision=bf16", "--set", "train.epochs=2",
           "--set", f"run.storage_path={storage}", "--set", "run.name=gpu-check"]
    return _job(cmd, timeout=240)


PARTS = {"env": part_env, "encoder": part_encoder, "syncs": part_syncs, "oom": part_oom,
         "segment": part_segment, "train": part_train}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "results_gpu.json"))
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "run it on a GPU machine", file=sys.stderr)
        return 2
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
    failed = 0
    for name in args.parts.split(","):
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            results[name] = PARTS[name]()
        except Exception as exc:  # noqa: BLE001 - record it, run the other parts
            failed += 1
            results[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-2000:]}
        results[name + "_s"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_check] {name}: {json.dumps(results[name], default=str)[:600]}", flush=True)
    text = json.dumps(results, indent=2, default=str) + "\n"
    Path(args.json).write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "results_gpu.json").write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
