"""Ray Train's torch backend with one check ahead of the process group: every worker verifies the
GPU it was given (``jobs.runtime.devices.worker_device``). Without it a GPU worker whose node's driver is
too old for the torch build dies inside NCCL set-up with "ProcessGroupNCCL is only supported with
GPUs, no GPUs found!", which names neither the driver nor the GPU Ray assigned."""
from __future__ import annotations

from dataclasses import dataclass

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

from jobs.runtime.devices import worker_device


class GpuCheckedTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config):
        # CudaUnavailableError on a worker ends the run with its one-line message; zero-GPU
        # workers get the node's GPUs hidden before torch touches CUDA.
        worker_group.execute(worker_device)
        super().on_start(worker_group, backend_config)


@dataclass
class GpuCheckedTorchConfig(TorchConfig):
    """``TorchConfig`` whose workers check their GPU first (see the module docstring)."""

    @property
    def backend_cls(self):
        return GpuCheckedTorchBackend
