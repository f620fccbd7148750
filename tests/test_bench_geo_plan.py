"""bench/geo_plan.py on a tiny archive: the data it writes lists and plans, and its results
carry the headline keys (issue 29's ``geo_train_plan_*``)."""
from __future__ import annotations

import json

from bench import geo_plan

KEYS = ("geo_train_plan_s_per_scene_ratio", "geo_train_plan_wall_s_per_scene_ratio",
        "geo_train_plan_rss_growth_pct", "geo_train_plan_s_per_scene", "geo_train_plan_items")


def test_tiny_run_writes_the_headline_keys(tmp_path):
    out_json, out_md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    assert geo_plan.main(["--sizes", "3", "6", "--side", "64", "--tile", "32",
                          "--workdir", str(tmp_path / "work"), "--json", str(out_json),
                          "--md", str(out_md)]) == 0
    res = json.loads(out_json.read_text())
    for key in KEYS:
        assert isinstance(res[key], (int, float)), key
    runs = res["geo_train_plan_runs"]
    assert sorted(runs) == ["3", "6"]
    for n, run in runs.items():
        assert run["scenes"] == int(n)  # every listed scene has labels: none left out
        assert run["split"]["kind"] == "spatial" and run["sampling_applied"] is not None
        assert run["plan_cpu_s"] > 0 and run["peak_rss_mb"] > 0
    assert res["geo_train_plan_items"] == runs["6"]["train_items"] + runs["6"]["val_items"]
    assert "geo_train_plan_s_per_scene_ratio" in out_md.read_text()
    # the data are kept for the next run with the same parameters
    data = geo_plan.make_data(tmp_path / "work", 6 + geo_plan.WARM, 64, 32)
    assert len(data["scenes"]) == 8
