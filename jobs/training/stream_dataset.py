"""The driver's side of ``data.streaming`` (jobs/training/streaming.py): the Ray Data dataset of
training samples handed to ``TorchTrainer(datasets={"train": ...})``, its epoch board, and the
Ray Data settings of a training run. Imported only once Ray runs (the driver's pre-flight and
``--check`` load no Ray)."""
from __future__ import annotations

import functools
from typing import Any, Optional

import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from jobs.training.streaming import (DATASET_NAME, EpochBoard, load_block, padded,
                                     read_blocks, row_block, samples_per_epoch, stream_spec,
                                     training_part)


class EpochSamples(Datasource):
    """One epoch's sample rows each time the dataset is executed: the epoch the workers
    published on the board (read when the execution makes its read tasks, after Ray Data's
    start-of-iteration barrier); each read task makes a slice of the epoch's rows in
    ``DistributedSampler``'s order (``row_block``)."""

    def __init__(self, spec: dict, board, n_samples: int, world: int, batch_size: int):
        super().__init__()
        self.spec, self.board = spec, board
        self.n_samples, self.world, self.batch_size = n_samples, world, batch_size

    def get_name(self) -> str:
        return "EpochSamples"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context: Any = None) -> list[ReadTask]:
        # Before any worker published (a schema probe), epoch 0's rows: never trained on.
        epoch = max(0, ray.get(self.board.epoch.remote()))
        blocks = read_blocks(padded(self.n_samples, self.world), self.batch_size)
        return [ReadTask(functools.partial(row_block, self.spec, epoch, self.n_samples,
                                           self.world, start, stop),
                         BlockMetadata(num_rows=stop - start, size_bytes=None, exec_stats=None,
                                       input_files=None),
                         per_task_row_limit=per_task_row_limit)
                for start, stop in blocks]


def new_epoch_board():
    """The run's :class:`EpochBoard` actor (no CPU; lives as long as the driver holds it)."""
    return ray.remote(num_cpus=0)(EpochBoard).remote()


def train_dataset(plan: dict, cfg, crop: int, board) -> "ray.data.Dataset":
    """The streamed training samples of a run (``cfg`` a ``TrainConfig``): epoch rows from
    :class:`EpochSamples`, loaded and augmented by ``load_block`` tasks. The plan's training
    part goes to the object store once; every task process reads it once."""
    spec = stream_spec(ray.put(training_part(plan)), crop, cfg.augment.model_dump(),
                       cfg.train.seed, cfg.train.samples_per_item)
    source = EpochSamples(spec, board, samples_per_epoch(plan, cfg.train.samples_per_item),
                          cfg.scaling.num_workers, cfg.train.batch_size)
    # A task loads up to a batch's rows (at least 8) at a time: bounded memory per task.
    return ray.data.read_datasource(source).map_batches(
        load_block, fn_kwargs={"spec": spec}, batch_size=max(8, cfg.train.batch_size),
        batch_format="numpy")


def streaming_datasets(plan: dict, cfg, crop: int) -> tuple[dict, dict]:
    """``(TorchTrainer datasets, what the workers need)`` of a streaming run; quiets Ray Data's
    progress bars (and, below INFO, its per-epoch execution lines) in the run's DataContext,
    which Ray Train hands to the workers and the dataset's coordinator."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if cfg.run.log_level not in ("DEBUG", "INFO"):
        ctx.print_on_execution_start = False
    board = new_epoch_board()
    worker = {"board": board, "samples": samples_per_epoch(plan, cfg.train.samples_per_item)}
    return {DATASET_NAME: train_dataset(plan, cfg, crop, board)}, worker
