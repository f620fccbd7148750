"""The local engine reads the model while the scenes are planned (jobs/inference/model_preload.py): the
same model as a load in the engine, handed over once, and a bundle that cannot load still fails
the job with the engine's own message."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import torch

from jobs.inference.model_preload import ModelPreload
from samsp import load_bundle
from tests.test_segment_reruns import _bundle


def test_preload_hands_over_the_bundle_once(tmp_path):
    uri = _bundle(tmp_path / "model", 3)
    preload = ModelPreload(uri)
    got = preload.bundle()
    want = load_bundle(uri)
    assert got is not None and got.meta == want.meta
    a, b = got.model.state_dict(), want.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert preload.bundle() is None  # handed to one predictor; no second reference kept


def test_preload_of_a_missing_bundle_gives_none(tmp_path):
    assert ModelPreload(str(tmp_path / "nothing")).bundle() is None


def test_job_with_unloadable_weights_fails_with_the_bundle_error(tmp_path):
    """bundle.json reads (the job starts) but model.safetensors does not match its sha256: the
    preload fails quietly and the engine's own load names the problem."""
    from ingest.synthetic import make_geotiff
    from tests.test_segment import job_env, run_job

    uri = Path(_bundle(tmp_path / "model", 0))
    weights = uri / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    scene = make_geotiff(str(tmp_path / "a.tif"), 64, 64, seed=1)
    for engine in ("local", "ray"):
        out = tmp_path / f"out-{engine}"
        res = run_job([scene], str(out), str(uri), job_env(SimpleNamespace(env=dict)),
                      extra=["--set", f"pipeline.engine={engine}"])
        assert res.rc == 2, res.out[-2000:]  # a model error on either engine
        ours = [ln for ln in res.out.splitlines() if re.match(r"\d{4}-\d\d-\d\d .* samsp\.", ln)]
        assert ours and not [ln for ln in ours if "\x1b[" in ln]  # no colour codes in our lines
        rows = [json.loads(line) for line in
                (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
        assert [(r["id"], r["status"]) for r in rows] == [("a", "failed")]  # failed, not done
        # the cause itself, not Ray's ActorDiedError around it
        assert rows[0]["error"].startswith("pipeline: BundleError: ") and \
            "does not match its sha256" in rows[0]["error"], rows[0]["error"]


def test_a_predictor_casts_a_bundle_passed_in_only_when_told_it_owns_it(tmp_path):
    """The local engine hands its preloaded Bundle over (own_bundle=True: weights cast once in
    bf16); any other caller's Bundle stays float32 and usable in fp32 afterwards."""
    from jobs.inference.predictor import Predictor

    bundle = load_bundle(_bundle(tmp_path / "model", 1))
    Predictor(bundle, device="cpu", precision="bf16")
    assert all(p.dtype == torch.float32 for p in bundle.model.parameters())
    Predictor(bundle, device="cpu", precision="fp32")  # still usable in fp32
    owned = load_bundle(str(tmp_path / "model"))
    Predictor(owned, device="cpu", precision="bf16", own_bundle=True)
    assert any(p.dtype == torch.bfloat16 for p in owned.model.parameters())
