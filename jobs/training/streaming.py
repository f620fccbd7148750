"""Training samples streamed through Ray Data (``data.streaming: true``): no worker builds the
training set or keeps its items; Ray Data tasks read them window by window while the workers
train.

The driver hands ``TorchTrainer`` one dataset, ``datasets={"train": ...}`` (``train_dataset``):

* its source, :class:`EpochSamples`, makes one epoch's rows each time the dataset is executed --
  plain dicts ``{epoch, index, seed, item}``, ``item`` being the plan's item as JSON (a raster
  window and its scene index, a pair's file URIs, a synthetic index). ``index`` runs over the
  epoch's samples in the order ``DistributedSampler`` shuffles them for (seed, epoch), padded to
  a multiple of the workers as it pads; a mixture's item is drawn per (seed, epoch, index) as it
  is in memory (``TrainDataset.draw``);
* a ``map_batches`` task stage, :func:`load_block`, loads and augments each row with
  ``TrainDataset.draw``/``augmented`` -- ``ItemLoader`` and ``augment``, the in-memory path's
  code -- so sample (seed, epoch, index) is the same crop on both paths. Each task process opens
  a scene once (its image, label reader and radiometry) and reads one window per row; nothing is
  cached beyond that.

Epochs. Ray Train splits the dataset over the workers (``streaming_split(n, equal=True)``:
disjoint parts, equal row counts) and each worker iterates its ``get_dataset_shard("train")``
once per epoch. Every iteration re-executes the dataset, after a barrier: it starts once every
worker has asked for it. Which epoch that execution makes rows for is read from
:class:`EpochBoard`, a small actor where every worker publishes the epoch it is about to
iterate *before* asking; ``EpochSamples`` reads it when the execution starts (its read tasks are
made then), so all rows of an execution carry that epoch, and :class:`StreamingLoader` checks
every batch's epoch against its own. A resumed run publishes its next epoch first: the rows of
epochs already done are never made nor read.

Debug hook: with ``SAMSP_TRAIN_SAMPLE_LOG=<folder>`` each worker appends ``<epoch> <index>``
lines of the samples it trained on to ``<folder>/rank<r>.txt``.
"""
from __future__ import annotations

import functools
import json
import math
import os
import uuid
from typing import Any, Iterator

import numpy as np

from jobs.runtime.errors import DataError
from jobs.training.data import TrainDataset

SAMPLE_LOG_ENV = "SAMSP_TRAIN_SAMPLE_LOG"
DATASET_NAME = "train"


