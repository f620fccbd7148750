"""YAML configs validated by pydantic, overridable from the command line.

``load_config(Model, path, ["train.epochs=3", "model.type=vit_tiny"])`` reads the YAML (or the
model's defaults when ``path`` is None), applies ``--set`` overrides by dotted path (values parsed
as YAML scalars, so ``3`` is an int and ``[1,2]`` a list), and validates. Unknown or bad fields
raise ``ConfigError`` naming the field, e.g. ``train.lr: Input should be greater than 0``.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from jobs.runtime.errors import ConfigError
from jobs.runtime.logs import configure_logging, quiet_third_party

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def refuse_replaced(data: Any, replaced: dict[str, str]) -> Any:
    """For a ``model_validator(mode="before")``: a section still setting a field that was
    replaced fails with an error naming the new field (not a bare "extra input")."""
    if isinstance(data, dict):
        for old, new in replaced.items():
            if old in data:
                raise ValueError(f"'{old}' was replaced by {new}")
    return data


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in ``tree``; a number steps into a list (``data.source.members.1.weight``)."""
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"{dotted}: '{key}' is not an index of a list of {len(node)}")
            key = int(key)
        elif not isinstance(node, dict):
            raise ConfigError(f"{dotted}: cannot set a field inside '{keys[i - 1]}', which is "
                              "not a section")
        if last:
            node[key] = value
            return
        child = node[key] if isinstance(node, list) else node.get(key)
        if child is None:
            child = node[key] = {}
        node = child


def parse_overrides(items: Iterable[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        out.append((key, yaml.safe_load(raw) if raw != "" else ""))
    return out


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every settable dotted field of a config model (sections recursed into)."""
    paths = []
    for name, info in model.model_fields.items():
        path = prefix + name
        paths.append(path)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            paths.extend(field_paths(info.annotation, path + "."))
    return paths


def closest_field(model: type[BaseModel], key: str) -> str | None:
    """The valid field nearest to a mistyped dotted ``key`` (same section first), or None."""
    paths = field_paths(model)
    section = key.rpartition(".")[0]
    siblings = [p for p in paths if p.rpartition(".")[0] == section]
    for pool, cutoff in ((siblings, 0.6), (paths, 0.6)):
        match = difflib.get_close_matches(key, pool, n=1, cutoff=cutoff)
        if match:
            return match[0]
    leaf = key.rpartition(".")[2]  # the right name in the wrong section
    same_leaf = [p for p in paths if p.rpartition(".")[2] == leaf]
    return same_leaf[0] if same_leaf else None


def format_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        line = f"{loc}: {e['msg']}"
        if e["type"] == "extra_forbidden" and model is not None:
            near = closest_field(model, loc)
            if near:
                line += f" (did you mean {near}?)"
        lines.append(line)
    return "invalid config: " + "; ".join(lines)


def load_config(model: type[T], path: str | Path | None = None,
                overrides: Iterable[str] = ()) -> T:
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model)) from None


def add_config_args(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config`` and ``--set``; ``example`` is one of the job's own fields (``a.b=value``)."""
    parser.add_argument("--config", help="YAML config file (defaults are used when omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help=f"override a config field (repeatable), e.g. {example}")


def job_epilog(examples: Iterable[str], reference: str, exit_codes: dict[int, str]) -> str:
    """The end of a job's ``--help``: example command lines, where its config fields are
    documented, and what each exit code means."""
    lines = ["examples:"] + [f"  {e}" for e in examples]
    lines += ["", f"config reference: {reference}", "", "exit codes:"]
    lines += [f"  {code}  {meaning}" for code, meaning in sorted(exit_codes.items())]
    return "\n".join(lines)


#: A value that starts like an option but is numbers (``--bbox -80,20,-70,30``: every western
#: or southern bbox): argparse would read it as an unknown option.
NUMBERS = re.compile(r"^-\d[\d.eE+-]*(,-?[\d.eE+-]+)*$")


def attach_negative_values(argv: list[str]) -> list[str]:
    """``["--bbox", "-80,20,-70,30"]`` -> ``["--bbox=-80,20,-70,30"]``: option values that are
    negative numbers, as users type them, reach argparse as values."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and NUMBERS.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def parse_job_args(argv, *, prog: str, description: str, input_help: str, set_example: str,
                   epilog: str, flags: dict[str, str] | None = None,
                   add_args=None, input_required: bool = True) -> argparse.Namespace:
    """The CLI shared by the batch jobs (segment, sweep): inputs, output, model, config, logging;
    ``flags`` adds a job's own on/off options (``{"--force": help}``); ``add_args(parser)`` any
    other options; ``input_required=False`` when the job has another source of scenes (segment:
    ``--stac``, or ``input.stac`` in the config -- it checks that one is given); ``set_example``
    and ``epilog`` (``job_epilog``) make ``--help`` the job's own."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", action="extend", required=input_required,
                        metavar="URI_OR_GLOB", help=input_help)
    parser.add_argument("--output", required=True, help="output root (local folder or s3://bucket/prefix)")
    parser.add_argument("--model", required=True,
                        help="model bundle: folder, s3:// prefix or name (models/, $SAMSP_MODELS)")
    add_config_args(parser, set_example)
    parser.add_argument("--log-level", default=os.environ.get("SAMSP_LOG_LEVEL", "INFO"))
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    configure_logging(args.log_level)

    quiet_third_party()  # botocore's credentials line once, no library profiling at INFO
    return args


def output_root(uri: str) -> str:
    """A batch job's ``--output``: ``s3://...`` as given, local paths (``file://`` allowed)
    absolute; no trailing slash."""
    out = uri.rstrip("/")
    if out.startswith("file://"):
        out = out[len("file://"):]
    return out if out.startswith("s3://") else os.path.abspath(out)


def new_run_id() -> str:
    """``YYYYMMDDTHHMMSS-xxxxxx`` (UTC + random): sorts by time, unique across machines."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
