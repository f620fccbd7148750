"""Errors raised by samsp, each with a one-line message that names what is wrong."""
from __future__ import annotations


class SamspError(Exception):
    """Base class for samsp errors."""


class CheckpointError(SamspError, ValueError):
    """A checkpoint that cannot be read safely or does not fit the model being built."""


class BundleError(SamspError, ValueError):
    """A model bundle that is missing, incomplete, inconsistent or corrupt."""


class CudaUnavailableError(SamspError, RuntimeError):
    """A worker that was given a GPU, yet torch sees no CUDA device (the node's NVIDIA driver is
    missing or older than the torch build needs, or the device never reached the container)."""
