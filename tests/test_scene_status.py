"""Scene status objects, leases and the manifest index (jobs.segmentation.status, jobs.manifest,
ingest.versioned): compare-and-swap writes on local files and a real SeaweedFS, lease
decisions, and an index rebuilt from the status objects that keeps older rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from ingest import storage, versioned
from jobs.segmentation.index import encode_index, manifest_uri, read_manifest, rebuild
from jobs.segmentation.status import StatusBoard, live_lease_owner, read_statuses, status_uri

REPO = Path(__file__).resolve().parents[1]
REC = {"threshold": 0.5}


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    server = request.getfixturevalue("s3_env")
    return f"s3://{server.bucket}/status-{uuid.uuid4().hex[:8]}"


def test_compare_and_swap(output):
    uri = f"{output}/x/status.json"
    assert versioned.read_versioned(uri) == (None, None)
    assert versioned.write_if_version(uri, b"1", None)
    assert not versioned.write_if_version(uri, b"2", None)  # exists now
    data, v1 = versioned.read_versioned(uri)
    assert data == b"1"
    assert versioned.write_if_version(uri, b"3", v1)
    assert not versioned.write_if_version(uri, b"4", v1)  # stale version refused
    assert versioned.read_versioned(uri)[0] == b"3"


def test_concurrent_updates_lose_nothing(output):
    """16 threads each add their own key to one object: every key is there at the end."""
    uri = f"{output}/counter.json"

    def add(name):
        versioned.update(uri, lambda data: (json.dumps(
            sorted({*json.loads(data or b"[]"), name})).encode(), None))

    threads = [threading.Thread(target=add, args=(f"k{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads(versioned.read_versioned(uri)[0]) == sorted(f"k{i}" for i in range(16))


def test_leases_skip_take_over_and_finish(output):
    a = StatusBoard(output, "run-a", lease_timeout_s=1.0)
    b = StatusBoard(output, "run-b", lease_timeout_s=1.0)
    _, got = a.claim("s", "/in/s.tif", REC, force=False)
    assert got.kind == "claimed" and a.held == {"s"}
    # a live lease: the other run leaves the scene alone
    _, other = b.claim("s", "/in/s.tif", REC, force=False)
    assert other.kind == "running" and other.owner == "run-a"
    # heartbeats keep it alive past the timeout
    for _ in range(3):
        time.sleep(0.5)
        a.heartbeat_once()
    assert b.claim("s", "/in/s.tif", REC, force=False)[1].kind == "running"
    # no heartbeat for longer than the timeout (run a died): taken over
    time.sleep(1.2)
    _, taken = b.claim("s", "/in/s.tif", REC, force=False)
    assert taken.kind == "claimed" and taken.owner == "run-a"
    a.heartbeat_once()  # run a notices and stops claiming the scene
    assert a.lost == {"s": "run-b"} and not a.held
    assert not a.finish("s", {"id": "s", "input": "/in/s.tif", "status": "ok", "record": REC})
    assert b.finish("s", {"id": "s", "input": "/in/s.tif", "status": "ok", "record": REC,
                          "tiles": 4})
    row = read_statuses(output, ["s"])["s"]
    assert row["status"] == "ok" and row["run_id"] == "run-b" and row["tiles"] == 4
    # done with the same record: skipped; another record or --force: claimed again
    c = StatusBoard(output, "run-c", lease_timeout_s=1.0)
    _, skip = c.claim("s", "/in/s.tif", REC, force=False)
    assert skip.kind == "skipped" and skip.row["done_run_id"] == "run-b"
    assert c.claim("s", "/in/s.tif", {"threshold": 0.9}, force=False)[1].kind == "claimed"
    # a status naming another input: the id is disambiguated
    sid, d = StatusBoard(output, "run-d", 1.0).claim("s", "/other/s.tif", REC, force=False)
    assert sid.startswith("s-") and d.kind == "claimed"


def test_live_lease_owner():
    row = {"status": "running", "run_id": "x", "heartbeat": 100.0}
    assert live_lease_owner(row, "me", 10, now=105) == "x"
    assert live_lease_owner(row, "me", 10, now=111) is None  # stale
    assert live_lease_owner(row, "x", 10, now=105) is None  # mine
    assert live_lease_owner(dict(row, status="ok"), "me", 10, now=105) is None


def test_rebuild_from_status_objects_keeps_older_rows(output):
    storage.write_bytes(manifest_uri(output), encode_index({
        "legacy": {"id": "legacy", "status": "ok", "input": "/old.tif"},
        "s": {"id": "s", "status": "failed", "input": "/in/s.tif"}}))
    board = StatusBoard(output, "run-a", 60)
    for sid in ("s", "t"):
        board.claim(sid, f"/in/{sid}.tif", REC, force=False)
    board.finish("s", {"id": "s", "input": "/in/s.tif", "status": "ok", "record": REC})
    storage.write_bytes(f"{output}/u/status.json", b'{"id": "u", "sta')  # torn: no row
    rows = rebuild(output)
    assert set(rows) == {"legacy", "s", "t"} and rows == read_manifest(output)
    assert rows["s"]["status"] == "ok" and rows["t"]["status"] == "running"
    assert rows["legacy"] == {"id": "legacy", "status": "ok", "input": "/old.tif"}
    assert storage.read_bytes(status_uri(output, "t"))  # the status objects stay the state


def test_rebuild_command(tmp_path):
    out = str(tmp_path / "out")
    StatusBoard(out, "r", 60).claim("s", "/in/s.tif", REC, force=False)
    res = subprocess.run([sys.executable, "-m", "jobs.manifest", "--output", out, "--rebuild"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] == {"running": 1}
    assert set(read_manifest(out)) == {"s"}
    assert sorted(p.name for p in Path(out).iterdir()) == ["manifest.jsonl", "s"]  # no lock files


def test_a_lease_whose_process_is_gone_is_taken_over_at_once(output):
    a = StatusBoard(output, "run-a", lease_timeout_s=600.0)
    _, got = a.claim("s", "/in/s.tif", REC, force=False)
    assert got.kind == "claimed" and a.held == {"s"}
    lease = read_statuses(output, ["s"])["s"]
    assert lease["holder"]["pid"] == os.getpid() and lease["holder"]["pid_start"]
    b = StatusBoard(output, "run-b", lease_timeout_s=600.0)
    # the holder (this very process) is alive: a fresh heartbeat keeps the lease
    assert b.claim("s", "/in/s.tif", REC, force=False)[1].kind == "running"
    # the same lease held by a process that has exited: taken over without waiting
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = dict(lease, holder=dict(lease["holder"], pid=int(gone.stdout)))
    storage.write_bytes(status_uri(output, "s"), json.dumps(dead).encode())
    _, taken = b.claim("s", "/in/s.tif", REC, force=False)
    assert taken.kind == "claimed" and taken.owner == "run-a"
    assert taken.reason == "its process is gone"
    assert b.interval == 200.0 and StatusBoard(output, "c", 45.0, heartbeat_s=10).interval == 10
