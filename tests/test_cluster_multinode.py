"""Multi-node Ray on one machine: the jobs survive losing a worker node in the middle of a run.

A real cluster on loopback: ``ray start --head`` plus three ``ray start --address=...`` worker
nodes, 1 CPU each, every one a ``--block`` process in its own session with its own
``--temp-dir`` and free ports (nothing clashes with other Ray instances on the machine). A node
is lost by SIGKILLing its whole session (``ray start``, raylet, agents, its Ray workers) -- never
``ray stop``. The head's GCS declares a silent node dead after ~3 s (``RAY_health_check_*``)
instead of Ray's default of tens of seconds. The cluster is shared by the module; each test
kills one worker node, and head + one worker (2 CPUs) is still enough for either job.

The jobs run as drivers with ``RAY_ADDRESS`` pointing at the head (a driver attaches to the
head node, which is never killed; Ray Train pins its controller to the driver's node):

* ``jobs/segment.py`` on four small georeferenced scenes (36 tiles), 2 model actors: once the
  first tiles are written, a worker node hosting a model actor is killed. The job must still
  exit 0 with every scene ``ok`` -- Ray Data retries the lost tasks, reconstructs lost blocks
  and restarts the actor -- and masks/probabilities equal to the model applied tile by tile
  with no failure (the reference that ``tests/test_segment.py`` checks an uninterrupted run
  against). Should Ray ever fail to recover in-run, a rerun of the same command must complete
  the output (resume); the test prints which of the two happened.
* ``jobs/train.py`` (``configs/train_tiny.yaml``, ``run.max_failures=2``, local storage): once
  Ray Train has registered the first checkpoint, a worker node hosting a training worker is
  killed. Ray Train restarts the worker group on the remaining nodes within the same launch,
  the workers resume from the latest checkpoint (the history shows it), the run completes and
  the bundle is exported.

~95 s for the module on 2 loaded cores (cluster start ~12 s, segment ~30 s, train ~50 s).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from jobs.runtime.ports import free_port

# vit_micro tiles (128 px, segment's default overlap tile // 8), the same tiny bundle and the same
# tile-by-tile reference as the single-node segment tests
from tests.processes import session_pids, stop_process
from tests.test_segment import OVERLAP, TILE, make_bundle
from tests.test_segment import reference as segment_reference

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")

# GCS: declare a node dead after ~3 missed 1 s health checks (default: 5 x 3 s + 10 s timeout)
FAST_NODE_DEATH = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "1000",
                   "RAY_health_check_timeout_ms": "1500", "RAY_health_check_failure_threshold": "3"}


# ----------------------------------------------------------------------------- processes



def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Node:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path, head: bool):
        self.name, self.proc, self.log, self.head = name, proc, log, head

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def hosts(self, needle: str) -> bool:
        """Whether a process of this node's session has ``needle`` in its command line (Ray
        workers show their actor/task in it, e.g. ``ray::MapWorker(MapBatches(Predictor))``)."""
        return any(needle in _cmdline(pid) for pid in session_pids(self.proc.pid))

    def kill(self) -> None:
        stop_process(self.proc)


class LoopbackCluster:
    """Head + worker nodes as ``ray start --block`` processes, each in its own session."""

    def __init__(self, env: dict):
        # short: Ray puts unix sockets under the temp dir (108-byte path limit)
        self.root = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))
        self.env = env
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[Node] = []
        self._gcs = None

    def _start(self, name: str, args: list[str], head: bool) -> Node:
        ports = ["--node-ip-address=127.0.0.1", f"--temp-dir={self.root / name}",
                 f"--dashboard-agent-listen-port={free_port()}",
                 f"--metrics-export-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats", "--block"]
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([RAY, "start", *args, *ports], env=self.env, cwd=self.root,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, proc, log, head)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 1) -> Node:
        return self._start("head", [
            "--head", f"--port={self.port}", f"--num-cpus={num_cpus}",
            f"--ray-client-server-port={free_port()}", "--dashboard-host=127.0.0.1",
            # the dashboard serves the State API that Ray Train's placement-group cleaner polls
            f"--dashboard-port={free_port()}", "--include-dashboard=true"],
            head=True)

    def add_worker(self, num_cpus: int = 1) -> Node:
        i = sum(1 for nd in self.nodes if not nd.head)
        return self._start(f"w{i}", [f"--address={self.address}", f"--num-cpus={num_cpus}"],
                           head=False)

    def registered(self) -> set[str] | None:
        """Names of our nodes the GCS counts as alive (None while the head is not up); a node
        is recognised by its raylet socket, which lies under the node's own --temp-dir."""
        from ray._raylet import GcsClient

        try:
            if self._gcs is None:
                self._gcs = GcsClient(address=self.address)
            infos = list(self._gcs.get_all_node_info(timeout=2).values())
        except Exception:  # noqa: BLE001 - not up yet
            self._gcs = None
            return None
        names = set()
        for info in infos:
            if info.state != 0:  # GcsNodeState.ALIVE
                continue
            for node in self.nodes:
                if info.raylet_socket_name.startswith(f"{self.root / node.name}/"):
                    names.add(node.name)
        return names

    def wait_nodes(self, timeout: float) -> None:
        """Until the GCS sees exactly the nodes whose processes live (a killed node is
        declared dead after the health-check timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            want = {nd.name for nd in self.nodes if nd.alive}
            seen = self.registered()
            if seen == want:
                return
            for node in self.nodes:
                if not node.alive and node.proc.returncode != -signal.SIGKILL:
                    pytest.fail(f"ray start ({node.name}) exited {node.proc.returncode}:\n"
                                + node.log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                pytest.fail(f"cluster: GCS sees {sorted(seen or [])} alive after {timeout:.0f}s, "
                            f"expected {sorted(want)}")
            time.sleep(0.25)

    def workers(self) -> list[Node]:
        return [nd for nd in self.nodes if not nd.head and nd.alive]

    def ensure_workers(self, n: int, timeout: float = 60) -> None:
        """At least ``n`` live worker nodes, all registered (starts the missing ones at once)."""
        while len(self.workers()) < n:
            self.add_worker()
        self.wait_nodes(timeout)

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, head last
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               OMP_NUM_THREADS="1", **FAST_NODE_DEATH)
    for k in ("RAY_ADDRESS", "SAMSP_SEGMENT_KILL_AFTER_TILES"):
        env.pop(k, None)
    c = LoopbackCluster(env)
    try:
        c.start_head()
        c.wait_nodes(timeout=60)
        # one worker node more than a test needs: each test kills one, and the survivors
        # (head + 1 worker) still hold the 2 CPUs that a restarted training worker group needs
        c.ensure_workers(3, timeout=60)
        yield c
    finally:
        c.stop()


def driver_env(cluster: LoopbackCluster, **extra) -> dict:
    env = dict(cluster.env, RAY_ADDRESS=cluster.address, PYTHONUNBUFFERED="1", **extra)
    for k in FAST_NODE_DEATH:
        env.pop(k, None)
    return env


class Driver:
    """A job driver subprocess in its own session; output to a file (read while it runs)."""

    def __init__(self, cmd: list[str], env: dict, log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, deadline: float) -> int:
        try:
            return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.proc.args[1]} still running at the deadline:\n"
                        + self.output()[-4000:])

    def close(self) -> None:
        stop_process(self.proc)


def kill_node_hosting(cluster: LoopbackCluster, needles: list[str], deadline: float):
    """Kill the first worker node (never the head) whose processes show one of ``needles``
    (in preference order); waits for such a node until ``deadline``. Returns (node, needle)."""
    while True:
        for needle in needles:
            for node in cluster.workers():
                if node.hosts(needle):
                    node.kill()
                    return node, needle
        if time.monotonic() > deadline:
            pytest.fail(f"no worker node hosts any of {needles}")
        time.sleep(0.1)


# ----------------------------------------------------------------------------- segment

def reference(uri: str, bundle: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask, prob) of the model applied tile by tile, cores stitched (uint8 scenes: identity
    radiometry) -- an uninterrupted run of the job gives exactly this."""
    return segment_reference(uri, bundle, stretch=False)


