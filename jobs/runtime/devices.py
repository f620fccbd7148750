"""The torch device of a model in a Ray actor or training worker, decided by what Ray gave it.

One helper for the segment/sweep predictor actors and the Ray Train workers:

* given a GPU (``ray.get_gpu_ids()`` non-empty): CUDA must work, else
  :class:`samsp.errors.CudaUnavailableError` -- never a silent CPU run on a node whose driver is
  too old for the torch build (the actor then fails to start and the job stops with that line);
* given none: CPU, and the node's GPUs are hidden from this process. Ray 2.60 leaves
  ``CUDA_VISIBLE_DEVICES`` alone for zero-GPU workers (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO``
  defaults to off), so ``device: auto`` would otherwise put a CPU actor's model on a card that
  another actor reserved;
* outside Ray (the local engine, tests): ``auto`` means CUDA when torch sees it.

And what a predictor does with a CUDA error that leaves its context broken
(:func:`crash_for_restart`).
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def ray_gpu_ids() -> list[str] | None:
    """GPU ids Ray assigned to this process; None when it is not a Ray task or actor."""
    if "ray" not in sys.modules:  # the local engine never imports Ray
        return None
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None  # a driver: Ray assigns it nothing
    return [str(i) for i in ray.get_gpu_ids()]


def worker_device(requested: str = "auto") -> str:
    """``cpu`` or ``cuda`` for a model in this process (``requested``: auto, cpu or cuda).

    Raises ``CudaUnavailableError`` when Ray gave this worker a GPU that torch cannot use. An
    explicit ``cuda`` on a worker given no GPU is respected (it shares a card it did not reserve).
    """
    ids = ray_gpu_ids()
    if ids is None:  # not a Ray worker
        if requested != "auto":
            return requested
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if ids:
        if requested == "cpu":
            return "cpu"
        # samsp imports torch: only on a worker checking its device
        from samsp.gpu import require_cuda

        require_cuda(ids)
        return "cuda"
    if requested == "cuda":
        return "cuda"
    # Before torch initialises CUDA in this process (no model is built yet).
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return "cpu"


def crash_for_restart(exc: BaseException) -> None:
    """A CUDA error that breaks this process's context: in a Ray worker, end the process so Ray
    restarts the actor (``max_restarts``) and retries its block on a fresh one -- an exception
    would only fail the task and leave a broken actor that fails every later batch. Outside Ray
    it returns, and the caller re-raises."""
    if ray_gpu_ids() is None:
        return
    msg = " ".join(str(exc).split())[:300]
    log.error("fatal CUDA error, ending this actor so Ray restarts it: %s: %s",
              type(exc).__name__, msg)
    print(f"samsp: fatal CUDA error, actor exits for a restart: {type(exc).__name__}: {msg}",
          file=sys.stderr, flush=True)
    os._exit(1)
