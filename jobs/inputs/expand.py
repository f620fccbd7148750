"""What to process: scene URIs from local paths, globs, folders, s3:// keys, prefixes and globs,
and ``.txt``/``.csv`` lists of any of these, without samsp's own outputs."""
from __future__ import annotations

import csv
import glob
import io
import logging
import os
import re
from typing import Iterable, Optional

from ingest import storage
from jobs.inputs.own_outputs import OwnOutputs, is_under, normalise_input

log = logging.getLogger("samsp.segment")

LIST_EXTENSIONS = (".txt", ".csv", ".lst", ".list")
GLOB_CHARS = re.compile(r"[*?\[]")



def has_extension(name: str, exts: Iterable[str]) -> bool:
    low = name.lower().rstrip("/")
    return any(low.endswith(e) for e in exts)


def _zarr_root(path: str) -> Optional[str]:
    """``a/b/x.zarr/mask/c/0`` -> ``a/b/x.zarr`` (None when the path is not inside a .zarr)."""
    m = re.search(r"^(.*?\.zarr)(/|$)", path, flags=re.IGNORECASE)
    return m.group(1) if m else None


def _read_list(uri: str) -> list[str]:
    """URIs listed in a .txt (one per line, # comments) or .csv (column uri|input|path, else first)."""
    fs, path = storage.fs_for(uri)
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8-sig")
    if uri.lower().endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col = next((header.index(n) for n in ("uri", "input", "path", "url") if n in header), None)
        body = rows[1:] if col is not None else rows
        col = 0 if col is None else col
        return [r[col].strip() for r in body if len(r) > col and r[col].strip()
                and not r[col].strip().startswith("#")]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _expand_listing(uri: str, names: list[str], exts: list[str], scheme: str) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for name in sorted(names):
        root = _zarr_root(name)
        if root is not None:
            name = root
        elif not has_extension(name, exts):
            continue
        full = f"{scheme}{name}" if scheme else name
        if full not in seen:
            seen.add(full)
            out.append(full)
    return out


def expand_inputs(items: Iterable[str], extensions: list[str], exclude: Iterable[str] = (),
                  _depth: int = 0, _own: Optional[OwnOutputs] = None) -> list[str]:
    """Scene URIs from local paths/globs/folders, s3:// keys/prefixes/globs, and list files.

    Each URI is the input's identity: local paths absolute and normalised, s3:// as listed.
    What a folder, prefix or glob expands to never includes the ``exclude`` roots (the job's
    ``--output``) nor samsp's own outputs elsewhere (``jobs.inputs.own_outputs``): a rerun must not
    read its masks back as scenes. A path that does not exist is kept as it is: planning then
    reports it as a failed scene (missing input) instead of silently dropping it.
    """
    exts = [e.lower() if e.startswith(".") else "." + e.lower() for e in extensions]
    own = _own if _own is not None else OwnOutputs(exclude)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if has_extension(item, LIST_EXTENSIONS) and not GLOB_CHARS.search(item):
            if _depth > 2:
                raise ValueError(f"{item}: list files nested too deep")
            out.extend(expand_inputs(_read_list(item), extensions, (), _depth + 1, own))
        elif storage.is_s3(item):
            out.extend(_expand_s3(item, exts, own))
        elif item.startswith(("http://", "https://", "/vsicurl/")):
            out.append(item)  # one object; "?" starts its query (a signature), not a glob
        else:
            out.extend(_expand_local(item, extensions, exts, own, _depth))
    # normalise (one identity per input), de-duplicate, keep order
    seen: set[str] = set()
    uniq = []
    for u in map(normalise_input, out):
        if u not in seen:
            seen.add(u)
            uniq.append(u)
    return uniq


def _expand_s3(item: str, exts: list[str], own: OwnOutputs) -> list[str]:
    """An s3:// glob, key (or Zarr store) or prefix."""
    fs, path = storage.fs_for(item)
    if GLOB_CHARS.search(item):
        # a glob may match files inside zarr stores or whole folders; keep scenes only
        return own.keep(_expand_listing(item, list(fs.glob(path)), exts, "s3://"))
    if has_extension(item, exts):
        return [item.rstrip("/")]  # a single key (or zarr store): kept even if missing
    try:
        names = fs.find(path.rstrip("/") + "/")
    except FileNotFoundError:
        names = []
    found = own.keep(_expand_listing(item, names, exts, "s3://"))
    if not found:
        log.warning("input %s: no scenes under this prefix", item)
    return found


def _expand_local(item: str, extensions: list[str], exts: list[str], own: OwnOutputs,
                  depth: int) -> list[str]:
    """A local glob, folder (walked, never into an output root) or path."""
    if item.startswith("file://"):
        item = item[len("file://"):]
    if GLOB_CHARS.search(item):
        files = []
        for m in sorted(glob.glob(item, recursive=True)):
            if os.path.isdir(m) and not m.lower().rstrip("/").endswith(".zarr"):
                files.extend(expand_inputs([m], extensions, (), depth + 1, own))
            elif _zarr_root(m) is not None or has_extension(m, exts):
                files.append(_zarr_root(m) or m)
        files = own.keep(files)
        if not files:
            log.warning("input %s: the glob matched no scenes", item)
        return files
    if os.path.isdir(item) and not item.lower().rstrip("/").endswith(".zarr"):
        names = []
        for root, dirs, files in os.walk(item):
            names.extend(os.path.join(root, d) for d in dirs if d.lower().endswith(".zarr"))
            # never walk into an output root (its tile records can be many)
            dirs[:] = sorted(d for d in dirs if not d.lower().endswith(".zarr") and not any(
                is_under(normalise_input(os.path.join(root, d)), r) for r in own.roots))
            names.extend(os.path.join(root, f) for f in files)
        found = own.keep(_expand_listing(item, names, exts, ""))
        if not found:
            log.warning("input %s: no scenes in this folder", item)
        return found
    return [item.rstrip("/") if item.lower().rstrip("/").endswith(".zarr") else item]
