"""Scene ids from inputs and from what earlier runs wrote (jobs/inputs/scene_ids.py): safe path
segments, the same id for an object signed again, never a credential in a folder name."""
from __future__ import annotations

from ingest import storage
from jobs.inputs.scene_ids import assign_scene_ids, is_safe_id, safe_stem
from jobs.segmentation.index import encode_index, manifest_uri, read_manifest

SIGNED = ("https://b.s3.amazonaws.com/x/scene.tif?X-Amz-Credential=AKIAEXAMPLE%2F20261206"
          "&X-Amz-Date=20261206T000000Z&X-Amz-Signature=abc123")


def test_a_resigned_url_is_the_same_scene_and_its_id_holds_no_credential():
    sid = assign_scene_ids([SIGNED], {})[SIGNED]
    assert sid == "scene" and safe_stem(SIGNED) == "scene"
    again = SIGNED.replace("abc123", "def456").replace("20261206T", "20261207T")
    previous = {sid: {"id": sid, "input": "https://b.s3.amazonaws.com/x/scene.tif"}}
    assert assign_scene_ids([again], previous)[again] == sid


def test_unsafe_ids_from_earlier_runs_are_ignored(tmp_path):
    for bad in ("../x", "..", ".", "a/b", "", ".hidden", "x" * 121, None, 3):
        assert not is_safe_id(bad)
    assert is_safe_id("s2_2026-05-01.T1") and is_safe_id("scene-1a2b3c4d")
    rows = {"../x": {"id": "../x", "input": "/data/x.tif"}, "ok": {"id": "ok", "input": "/data/ok.tif"}}
    # an index another writer tampered with: its unsafe row is never read back as an id
    storage.write_bytes(manifest_uri(str(tmp_path)), encode_index(rows))
    assert set(read_manifest(str(tmp_path))) == {"ok"}
    ids = assign_scene_ids(["/data/x.tif", "/data/ok.tif"], rows)
    assert ids == {"/data/x.tif": "x", "/data/ok.tif": "ok"}
