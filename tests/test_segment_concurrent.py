"""Concurrent jobs/segment.py runs over one output (local folder and s3://): no row lost, no
scene computed twice at once, and a run killed mid-scene finished by a later run once its lease
timed out, with the output of an uninterrupted run.

Tiny scenes, the random vit_micro bundle of test_segment, the local engine (one lane, one tile
per model call, one torch thread: equal settings give equal bytes).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.processes import kill_session
from tests.test_segment import REPO, job_env, make_bundle, put_tree, read_raster

pytestmark = [pytest.mark.slow]

LOCAL = ["--set", "pipeline.engine=local", "--set", "predict.num_actors=1",
         "--set", "predict.batch_size=1", "--set", "predict.torch_threads=1",
         "--set", "output.stac=false"]


def start_job(inputs, output, model, env, *extra):
    cmd = [sys.executable, str(REPO / "jobs" / "segment.py"), "--input", *inputs,
           "--output", output, "--model", model, *LOCAL, *extra]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish_job(proc, timeout=120):
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_session(proc.pid)
    summary = {}
    if proc.returncode in (0, 1, 3):
        summary = json.loads(out.strip().splitlines()[-1])
    return SimpleNamespace(rc=proc.returncode, out=out, summary=summary)


def computed(out: str) -> dict[str, int]:
    """Tiles each scene had computed in a run, from its 'scene X: ok' lines."""
    return {m[1]: int(m[2]) for m in re.finditer(r"scene (\S+): ok +\d+ tiles \((\d+) computed\)", out)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ingest.synthetic import make_geotiff

    tmp = tmp_path_factory.mktemp("concurrent")
    scenes = [make_geotiff(str(tmp / "in" / f"s{i}.tif"), 200, 250, seed=20 + i) for i in range(4)]
    return SimpleNamespace(tmp=tmp, scenes=scenes, model=make_bundle(str(tmp / "model")),
                           env=job_env(SimpleNamespace(env=dict)))


def _output(kind, setup, request):
    if kind == "local":
        return str(setup.tmp / f"out-{uuid.uuid4().hex[:6]}"), setup.env, setup.scenes, setup.model
    server = request.getfixturevalue("s3_server")
    root = f"s3://{server.bucket}/conc-{uuid.uuid4().hex[:8]}"
    env = job_env(server)
    import os

    old = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        uris = []
        for p in setup.scenes:
            from ingest import storage

            uris.append(f"{root}/in/{Path(p).name}")
            storage.put_file(p, uris[-1])
        put_tree(Path(setup.model), f"{root}/model")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    return f"{root}/out", env, uris, f"{root}/model"


def _rows(output, env):
    import os

    from jobs.segmentation.index import read_manifest
    from jobs.segmentation.status import read_statuses

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        index = read_manifest(output)
        return index, read_statuses(output, sorted(index))
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_concurrent_runs_different_scenes_keep_every_row(kind, setup, request):
    output, env, scenes, model = _output(kind, setup, request)
    a = start_job(scenes[:2], output, model, env)
    b = start_job(scenes[2:], output, model, env)
    ra, rb = finish_job(a), finish_job(b)
    assert ra.rc == 0 and rb.rc == 0, (ra.out[-2000:], rb.out[-2000:])
    assert ra.summary["ok"] == rb.summary["ok"] == 2
    index, statuses = _rows(output, env)
    assert set(index) == {"s0", "s1", "s2", "s3"}, index.keys()
    for sid, row in index.items():
        assert row["status"] == "ok" and row == statuses[sid], row
    assert {index[s]["run_id"] for s in ("s0", "s1")} == {ra.summary["run_id"]}
    assert {index[s]["run_id"] for s in ("s2", "s3")} == {rb.summary["run_id"]}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_concurrent_runs_same_scenes_compute_each_once(kind, setup, request):
    output, env, scenes, model = _output(kind, setup, request)
    runs = [start_job(scenes[:2], output, model, env) for _ in range(2)]
    ra, rb = (finish_job(p) for p in runs)
    # 3: a run that left a scene to the other (still running it) says so in its exit code
    assert {ra.rc, rb.rc} <= {0, 3}, (ra.out[-2000:], rb.out[-2000:])
    for r in (ra, rb):
        assert (r.rc == 3) == (r.summary["running_elsewhere"] > 0)
    ca, cb = computed(ra.out), computed(rb.out)
    assert not set(ca) & set(cb), (ca, cb)  # never computed by both
    assert set(ca) | set(cb) == {"s0", "s1"}
    index, _ = _rows(output, env)
    for sid in ("s0", "s1"):
        assert index[sid]["status"] == "ok" and index[sid]["tiles_computed"] == 6
        other, run = (rb, ra) if sid in ca else (ra, rb)
        owner = run.summary["run_id"]
        assert re.search(rf"scene {sid}: (skipped \(done in run {owner}\)|left to run {owner} "
                         rf"\(running there\))", other.out), other.out[-2000:]
    assert ra.summary["ok"] + rb.summary["ok"] == 2
    assert sum(r.summary[k] for r in (ra, rb) for k in ("skipped", "running_elsewhere")) == 2


def test_killed_run_is_finished_by_an_immediate_rerun(setup):
    """A driver killed mid-scene (preempted node, OOM) then the same command at once, as a
    CronJob retry would: the lease names a process that is gone, so the rerun takes the scene
    over right away, computes only the missing tiles and exits 0 with the mask an uninterrupted
    run makes -- it never reports a scene it did not finish as done."""
    out, ref = str(setup.tmp / "killed"), str(setup.tmp / "uninterrupted")
    scene, env = setup.scenes[:1], setup.env
    killed = finish_job(start_job(scene, out, setup.model,
                                  dict(env, SAMSP_SEGMENT_KILL_AFTER_TILES="3")))
    assert killed.rc == -signal.SIGKILL, killed.out[-2000:]
    status = json.loads(Path(out, "s0", "status.json").read_text())
    assert status["status"] == "running" and status["holder"]["pid"] > 0
    stale = Path(out, "s0", ".quicklook.png.tmp-0badf00d")  # what a killed writer leaves
    stale.write_bytes(b"half a png")
    late = finish_job(start_job(scene, out, setup.model, env))  # default lease timeout (45 s)
    assert late.rc == 0 and late.summary["ok"] == 1, late.out[-2000:]
    assert late.summary["running_elsewhere"] == 0 and late.summary["skipped"] == 0
    assert f"taking over the lease of run {status['run_id']} (its process is gone)" in late.out
    assert 0 < late.summary["tiles_computed"] < 6  # resumed from the killed run's tiles
    assert not stale.exists()
    full = finish_job(start_job(scene, ref, setup.model, env))
    assert full.rc == 0, full.out[-2000:]
    for name in ("mask.tif", "prob.tif"):
        a, crs_a, tr_a, _, _ = read_raster(f"{out}/s0/{name}")
        b, crs_b, tr_b, _, _ = read_raster(f"{ref}/s0/{name}")
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert crs_a == crs_b and tr_a == tr_b
    mine, theirs = (json.loads(Path(d, "s0", "stats.json").read_text()) for d in (out, ref))
    for d in (mine, theirs):
        for k in ("seconds", "tiles_computed"):
            d.pop(k)
    assert mine == theirs
    row = json.loads(Path(out, "s0", "status.json").read_text())
    assert row["status"] == "ok" and row["run_id"] == late.summary["run_id"]
