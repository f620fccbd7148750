"""``data.source.positive_fraction``: the per-epoch window draw (jobs/training/window_sampling.py)
at its edges -- off, 0, 1, no positive window, every window positive, counts, determinism --
and through ``TrainDataset.draw``."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from jobs.training.config import TrainConfig
from jobs.training.data import TrainDataset
from jobs.training.window_sampling import (check_fraction, epoch_positions, fallback,
                                           sampling_facts)

FLAGS = [True, False, False, True, False, False, False]  # 2 positive windows of 7


def _share(positions, flags) -> float:
    return float(np.mean([flags[p] for p in positions]))


def test_off_cycles_the_windows_as_before():
    out = epoch_positions(FLAGS, 20, None, seed=3, epoch=5)
    assert out.tolist() == [i % len(FLAGS) for i in range(20)]
    assert sampling_facts(FLAGS, None) == {"positive_fraction": None, "train_windows": 7,
                                           "positive_windows": 2, "applied": False,
                                           "fallback": None}


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("n_samples", [1, 7, 10, 113])
def test_counts_follow_the_fraction_and_spread_evenly(fraction, n_samples):
    out = epoch_positions(FLAGS, n_samples, fraction, seed=0, epoch=1)
    assert out.shape == (n_samples,) and out.dtype == np.int64
    k = round(fraction * n_samples)
    assert sum(FLAGS[p] for p in out) == k  # exactly round(fraction * N) positive draws
    counts = Counter(out.tolist())
    for group, size in ((True, k), (False, n_samples - k)):
        members = [w for w, f in enumerate(FLAGS) if f == group]
        got = [counts.get(w, 0) for w in members]
        assert sum(got) == size and max(got) - min(got) <= 1  # even within the group


def test_fraction_zero_and_one_draw_one_group_only():
    assert all(not FLAGS[p] for p in epoch_positions(FLAGS, 50, 0.0, 0, 0))
    assert all(FLAGS[p] for p in epoch_positions(FLAGS, 50, 1.0, 0, 0))
    assert sampling_facts(FLAGS, 1.0)["applied"] and not sampling_facts(FLAGS, 1.0)["fallback"]


def test_no_positive_window_falls_back_and_says_so():
    flags = [False] * 5
    for fraction in (0.5, 1.0):
        assert epoch_positions(flags, 12, fraction, 0, 0).tolist() == [i % 5 for i in range(12)]
        facts = sampling_facts(flags, fraction)
        assert not facts["applied"] and "no training window (of 5) has a positive" in \
            facts["fallback"]
    # fraction 0 over no positive window is met as asked: no fallback to report
    assert fallback(flags, 0.0) is None
    assert epoch_positions(flags, 12, 0.0, 0, 0).tolist() == [i % 5 for i in range(12)]


def test_every_window_positive_falls_back_below_one():
    flags = [True] * 4
    assert epoch_positions(flags, 9, 0.3, 1, 2).tolist() == [i % 4 for i in range(9)]
    assert "every training window (4)" in sampling_facts(flags, 0.3)["fallback"]
    assert fallback(flags, 1.0) is None
    assert epoch_positions(flags, 9, 1.0, 1, 2).tolist() == [i % 4 for i in range(9)]


def test_deterministic_per_seed_and_epoch():
    a = epoch_positions(FLAGS, 70, 0.5, seed=4, epoch=2)
    assert np.array_equal(a, epoch_positions(list(FLAGS), 70, 0.5, seed=4, epoch=2))
    assert not np.array_equal(a, epoch_positions(FLAGS, 70, 0.5, seed=4, epoch=3))
    assert not np.array_equal(a, epoch_positions(FLAGS, 70, 0.5, seed=5, epoch=2))
    # across epochs the even spread rotates: over many epochs every positive window is drawn
    # about as often, though 5 draws over 2 windows never split evenly within one epoch
    tally = Counter()
    for epoch in range(40):
        tally.update(epoch_positions(FLAGS, 10, 0.5, 0, epoch).tolist())
    assert abs(tally[0] - tally[3]) <= 20 and tally[0] + tally[3] == 200


def test_edges_refused():
    with pytest.raises(ValueError, match="no windows"):
        epoch_positions([], 3, 0.5, 0, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_fraction(1.5)
    assert epoch_positions(FLAGS, 0, 0.5, 0, 0).shape == (0,)


def test_config_bounds_and_where_it_applies():
    raster = {"kind": "raster", "pairs": [{"image": "a.tif", "label": "a.geojson"}]}
    cfg = TrainConfig.model_validate({"data": {"source": dict(raster, positive_fraction=0.5)}})
    assert cfg.data.source.positive_fraction == 0.5
    assert TrainConfig.model_validate({"data": {"source": raster}}).data.source \
        .positive_fraction is None
    for bad in (-0.1, 1.2):
        with pytest.raises(ValueError, match="positive_fraction"):
            TrainConfig.model_validate({"data": {"source": dict(raster, positive_fraction=bad)}})
    with pytest.raises(ValueError, match="training source only"):
        TrainConfig.model_validate({"data": {"source": raster, "val_source": dict(
            raster, positive_fraction=0.5)}})
    with pytest.raises(ValueError, match="not supported in a mixture"):
        TrainConfig.model_validate({"data": {"source": {"kind": "mixture", "members": [
            {"name": "a", "source": dict(raster, positive_fraction=0.5)}]}}})


def test_train_dataset_draws_its_windows_so():
    items = [{"kind": "synthetic", "key": f"w{i}", "positive": f} for i, f in enumerate(FLAGS)]
    plan = {"train": items, "scenes": [], "groups": [{"name": "all", "weight": 1.0}],
            "positive_fraction": 1.0}
    ds = TrainDataset(plan, 32, {}, seed=2, samples_per_item=3, cache=False)
    assert len(ds) == 21
    drawn = [ds.draw(1, i)[0] for i in range(len(ds))]
    assert drawn == epoch_positions(FLAGS, 21, 1.0, 2, 1).tolist()
    assert all(FLAGS[p] for p in drawn)
    # the augmentation generator stays the sample's own [seed, epoch, i]
    assert ds.draw(1, 4)[1].integers(1 << 30) == np.random.default_rng([2, 1, 4]).integers(
        1 << 30)
    off = TrainDataset(dict(plan, positive_fraction=None), 32, {}, 2, 3, cache=False)
    assert [off.draw(1, i)[0] for i in range(21)] == [i % 7 for i in range(21)]
