"""``samsp <command> [args]``: one console script for the jobs (``[project.scripts]``).

``samsp segment ...`` runs exactly what ``python jobs/segment.py ...`` runs: the job module's own
``main(argv)``, with its own flags, help and exit codes. The script files stay the entry point of
``ray job submit -- python jobs/<job>.py`` (a working-dir upload has no installed script); this
module only dispatches, so the two can never drift apart.
"""
from __future__ import annotations

import importlib
import sys

#: command -> (module with ``main(argv) -> int``, one-line summary for ``samsp --help``).
#: The summaries are written out here: importing the jobs to read their docstrings would load
#: torch and Ray just to print the help.
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("jobs.segment", "segment scenes with a SAM-SP bundle on Ray Data (jobs/segment.py)"),
    "train": ("jobs.train", "train or fine-tune a bundle with Ray Train (jobs/train.py)"),
    "sweep": ("jobs.sweep", "crack sweep over a photo archive (jobs/sweep.py)"),
    "evaluate": ("jobs.evaluate", "score a bundle on image/mask pairs (jobs/evaluate.py)"),
    "review": ("jobs.training.review", "review queue as a GeoPackage; fine-tune on it"),
    "demo": ("jobs.demo", "the local end-to-end demo, what `make demo` runs (jobs/demo.py)"),
    "models": ("jobs.models", "the committed model bundles (python -m jobs.models)"),
}
EXIT_USAGE = 2


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: samsp <command> [args ...]", "",
             "Batch segmentation with SAM-SP on Ray. Each command takes the flags of its job;",
             "`samsp <command> --help` shows them.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"samsp: unknown command {name!r} (choose from {', '.join(COMMANDS)})",
              file=sys.stderr)
        return EXIT_USAGE
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:  # the job exists but lacks a dependency: a real error
            raise
        print(f"samsp {name}: {module_name} is not in this installation", file=sys.stderr)
        return EXIT_USAGE
    # argparse names a parser without an explicit prog after sys.argv[0]: "samsp evaluate"
    # reads right in its usage line, where the console script's path would not
    saved, sys.argv = sys.argv, [f"samsp {name}", *rest]
    try:
        return module.main(rest)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
