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


class SegmentError(SamspError, ValueError):
    """A whole-image segmentation (``segment_file``, ``SlidingWindow``) that cannot run as asked:
    bad tiling, an image over the size limit, an array of no known layout."""


class ContractError(SegmentError):
    """An image the model would read wrongly: it does not fit the bundle's input contract
    (samsp/contract_check.py); the message names the bands and the fix."""


class BundleNotFoundError(BundleError):
    """A bundle name found in none of the model roots (the message lists where it looked)."""
