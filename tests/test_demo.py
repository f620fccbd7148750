"""`make demo` end to end at a small size: S3 server, synthetic scene, segment job, Dice."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_finds_the_cracks(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    proc = subprocess.run([sys.executable, "-m", "jobs.demo", "--size", "768", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dice = float(re.search(r"Dice vs ground truth: ([0-9.]+)", proc.stdout).group(1))
    # The committed crack model finds the procedural cracks (0.75 on the 4096 demo scene).
    assert dice > 0.5
    scene = tmp_path / "results" / "pavement_768"
    for name in ("mask.tif", "prob.tif", "quicklook.png", "stats.json"):
        assert (scene / name).exists(), name
    assert (tmp_path / "results" / "manifest.jsonl").exists()
