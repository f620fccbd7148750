"""Each job's --help is its own (examples, config reference, exit codes); a mistyped --set key
names the closest valid field."""
from __future__ import annotations

import subprocess
import sys

import pytest

from jobs.runtime.config import ConfigError, closest_field, load_config
from jobs.segmentation.config import SegmentConfig
from jobs.training.config import TrainConfig
from tests.conftest import REPO


@pytest.mark.parametrize("job,own,foreign", [
    ("segment.py", "predict.batch_size=16", "train."),
    ("sweep.py", "report.top_n=48", "train."),
    ("train.py", "train.epochs=3", "predict."),
])
def test_help_gives_the_jobs_own_examples_reference_and_exit_codes(job, own, foreign):
    text = subprocess.run([sys.executable, str(REPO / "jobs" / job), "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=True).stdout
    flat = " ".join(text.split())
    assert f"e.g. {own}" in flat
    assert foreign not in flat.split("examples:")[0]  # no other job's fields in the options
    assert "config reference:" in flat and "exit codes:" in flat
    for code in ("0", "1", "2"):
        assert f" {code} " in flat.split("exit codes:")[1]


@pytest.mark.parametrize("key,suggestion", [
    ("predict.batch_sise", "predict.batch_size"),
    ("predict.batchsize", "predict.batch_size"),
    ("batch_size", "predict.batch_size"),  # the right name in the wrong section
    ("pipline.engine", "pipeline"),
    ("output.cog_thread", "output.cog_threads"),
])
def test_a_mistyped_key_suggests_the_closest_field(key, suggestion):
    with pytest.raises(ConfigError, match=rf"did you mean {suggestion}\?"):
        load_config(SegmentConfig, None, [f"{key}=1"])


def test_suggestions_come_from_the_jobs_own_model():
    assert closest_field(TrainConfig, "train.epoch") == "train.epochs"
    assert closest_field(SegmentConfig, "zzz.qqq") is None
    with pytest.raises(ConfigError) as err:  # a wrong value is not a wrong key: no suggestion
        load_config(SegmentConfig, None, ["predict.batch_size=0"])
    assert "did you mean" not in str(err.value)


def test_negative_numbers_are_values_as_users_type_them():
    from jobs.runtime.config import attach_negative_values

    assert attach_negative_values(["--bbox", "-80,20,-70,30", "--output", "o"]) == [
        "--bbox=-80,20,-70,30", "--output", "o"]
    assert attach_negative_values(["--bbox", "-80.5,-20,70,-3e1"]) == ["--bbox=-80.5,-20,70,-3e1"]
    # options stay options; values after "=" and positionals are left alone
    for argv in (["--force", "--output", "o"], ["--bbox=-1,2,3,4"], ["-v", "-1"]):
        assert attach_negative_values(argv) == argv
