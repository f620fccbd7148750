"""The ``samsp`` console script (``[project.scripts]``, jobs/runtime/cli.py): one command whose
subcommands run the jobs' own ``main``, as ``python jobs/<job>.py`` does (issue 33)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from jobs.runtime import cli

REPO = Path(__file__).resolve().parents[1]


def samsp_script() -> str:
    """The installed script of this interpreter's environment (not some other ``samsp``)."""
    path = shutil.which("samsp", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip("no `samsp` script beside this interpreter: install the package "
                    "(`make venv`, or `pip install -e . --no-deps` in an existing venv)")
    return path


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    res = run(samsp_script(), "--help")
    assert res.returncode == 0, res.stderr
    listed = [line.split()[0] for line in res.stdout.split("commands:\n")[1].splitlines()]
    assert listed == ["segment", "train", "sweep", "evaluate", "review", "demo", "models"]


def test_segment_help_is_the_jobs_own():
    """``samsp segment --help`` is byte for byte ``python jobs/segment.py --help``: the same
    parser, not a copy of it (run from / : the script needs no checkout on the path)."""
    res = run(samsp_script(), "segment", "--help")
    direct = run(sys.executable, str(REPO / "jobs" / "segment.py"), "--help")
    assert res.returncode == direct.returncode == 0, res.stderr + direct.stderr
    assert "--output" in res.stdout and "--stac" in res.stdout
    assert res.stdout == direct.stdout


def test_evaluate_help_names_the_subcommand():
    res = run(samsp_script(), "evaluate", "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: samsp evaluate ") and "--layout" in res.stdout


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert cli.main(["segmnet", "--input", "x"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert "unknown command 'segmnet'" in err and "segment" in err


def test_no_command_prints_usage_and_exit_2(capsys):
    assert cli.main([]) == 2
    assert "commands:" in capsys.readouterr().err


def test_missing_job_module_is_one_line_and_exit_2(capsys, monkeypatch):
    """``models`` dispatches to ``jobs.models`` only where that module exists."""
    monkeypatch.setitem(cli.COMMANDS, "absent", ("jobs.no_such_job", "not installed"))
    assert cli.main(["absent", "--help"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "jobs.no_such_job" in err


def test_dispatch_passes_the_arguments_and_the_exit_code(monkeypatch):
    seen = {}

    def fake_main(argv):
        seen.update(argv=argv, prog=sys.argv[0])
        return 3

    monkeypatch.setitem(sys.modules, "fake_job", types.SimpleNamespace(main=fake_main))
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_job", "a stand-in job"))
    before = list(sys.argv)
    assert cli.main(["fake", "--output", "out/x", "--set", "a.b=1"]) == 3
    assert seen == {"argv": ["--output", "out/x", "--set", "a.b=1"], "prog": "samsp fake"}
    assert sys.argv == before  # restored: the caller's argv is not the job's
