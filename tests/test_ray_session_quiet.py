"""The embedded Ray cluster starts closed (token auth) but quiet: no token-auth warning and no
~/.ray/auth_token left in the user's home (issue 33); a user's own mode still wins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = ("import logging, ray; logging.basicConfig(level=logging.INFO);"
          "from jobs.runtime.ray_session import init_ray, stop_ray;"
          "print(init_ray(num_cpus=1, include_dashboard=False));"
          "print('mode', ray.get(ray.remote(lambda: __import__('os').environ.get('RAY_AUTH_MODE'))"
          ".remote())); stop_ray(); print('up after stop', ray.is_initialized())")


@pytest.mark.slow
def test_embedded_ray_is_token_protected_without_noise_or_files(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "embedded" in run.stdout and "mode token" in run.stdout  # workers run in token mode
    assert "up after stop False" in run.stdout  # the Ray a job started is stopped by it
    assert "Token authentication" not in run.stderr + run.stdout
    assert not (tmp_path / ".ray" / "auth_token").exists()


def test_a_users_own_auth_mode_is_kept(monkeypatch):
    from jobs.runtime.ray_session import ephemeral_token

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    ephemeral_token()
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN" not in os.environ


def test_rays_deprecation_of_our_remote_args_is_not_shown_but_others_are():
    import warnings

    from jobs.runtime.logs import quiet_third_party

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        msg = "`ray_remote_args` is deprecated and will be removed in Ray 2.64."
        warnings.warn_explicit(msg, DeprecationWarning, "engines.py", 1,
                               module="jobs.segmentation.engines")
        warnings.warn_explicit(msg, DeprecationWarning, "x.py", 1, module="someone.else")
        warnings.warn_explicit("another deprecation", DeprecationWarning, "engines.py", 2,
                               module="jobs.segmentation.engines")
    assert [(str(w.message)[:20], w.filename) for w in seen] == [
        (msg[:20], "x.py"), ("another deprecation", "engines.py")]


def test_our_filter_comes_before_the_one_ray_installs_on_import():
    """Ray puts ("module", RayDeprecationWarning) at the front of the filters when
    ray.util.annotations is first imported, so a filter set before that import loses to it
    (the demo printed the warning). A fresh interpreter, as a job starts: quiet_third_party,
    then Ray, then Ray Data's deprecation of our map_batches(**ray_remote_args) -- not shown."""
    import subprocess
    import sys

    code = (
        "import warnings\n"
        "from jobs.runtime.logs import quiet_third_party\n"
        "quiet_third_party()\n"
        "import ray\n"
        "from ray.util.annotations import RayDeprecationWarning\n"
        "warnings.warn_explicit('`ray_remote_args` is deprecated and will be removed', "
        "RayDeprecationWarning, 'engines.py', 91, module='jobs.segmentation.engines')\n"
        "warnings.warn_explicit('something else is deprecated', RayDeprecationWarning, "
        "'engines.py', 92, module='jobs.segmentation.engines')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ray_remote_args" not in proc.stderr
    assert "something else is deprecated" in proc.stderr


def test_reading_a_photos_orientation_raises_no_georeferencing_warning(tmp_path):
    import warnings

    import numpy as np
    from PIL import Image

    from ingest.orientation import read_orientation

    path = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_orientation(str(path)) == 1


def test_a_users_token_file_is_used_in_token_mode(monkeypatch, tmp_path):
    from jobs.runtime.ray_session import ephemeral_token

    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("mine")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    from jobs.runtime import ray_session  # this test process's Ray keeps the suite's auth mode

    monkeypatch.setattr(ray_session, "refresh_ray_config", lambda: None)
    ephemeral_token()
    assert os.environ["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in os.environ


@pytest.mark.ray
def test_stop_ray_leaves_a_callers_ray_running(ray_local, monkeypatch):
    """A job run inside a notebook or a test session (Ray already up) stops nothing of theirs,
    nor does a job whose own Ray was shut down by other means before the caller started one."""
    import ray

    from jobs.runtime import ray_session

    monkeypatch.setattr(ray_session, "_started_job", None)
    assert ray_session.init_ray(num_cpus=1, include_dashboard=False) == "existing"
    ray_session.stop_ray()
    assert ray.is_initialized()
    monkeypatch.setattr(ray_session, "_started_job", "an-earlier-session-of-ours")
    ray_session.stop_ray()
    assert ray.is_initialized()
