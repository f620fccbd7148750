"""CUDA failures a model call can meet, told apart: out of memory (retry smaller) from a broken
device (no retry in this process helps), and the check that a GPU worker really has CUDA.

Nothing here knows of Ray: the callers (``jobs/``) decide what a worker was given and what to do
with a broken device.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import torch

from .errors import CudaUnavailableError

log = logging.getLogger(__name__)

#: Messages of CUDA-side failures that leave the process's CUDA context unusable (a sticky
#: "CUDA error: an illegal memory access", Xid faults, library handles that no longer work).
FATAL_CUDA_MARKERS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error",
                      "CUDA driver error")
#: torch >= 2.8 raises this for errors of the accelerator runtime.
_ACCELERATOR_ERROR = getattr(torch, "AcceleratorError", None)


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA allocation failure (``torch.OutOfMemoryError`` = ``torch.cuda.OutOfMemoryError``):
    the device is fine, the batch was too big."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc))


def is_fatal_cuda_error(exc: BaseException) -> bool:
    """A CUDA failure other than out-of-memory: the context is likely broken for this process."""
    if is_out_of_memory(exc):
        return False
    if _ACCELERATOR_ERROR is not None and isinstance(exc, _ACCELERATOR_ERROR):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in FATAL_CUDA_MARKERS)


def free_cuda_cache() -> None:
    """Hand the caching allocator's unused blocks back, so a smaller retry can use them."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver's version (readable without CUDA), None when none is."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            words = f.readline().split()
    except OSError:
        return None
    return next((w for w in words if w[:1].isdigit() and "." in w), None)


def require_cuda(gpu_ids: list[str]) -> None:
    """Raise :class:`CudaUnavailableError` (one line: what was given, what torch sees, why) when
    this process was given ``gpu_ids`` but torch cannot use CUDA."""
    if torch.cuda.is_available():
        return
    driver = nvidia_driver_version()
    build = (f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
             else f"torch {torch.__version__} needs an NVIDIA driver for CUDA {torch.version.cuda}")
    raise CudaUnavailableError(
        f"this worker was given GPU {','.join(gpu_ids)} "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) but "
        f"torch.cuda.is_available() is False: {build}, the node has "
        f"{'driver ' + driver if driver else 'no NVIDIA driver loaded'} "
        "(CUDA 13 needs >= 580; see cluster/README.md, GPU nodes)")


class HalvingBatches:
    """Runs a model over a batch in chunks of at most ``limit`` items; on CUDA out-of-memory the
    cache is freed and the chunk retried in halves, down to one item, whose failure is returned
    instead of raised. The lowered limit is kept for every later call: a batch that did not fit
    once will not fit next time either, and retrying it each time would double the work.

    ``name`` labels the log line written when the limit goes down (once per new size).
    """

    def __init__(self, limit: int | None = None, name: str = "model"):
        self.limit = limit
        self.name = name

    def __call__(self, n: int, call: Callable[[slice], Any]) -> list[tuple[slice, Any]]:
        """``call(items)`` for consecutive slices covering ``range(n)``: ``[(slice, result)]``,
        where the result of a single item that still ran out of memory is the error text."""
        out: list[tuple[slice, Any]] = []
        start = 0
        while start < n:
            size = min(self.limit or n, n - start)
            items = slice(start, start + size)
            failed = None
            try:
                out.append((items, call(items)))
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                # The text only: the exception's traceback holds the frames (and tensors) of
                # the failed forward, whose memory must be free before the retry.
                failed = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            if failed is None:
                start += size
                continue
            free_cuda_cache()
            if size == 1:
                out.append((items, f"{failed} (at batch 1)"))
                start += 1
                continue
            self.limit = (size + 1) // 2  # halves rounded up: 7 -> 4 -> 2 -> 1
            log.warning("%s: CUDA out of memory at batch %d; batch lowered to %d for the rest "
                        "of this worker's life", self.name, size, self.limit)
        return out
