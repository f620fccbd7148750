"""SAM-SP fine-tuning on Ray Train.

    python jobs/train.py --config configs/train_tiny.yaml [--set train.epochs=3 ...]
    ray job submit --working-dir . -- python jobs/train.py --config configs/train_deepcrack_cpu.yaml

Plain ``python`` starts an embedded local Ray; under ``ray job submit`` (``RAY_ADDRESS`` set) the
job joins the cluster (see ``jobs/runtime/ray_session.py``). Fields: ``jobs/training/config.py``;
the driver: ``jobs/training/driver.py``; the worker loop: ``jobs/training/loop.py`` (one step:
``jobs/training/step.py``, validation: ``jobs/training/validation.py``); model, checkpoint and
loss helpers: ``jobs/training/model.py``.

What happens:

1. Pre-flight on the driver, before any worker starts: the config validates, the model builds
   (unknown type, missing or mismatched base checkpoint fail here), the data is listed, split and
   one train/val item is read, the storage bucket is reachable, the cluster can host the workers.
2. ``TorchTrainer`` with ``num_workers`` DDP workers (gloo on CPU, nccl on GPU). Each worker loads
   its shard through a ``DistributedSampler``; AdamW, linear warmup + cosine, gradient
   accumulation, ``train.precision`` (bf16 autocast where the device runs it natively, CPU
   included; fp16 + GradScaler on CUDA cards without bf16). Every epoch: train loss parts, val Dice/IoU of every pass,
   epoch seconds are reported with a checkpoint (model weights, optimizer, scheduler, epoch,
   history) under ``<storage_path>/<run.name>/``; Ray keeps the best ``num_to_keep`` by val Dice
   plus the latest.
3. Relaunching the same ``run.name`` + ``storage_path`` resumes: Ray Train v2 restores the run's
   checkpoint-manager snapshot and ``ray.train.get_checkpoint()`` returns the latest checkpoint,
   from which model, optimizer, scheduler and epoch counter are restored.
4. The best checkpoint (val Dice) is exported with ``samsp.save_bundle`` (written locally, then
   uploaded for s3://) to ``export.uri`` (default ``<storage_path>/<run.name>/bundle``), with
   provenance. ``summary.json`` (per-epoch history, best epoch, bundle URI) goes next to it.

Exit codes: 0 done (or stopped by ``train.stop_after_epochs``), 2 bad config/data/model/storage
(nothing started), 1 training failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/train.py`: make `import jobs` resolve to this repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.redact import redact_text  # noqa: E402
from jobs.runtime.config import ConfigError, add_config_args, job_epilog, load_config  # noqa: E402
from jobs.runtime.logs import configure_logging  # noqa: E402
from jobs.runtime.ray_session import stop_ray  # noqa: E402
from jobs.training.config import TrainConfig  # noqa: E402
from jobs.training.data import DataError  # noqa: E402
from jobs.training.driver import preflight, run  # noqa: E402
from jobs.training.model import TrainError  # noqa: E402

log = logging.getLogger("samsp.train")


def failure_line(err: BaseException) -> str:
    """One line for a failed run: Ray nests the worker's traceback in its error's text, whose
    last line names the root cause (``samsp.errors.CudaUnavailableError: ...``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    head = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return head if len(lines) < 2 else f"{head} {lines[-1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=job_epilog(
            ["python jobs/train.py --config configs/train_tiny.yaml",
             "python jobs/train.py --config configs/train_deepcrack_cpu.yaml "
             "--set train.epochs=8 --set train.precision=bf16",
             "ray job submit --working-dir . -- python jobs/train.py "
             "--config configs/train_vit_b_lora_gpu.yaml"],
            "jobs/training/config.py (every field, with comments) and README.md, "
            "'Training job'",
            {0: "done (or stopped by train.stop_after_epochs)",
             1: "training failed",
             2: "bad config, data, model or storage (nothing started)"}))
    add_config_args(parser, "train.epochs=3")
    parser.add_argument("--summary", help="also write the run summary JSON to this local file")
    parser.add_argument("--check", action="store_true",
                        help="validate config, model, data and storage, then exit (no Ray)")
    args = parser.parse_args(argv)
    configure_logging(logging.INFO, "%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        if args.check:
            facts = preflight(cfg)
            print(json.dumps({"ok": True, "data": facts["plan"]["summary"],
                              "trainable_params": facts["trainable_params"]}))
            return 0
        summary = run(cfg)
    except (ConfigError, DataError, TrainError) as err:
        line = f"error: {redact_text(str(err))}"  # a scene's signed href
        stop_ray()
        print(line, file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - Ray wraps worker failures; keep the CLI short
        log.exception("training failed")
        line = f"error: training failed: {redact_text(failure_line(err))}"
        stop_ray()
        print(line, file=sys.stderr)
        return 1
    stop_ray()
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1, default=str))
    short = {k: v for k, v in summary.items() if k != "history"}
    print("SUMMARY " + json.dumps(short, default=str), flush=True)
    return 0


if __name__ == "__main__":
    # The worker loop lives in jobs.training.loop, so Ray pickles it by reference (workers import
    # it) even when this file runs as `__main__`.
    sys.exit(main())
