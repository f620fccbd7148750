"""Where a bundle name points: one resolver for ``samsp.segment_file(..., model=NAME)`` and the
jobs' ``--model NAME`` (segment, sweep, evaluate, training's ``model.checkpoint``; they import it
through jobs/inference/bundle_meta.py).

A bare name (no slash, not an existing path) is looked up as ``<repo>/models/NAME``, then as
``ROOT/NAME`` for every root of ``$SAMSP_MODELS`` (local folders or ``s3://`` prefixes, separated
by ``:`` or ``,``); the first folder holding a ``bundle.json`` wins. The repository's own folder
comes from this file's location, so a name resolves the same from any working directory. Roots
are read through ``ingest.storage`` (samsp itself knows nothing of S3); no torch here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ingest import storage

from .errors import BundleNotFoundError

META_FILE = "bundle.json"  # samsp.bundle.META_FILE (that module imports torch)
MODELS_ENV = "SAMSP_MODELS"
# The committed bundles (models/ at the repository root).
REPO_MODELS = str(Path(__file__).resolve().parents[1] / "models")
# SAMSP_MODELS separators: commas, and colons that do not start a scheme's "://".
_ROOT_SEPARATOR = re.compile(r",|:(?!//)")


def model_roots() -> list[str]:
    """Where bundle names are looked up, in order: ``<repo>/models``, then ``$SAMSP_MODELS``
    (relative local roots taken from the working directory)."""
    roots = [REPO_MODELS]
    for part in _ROOT_SEPARATOR.split(os.environ.get(MODELS_ENV, "")):
        part = part.strip()
        if part:
            roots.append(part.rstrip("/") if "://" in part
                         else os.path.abspath(os.path.expanduser(part)))
    return roots


def is_bundle(uri: str) -> bool:
    """Whether the folder ``uri`` (local or s3://) holds a ``bundle.json``."""
    return storage.exists(storage.join(uri, META_FILE))


def is_bare_name(ref: str) -> bool:
    """A model reference that is a name: no scheme, no path separator, not an existing path."""
    return ("://" not in ref and "/" not in ref and os.sep not in ref
            and ref not in ("", ".", "..") and not os.path.exists(ref))


def resolve_bundle(ref: str) -> str:
    """The bundle folder/URI that ``ref`` means: a path or URI as given, a bare name through the
    model roots (module docstring). ``BundleNotFoundError`` (one line, naming every place looked
    at) when a name is in none of them."""
    if not is_bare_name(ref):
        return ref
    looked = []
    for root in model_roots():
        candidate = storage.join(root, ref)
        try:
            if is_bundle(candidate):
                return candidate
            looked.append(root)
        except Exception as err:  # noqa: BLE001 - an unreachable S3 root: say so, go on
            looked.append(f"{root} ({type(err).__name__})")
    raise BundleNotFoundError(
        f"no bundle named {ref!r} (not a path either); looked in {', '.join(looked)} "
        f"(add folders or s3:// prefixes to ${MODELS_ENV})")


__all__ = ["META_FILE", "MODELS_ENV", "REPO_MODELS", "BundleNotFoundError", "is_bare_name",
           "is_bundle", "model_roots", "resolve_bundle"]
