"""Which training window each sample of an epoch comes from (``data.source.positive_fraction``):
pure functions over the windows' positive flags, deterministic in (seed, epoch) -- TorchGeo's
sampler idea, as plain functions.

Without a positive fraction an epoch cycles its windows (sample ``i`` -> window ``i % n``, as
it always has). With one, each window carries one bool made at planning -- does it hold at least
one positive label pixel (``jobs/training/raster_source.py``: ``positive_windows``) -- and an
epoch of ``N`` samples draws ``round(fraction * N)`` of them from the positive windows and the
rest from the others:

* within each group the windows are spread evenly: every window of the group is drawn
  ``k // len(group)`` or one more times (which ones get the one more: a seeded permutation of
  the group, new each epoch);
* which sample index gets which window is a seeded shuffle of the ``N`` draws;
* both from ``numpy.random.default_rng([STREAM, seed, epoch])`` -- a stream apart from the
  samples' own ``[seed, epoch, i]`` augmentation generators -- so the in-memory and streaming
  paths (``TrainDataset.draw``) give sample (seed, epoch, i) the same window.

The fraction cannot shape the draw when one group is empty: no positive window (fraction > 0)
or no window without one (fraction < 1). Then the epoch cycles its windows as without the
option, and :func:`sampling_facts` says so (``fallback``); the run logs it. ``fraction`` 0
draws only windows without positives; 1 only windows with them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# First entry of the generator's seed: apart from TrainDataset.draw's [seed, epoch, i].
STREAM = 0x77696E64  # "wind"


def check_fraction(fraction: Optional[float]) -> None:
    if fraction is not None and not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"positive_fraction must lie in [0, 1], got {fraction}")


def fallback(positive: Sequence[bool], fraction: Optional[float]) -> Optional[str]:
    """Why ``fraction`` cannot shape the draw over these windows (None: it can, or it is off)."""
    check_fraction(fraction)
    if fraction is None:
        return None
    n, p = len(positive), int(sum(bool(x) for x in positive))
    if p == 0 and fraction > 0:
        return (f"no training window (of {n}) has a positive label pixel: positive_fraction "
                f"{fraction:g} is not applied, the windows cycle as without it")
    if p == n and fraction < 1:
        return (f"every training window ({n}) has a positive label pixel: positive_fraction "
                f"{fraction:g} is not applied, the windows cycle as without it")
    return None


def epoch_positions(positive: Sequence[bool], n_samples: int, fraction: Optional[float],
                    seed: int, epoch: int) -> np.ndarray:
    """The window (position in ``positive``) of each sample ``0..n_samples-1`` of ``epoch``
    (int64[n_samples]); see the module docstring. Pure: same arguments, same array."""
    n = len(positive)
    if n == 0:
        raise ValueError("no windows to sample from")
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    cycle = np.arange(n_samples, dtype=np.int64) % n
    flags = np.asarray([bool(x) for x in positive], dtype=bool)
    pos, neg = np.flatnonzero(flags), np.flatnonzero(~flags)
    if fraction is None or fallback(positive, fraction) is not None or not len(pos) \
            or not len(neg):
        # off; or one group empty -- nothing to balance (fraction 0 over no positives and
        # 1 over all positives are met by the cycle itself)
        return cycle
    rng = np.random.default_rng([STREAM, int(seed), int(epoch)])
    k = int(round(float(fraction) * n_samples))
    draws = np.concatenate([np.resize(rng.permutation(pos), k),
                            np.resize(rng.permutation(neg), n_samples - k)]).astype(np.int64)
    return draws[rng.permutation(n_samples)]


def sampling_facts(positive: Sequence[bool], fraction: Optional[float]) -> dict:
    """The run summary's record of the window sampling (JSON-able)."""
    fb = fallback(positive, fraction)
    p = int(sum(bool(x) for x in positive))
    return {"positive_fraction": fraction, "train_windows": len(positive),
            "positive_windows": p,
            "applied": fraction is not None and fb is None and 0 < p < len(positive),
            "fallback": fb}


__all__ = ["STREAM", "check_fraction", "epoch_positions", "fallback", "sampling_facts"]