def epoch_order(n: int, world: int, seed: int, epoch: int) -> list[int]:
    """The sample indices of one epoch in ``DistributedSampler(shuffle=True, seed=seed)``'s order
    for ``epoch``, padded (by repeating the first ones) to a multiple of ``world`` as it pads."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g).tolist()
    pad = -n % world
    if pad:
        order += (order * math.ceil(pad / n))[:pad]
    return order


def batches_per_worker(n: int, world: int, batch_size: int) -> int:
    """Batches each worker takes per epoch (the in-memory ``DataLoader``'s length too)."""
    return math.ceil(math.ceil(n / world) / batch_size)


class EpochBoard:
    """The epoch the workers are about to iterate (a Ray actor: ``ray.remote(EpochBoard)``)."""

    def __init__(self):
        self._epoch = -1

    def publish(self, epoch: int) -> int:
        self._epoch = int(epoch)
        return self._epoch

    def epoch(self) -> int:
        return self._epoch


# ----------------------------------------------------------------------------- Ray Data tasks

# One sampler per task process (per run): its ItemLoader keeps the opened scenes.
_SAMPLERS: dict[str, TrainDataset] = {}


def sampler(spec: dict) -> TrainDataset:
    """This process's ``TrainDataset`` of a run (``spec`` from :func:`stream_spec`), made once:
    the sampling and loading of the in-memory path, without its item cache."""
    found = _SAMPLERS.get(spec["key"])
    if found is None:
        plan = spec["plan"]
        if not isinstance(plan, dict):  # the driver's ray.put of it
            import ray

            plan = ray.get(plan)
        _SAMPLERS.clear()  # one run at a time per process
        found = TrainDataset(plan, spec["crop"], spec["aug"], spec["seed"],
                             spec["samples_per_item"], cache=False)
        _SAMPLERS[spec["key"]] = found
    return found


def sample_rows(spec: dict, epoch: int, indices: list[int]) -> list[dict]:
    """The rows of samples ``indices`` of ``epoch``: plain dicts, the item as JSON."""
    ds = sampler(spec)
    rows = []
    for i in indices:
        pos, _ = ds.draw(epoch, i)
        rows.append({"epoch": epoch, "index": i, "seed": spec["seed"],
                     "item": json.dumps(ds.items[pos], sort_keys=True)})
    return rows


@functools.lru_cache(maxsize=2)
def _order(n: int, world: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(epoch_order(n, world, seed, epoch))


def row_block(spec: dict, epoch: int, n: int, world: int, start: int, stop: int) -> list:
    """A read task: rows ``start:stop`` of the epoch's order (made once per process and
    epoch), as one Arrow block."""
    import pyarrow as pa

    order = _order(n, world, spec["seed"], epoch)[start:stop]
    return [pa.Table.from_pylist(sample_rows(spec, epoch, list(order)))]


def load_row(spec: dict, row: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image uint8[3,c,c], mask bool[c,c], valid bool[c,c])`` of one row: the generator from
    the row's (seed, epoch, index) as ``TrainDataset.draw`` makes it (past a mixture's pick),
    the row's item loaded and augmented as ``TrainDataset[index]`` is."""
    ds = sampler(spec)
    if int(row["seed"]) != ds.seed:
        raise DataError(f"streamed row of seed {row['seed']} in a run of seed {ds.seed}")
    pos, rng = ds.draw(int(row["epoch"]), int(row["index"]))
    item = json.loads(row["item"])
    if item["key"] != ds.items[pos]["key"]:
        raise DataError(f"streamed row {row['index']} of epoch {row['epoch']} names item "
                        f"{item['key']!r}, the plan draws {ds.items[pos]['key']!r}")
    return ds.augmented(item, rng)


def load_block(batch: dict, spec: dict) -> dict:
    """The ``map_batches`` stage: rows in, augmented crops out (masks as uint8)."""
    n = len(batch["index"])
    crops = [load_row(spec, {k: batch[k][j] for k in ("epoch", "index", "seed", "item")})
             for j in range(n)]
    return {"image": np.stack([c[0] for c in crops]),
            "mask": np.stack([c[1] for c in crops]).astype(np.uint8),
            "valid": np.stack([c[2] for c in crops]).astype(np.uint8),
            "epoch": np.asarray(batch["epoch"], dtype=np.int64),
            "index": np.asarray(batch["index"], dtype=np.int64)}


# ----------------------------------------------------------------------------- worker side

class StreamingLoader:
    """A worker's training batches of each epoch, from its shard of the streamed dataset:
    ``set_epoch`` then iterate, as with the in-memory ``DataLoader`` and its sampler. Yields
    ``(image uint8[B,3,c,c], mask float32[B,1,c,c], valid float32[B,1,c,c])``."""

    def __init__(self, board, n_samples: int, world: int, rank: int, batch_size: int):
        self.board, self.n_samples, self.world, self.rank = board, n_samples, world, rank
        self.batch_size = batch_size
        self.epoch = 0
        self.log_dir = os.environ.get(SAMPLE_LOG_ENV) or None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batches_per_worker(self.n_samples, self.world, self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        import ray
        import ray.train
        import torch

        # Before asking for the shard: the execution starts once every worker has asked, so
        # by then the board holds this epoch (module docstring).
        ray.get(self.board.publish.remote(self.epoch))
        shard = ray.train.get_dataset_shard(DATASET_NAME)
        for batch in shard.iter_torch_batches(batch_size=self.batch_size, device="cpu"):
            epochs = set(batch["epoch"].tolist())
            if epochs != {self.epoch}:
                raise RuntimeError(f"streamed samples of epoch(s) {sorted(epochs)} while "
                                   f"training epoch {self.epoch}")
            if self.log_dir:
                self._log(batch["index"].tolist())
            yield (batch["image"], batch["mask"][:, None].to(torch.float32),
                   batch["valid"][:, None].to(torch.float32))

    def _log(self, indices: list[int]) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, f"rank{self.rank}.txt"), "a") as f:
            f.writelines(f"{self.epoch} {i}\n" for i in indices)


def training_part(plan: dict) -> dict:
    """What sampling and loading training samples need of a plan (no validation items; with
    ``positive_fraction`` each window's flag rides on its item: ``TrainDataset.draw``)."""
    return {k: plan.get(k) for k in ("train", "scenes", "groups", "samples_per_epoch",
                                     "positive_fraction")}


def stream_spec(plan: Any, crop: int, aug: dict, seed: int, samples_per_item: int) -> dict:
    """What the task stages need to rebuild a run's sampler: the plan's training part (or an
    object reference to it), crop, augmentation and seed; ``key`` names the run in the
    process cache."""
    return {"key": uuid.uuid4().hex, "plan": plan, "crop": crop, "aug": aug, "seed": seed,
            "samples_per_item": samples_per_item}


def samples_per_epoch(plan: dict, samples_per_item: int) -> int:
    """``len(TrainDataset)`` of ``plan`` without building one."""
    return (plan.get("samples_per_epoch") or len(plan["train"])) * samples_per_item


def padded(n: int, world: int) -> int:
    """Rows of an epoch of ``n`` samples over ``world`` workers (``epoch_order``'s length)."""
    return math.ceil(n / world) * world


def read_blocks(rows: int, batch_size: int, max_tasks: int = 2000) -> list[tuple[int, int]]:
    """``(start, stop)`` of an epoch's read tasks: a batch's rows or more (at least 8), at
    most ``max_tasks`` tasks."""
    size = max(8, batch_size, math.ceil(rows / max_tasks))
    return [(k, min(rows, k + size)) for k in range(0, rows, size)]

