"""Numeric precision of the model's forward: a setting, resolved per device.

``auto`` picks the fastest precision the hardware runs natively: bf16 on CUDA cards with bf16
tensor cores (compute capability >= 8.0) and on CPUs with native bf16 (avx512_bf16, AMX, or
Arm's BF16); fp16 on older CUDA cards (T4, V100: fp16 tensor cores, no bf16); fp32 otherwise.
Only the model runs in the reduced precision (``torch.autocast``): pre/post-processing, losses,
metrics and the self-prompt derivation stay float32, and a bundle's stored weights never change
(a predictor may keep its in-memory copy of the Linear/Conv weights in the reduced dtype:
:func:`cast_autocast_weights`, same outputs).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Literal, get_args

import torch

from .errors import SamspError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags of native bf16 arithmetic (x86 AVX-512 BF16, AMX; Arm's "bf16" feature).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


class PrecisionError(SamspError, ValueError):
    """A precision the device cannot run."""


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (read from the CPU, never assumed)."""
    probe = getattr(torch._C, "_cpu", None)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(probe, name, None)
        if check is not None and check():
            return True
    return bool(_cpuinfo_flags() & set(_BF16_CPU_FLAGS))


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cuda_has_bf16(device: torch.device) -> bool:
    """bf16 tensor cores: Ampere (compute capability 8.0) and newer."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto | fp32 | bf16 | fp16`` -> the precision the model runs in on ``device``."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    device = torch.device(device)
    if device.type == "cuda":
        if precision != "auto":
            return precision
        return "bf16" if cuda_has_bf16(device) else "fp16"
    if precision == "fp16":
        raise PrecisionError("precision fp16 is for CUDA cards without bf16; on CPU use bf16 "
                             "(fast where the CPU has native bf16) or fp32")
    if precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    return precision


def autocast(precision: str, device: str | torch.device):
    """The autocast context of a *resolved* precision on ``device`` (fp32: no autocast)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


# Modules whose weights autocast casts to the reduced dtype on every call (they are on its
# lower-precision list on CPU and CUDA); LayerNorm and friends run in float32 and keep theirs.
_CAST_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d)


def cast_autocast_weights(model: torch.nn.Module, precision: str) -> int:
    """Store, once, the weights that autocast would cast on every call in the *resolved*
    ``precision`` (bf16/fp16; fp32: nothing). The forward, run under :func:`autocast`, then
    computes exactly the same numbers (the same rounding of the same weights, done before
    instead of per call: bit-identical outputs, tested) without ~400 weight casts a vit_tiny
    forward (measured: vit_tiny batch 8 bf16 107 -> 97 ms on 2 cores) and with half the
    weights' memory. For inference only: the model cannot then run in fp32. Returns the number
    of tensors cast."""
    if precision == "fp32":
        return 0
    dtype = _DTYPES[precision]
    n = 0
    for module in model.modules():
        if isinstance(module, _CAST_MODULES):
            for name in ("weight", "bias"):
                param = getattr(module, name, None)
                if param is not None and param.dtype != dtype:
                    param.data = param.data.to(dtype)
                    n += 1
    return n
