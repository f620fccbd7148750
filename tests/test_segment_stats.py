"""Running per-scene totals: equal to the all-records computation (fsum, full sort) in any
arrival order -- a resumed run folds its records in another order than an uninterrupted one."""
import math
import random

import pytest

from jobs.segmentation.stats import ExactSum, TileTotals, uncertain_row


def _records(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    recs = {}
    for i in range(n):
        key = (i // 7, i % 7)
        # few distinct disagreements -> many ties, broken by margin then tile
        recs[key] = {"tile": list(key), "foreground_px": rng.randrange(0, 5000),
                     "valid_px": rng.randrange(5000, 50176),
                     "disagreement": rng.choice([0.0, 0.125, 0.5, 1 / 3, 1e-17, 0.9999999]),
                     "margin": rng.choice([0.2, 0.7, 1e16, 0.1 + 1e-7, 0.1])}
    return recs


def _reference(recs: dict, top_n: int) -> dict:
    # the review queue's documented order, spelled out here rather than taken from the module
    rows = sorted((uncertain_row(k, r) for k, r in recs.items()),
                  key=lambda x: (-x["disagreement"], x["margin"], x["tile"]))
    n = len(recs)
    return {"fg": sum(r["foreground_px"] for r in recs.values()),
            "valid": sum(r["valid_px"] for r in recs.values()),
            "dis": math.fsum(r["disagreement"] for r in recs.values()) / n if n else 0.0,
            "margin": math.fsum(r["margin"] for r in recs.values()) / n if n else 1.0,
            "top": rows[:top_n]}


@pytest.mark.parametrize("n,top_n", [(0, 5), (1, 5), (3, 5), (50, 5), (200, 0), (200, 1), (64, 64)])
def test_totals_equal_reference_in_any_order(n, top_n):
    recs = _records(n, seed=n)
    ref = _reference(recs, top_n)
    for order_seed in range(4):
        items = list(recs.items())
        random.Random(order_seed).shuffle(items)
        t = TileTotals(top_n)
        for key, rec in items:
            t.add(rec["tile"], rec)
        assert t.tiles == n
        assert (t.foreground_px, t.valid_px) == (ref["fg"], ref["valid"])
        assert t.mean_disagreement == ref["dis"]  # exact: not approx
        assert t.mean_margin == ref["margin"]
        assert t.uncertain_tiles() == ref["top"]


def test_exact_sum_is_fsum_where_naive_summation_is_not():
    values = [1e16, 1.0, -1e16, 1e-3] * 100 + [0.1] * 10
    s = ExactSum()
    for v in values:
        s.add(v)
    assert s.value == math.fsum(values)
    assert sum(values) != math.fsum(values)
