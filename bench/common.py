"""What every benchmark shares: a timestamped log line, the machine description quoted next to
each number, and a random-weight bundle of a SAM architecture (speed does not depend on weights)."""
from __future__ import annotations

import os
import platform
import time


def log(msg: str, tag: str = "bench") -> None:
    print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_label() -> str:
    """Short machine label for a run record: cores, CPU model and its bf16 matrix units (the
    bf16 training speed of an arm depends on them: AMX vs AVX512-BF16 differ per arm)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    units = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{os.cpu_count()}-core {cpu_model()}" + (f" ({', '.join(units)})" if units else "")


def machine() -> dict:
    """CPU model, cores, memory, Python/torch versions and the load average right now."""
    import psutil
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "load_avg": [round(x, 2) for x in os.getloadavg()]}


def random_bundle(model_type: str, seed: int = 0):
    """An in-memory ``samsp.Bundle`` of ``model_type`` with random weights (K = 1, box)."""
    import torch

    from samsp import Bundle, BundleMeta, SamSP, build_sam

    torch.manual_seed(seed)
    sam = build_sam(model_type)
    model = SamSP(sam, iterations=1, prompt="box").eval()
    meta = BundleMeta(model_type=model_type, image_size=model.image_size,
                      pixel_mean=tuple(sam.pixel_mean.flatten().tolist()),
                      pixel_std=tuple(sam.pixel_std.flatten().tolist()), iterations=1, prompt="box")
    return Bundle(model=model, meta=meta)
