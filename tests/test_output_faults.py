"""A segment run whose output stops taking writes (issue 32, "writes that fail"): an output that
cannot be written at all is refused before any work, and a write failing mid-run ends the run
with one line and exit 1 -- never a traceback, never a scene reported done that was not."""
from __future__ import annotations

import errno
import json
from types import SimpleNamespace

import pytest

from ingest import versioned
from ingest.synthetic import make_geotiff
from jobs.segmentation.index import read_manifest
from tests.test_segment import job_env, make_bundle, run_job


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(str(tmp_path_factory.mktemp("bundle") / "micro"))


def test_an_output_that_cannot_be_written_is_refused_before_any_work(bundle, tmp_path):
    scene = make_geotiff(str(tmp_path / "a.tif"), 64, 64, seed=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = run_job([scene], str(blocker / "out"), bundle, job_env(SimpleNamespace(env=dict)),
                  extra=["--set", "pipeline.engine=local"])
    assert res.rc == 2, res.out[-2000:]
    errors = [ln for ln in res.out.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "is not writable" in errors[0], res.out[-2000:]
    assert "Traceback" not in res.out


def test_a_write_failing_mid_run_ends_with_one_line(bundle, tmp_path, monkeypatch, capsys):
    from jobs import segment

    scene = make_geotiff(str(tmp_path / "a.tif"), 64, 64, seed=1)
    out = tmp_path / "out"
    real_update = versioned.update

    def full_disk(uri, change):
        if str(uri).endswith("manifest.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device", str(uri))
        return real_update(uri, change)

    monkeypatch.setattr(versioned, "update", full_disk)
    rc = segment.main(["--input", scene, "--output", str(out), "--model", bundle,
                       "--set", "pipeline.engine=local", "--set", "ray.num_cpus=2"])
    assert rc == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "No space left on device" in summary["error"] and "\n" not in summary["error"]
    # the scene's own status was written before the index failed: it is done, not "running"
    status = json.loads((out / "a" / "status.json").read_text())
    assert status["status"] == "ok"
    monkeypatch.setattr(versioned, "update", real_update)
    rerun = segment.main(["--input", scene, "--output", str(out), "--model", bundle,
                          "--set", "pipeline.engine=local", "--set", "ray.num_cpus=2"])
    assert rerun == 0 and read_manifest(str(out))["a"]["status"] == "skipped"


def test_a_dead_writers_temp_files_are_removed(tmp_path):
    from ingest import storage

    (tmp_path / ".quicklook.png.tmp-1a2b3c4d").write_bytes(b"half")
    (tmp_path / ".mask.tif.tmp-deadbeef").write_bytes(b"half")
    for keep in ("quicklook.png", ".hidden", "x.tmp-1a2b3c4d", ".a.tmp-short"):
        (tmp_path / keep).write_bytes(b"keep")
    assert sorted(storage.remove_stale_temp_files(str(tmp_path))) == [
        ".mask.tif.tmp-deadbeef", ".quicklook.png.tmp-1a2b3c4d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".a.tmp-short", ".hidden", "quicklook.png", "x.tmp-1a2b3c4d"]
    assert storage.remove_stale_temp_files(str(tmp_path / "missing")) == []