def read_band(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)


def tile_records(out: Path) -> int:
    """Record files written so far (one per model batch, after its chunks; batch 1 here)."""
    return sum(1 for _ in out.glob("*/tiles/*.json"))


SCENES = {"s0": (336, 336), "s1": (336, 448), "s2": (300, 336), "s3": (224, 336)}


def segment_cmd(inputs: list[str], out: Path, model: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "segment.py"), "--input", *inputs,
            "--output", str(out), "--model", model,
            # one tile per model call and one torch thread, like the reference (byte-equal floats)
            "--set", "predict.batch_size=1", "--set", "predict.torch_threads=1",
            "--set", "predict.num_actors=2",
            "--set", "output.quicklook_size=0"]


def n_tiles(h: int, w: int) -> int:
    return -(-h // (TILE - OVERLAP)) * -(-w // (TILE - OVERLAP))


@pytest.mark.timeout(300)
def test_segment_survives_losing_a_worker_node(cluster, tmp_path):
    from ingest.synthetic import make_geotiff
    from jobs.segmentation.index import read_manifest

    t_start = time.monotonic()
    cluster.ensure_workers(2)  # (3 when this test runs first)
    bundle = make_bundle(str(tmp_path / "bundle"))
    (tmp_path / "in").mkdir()
    inputs = [make_geotiff(str(tmp_path / "in" / f"{name}.tif"), h, w, seed=20 + i)
              for i, (name, (h, w)) in enumerate(SCENES.items())]
    total = sum(n_tiles(h, w) for h, w in SCENES.values())
    out = tmp_path / "out"
    cmd = segment_cmd(inputs, out, bundle)
    deadline = time.monotonic() + 100

    job = Driver(cmd, driver_env(cluster), tmp_path / "segment.log")
    try:
        # the first tiles are in: kill a worker node running a model actor (the head has 1 CPU,
        # so at least one of the 2 actors is on a worker node; else any Ray Data stage)
        while tile_records(out) < 1:
            assert job.running(), job.output()[-4000:]
            assert time.monotonic() < deadline, job.output()[-4000:]
            time.sleep(0.1)
        victim, hit = kill_node_hosting(cluster, ["MapBatches(Predictor)", "MapBatches("],
                                        deadline)
        killed_at = tile_records(out)
        rc = job.wait(deadline)
        text = job.output()
    finally:
        job.close()
    cluster.wait_nodes(timeout=30)  # the GCS declared the node dead
    how = "Ray retries"
    if rc != 0:  # Ray could not recover in-run: a rerun of the same command resumes the rest
        last = (text.strip().splitlines() or [""])[-1]
        how = f"rerun (first run exited {rc}: {last[:300]})"
        rerun = Driver(cmd, driver_env(cluster), tmp_path / "segment-rerun.log")
        try:
            rc = rerun.wait(time.monotonic() + 90)
            text = rerun.output()
        finally:
            rerun.close()
    print(f"\nsegment: killed node {victim.name} (running {hit}) after {killed_at}/{total} tiles; "
          f"completed by {how}; {time.monotonic() - t_start:.1f}s")
    assert killed_at < total, "the job finished before the node was killed"
    assert rc == 0, text[-5000:]
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["failed"] == 0 and summary["ok"] + summary["skipped"] == len(SCENES), summary

    rows = read_manifest(str(out))
    for name, path in zip(SCENES, inputs):
        row = rows[name]
        assert row["status"] in ("ok", "skipped") and row["tiles"] == n_tiles(*SCENES[name]), row
        if how == "Ray retries":  # every tile came back exactly once
            assert row["tiles_computed"] == row["tiles"], row
        ref_mask, ref_prob = reference(path, bundle)
        np.testing.assert_array_equal(read_band(out / name / "mask.tif"), ref_mask, err_msg=name)
        np.testing.assert_array_equal(read_band(out / name / "prob.tif"), ref_prob, err_msg=name)
        assert 0 < np.count_nonzero(ref_mask == 1) < ref_mask.size  # non-trivial masks


# ----------------------------------------------------------------------------- train

EPOCHS = 4


def registered_epoch(run_dir: Path) -> int | None:
    """Epoch of the latest checkpoint Ray Train has registered (its checkpoint-manager
    snapshot, written by the controller once every worker reported), or None."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snap["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):  # not there yet / being written
        return None


@pytest.mark.timeout(300)
def test_training_resumes_after_losing_a_worker_node(cluster, tmp_path):
    t_start = time.monotonic()
    cluster.ensure_workers(2)
    storage = tmp_path / "runs"
    run_dir = storage / "mn"
    cmd = [sys.executable, "jobs/train.py", "--config", "configs/train_tiny.yaml",
           "--summary", str(tmp_path / "summary.json")]
    for kv in (f"run.storage_path={storage}", "run.name=mn", "run.max_failures=2",
               f"train.epochs={EPOCHS}", "data.source.count=16", "train.samples_per_item=8",
               "scaling.torch_threads=1"):
        cmd += ["--set", kv]
    env = driver_env(cluster, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
                     RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S="1")
    deadline = time.monotonic() + 110
    job = Driver(cmd, env, tmp_path / "train.log")
    try:
        # kill once Ray Train has *registered* a checkpoint (a checkpoint folder appears
        # before its report completes; a worker lost before that restarts from scratch)
        while (done_at_kill := registered_epoch(run_dir)) is None:
            assert job.running(), job.output()[-4000:]
            assert time.monotonic() < deadline, job.output()[-4000:]
            time.sleep(0.1)
        victim, _ = kill_node_hosting(cluster, ["RayTrainWorker"], deadline)
        rc = job.wait(deadline)
        text = job.output()
    finally:
        job.close()
    summary = json.loads((tmp_path / "summary.json").read_text()) if rc == 0 else {}
    resumed = [h for h in summary.get("history", []) if h.get("resumed")]
    print(f"\ntrain: killed node {victim.name} (a training worker) after checkpoint "
          f"{done_at_kill}/{EPOCHS}; resumed from epoch(s) "
          f"{[h['resumed_from_epoch'] for h in resumed]}; rc {rc}; "
          f"{time.monotonic() - t_start:.1f}s")
    assert done_at_kill < EPOCHS, "training finished before the node was killed"
    assert rc == 0, text[-5000:]
    assert summary["complete"] and summary["epochs_done"] == EPOCHS, summary
    history = summary["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1)), history
    # The worker group was restarted within this one launch (FailureConfig) and the new workers
    # started from the latest registered checkpoint, not from scratch: no epoch ran twice in
    # the history, and the first epoch after the restart says where it resumed. (A load-induced
    # second restart would add a second "resumed" entry, equally consistent.)
    assert resumed and resumed[0]["resumed_from_epoch"] >= done_at_kill, history
    for h in resumed:
        assert h["resumed_from_epoch"] == h["epoch"] - 1, h
    assert history[0]["resumed"] == 0
    assert "resumed from" in text and "checkpoint_epoch_" in text
    bundle = Path(summary["bundle"])
    assert bundle == run_dir / "bundle"
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model_type"] == "vit_micro" and (bundle / "model.safetensors").is_file()
