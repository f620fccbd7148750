"""Driver-side planning: expand inputs, name scenes, open headers, fit radiometry, build tile grids.

Nothing here reads a scene at full resolution: ``open_scene`` reads the header, ``Radiometry.fit``
samples a bounded number of pixels (overviews when present), and resume state comes from the
``MaskWriter``'s written chunks plus the per-tile stat records the write stage leaves behind.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Iterable, Optional

from jobs.own_outputs import OwnOutputs, is_under, normalise_input
from jobs.segment_manifest import join_uri

log = logging.getLogger("samsp.segment")

LIST_EXTENSIONS = (".txt", ".csv", ".lst", ".list")
GLOB_CHARS = re.compile(r"[*?\[]")


# --------------------------------------------------------------------------- inputs

def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _fs(uri: str):
    """(fsspec filesystem, path) for a local path or an s3:// URI (credentials from the env)."""
    if is_s3(uri):
        from ingest.storage import fs_for

        return fs_for(uri)
    import fsspec

    return fsspec.filesystem("file"), uri


def _has_ext(name: str, exts: Iterable[str]) -> bool:
    low = name.lower().rstrip("/")
    return any(low.endswith(e) for e in exts)


def _zarr_root(path: str) -> Optional[str]:
    """``a/b/x.zarr/mask/c/0`` -> ``a/b/x.zarr`` (None when the path is not inside a .zarr)."""
    m = re.search(r"^(.*?\.zarr)(/|$)", path, flags=re.IGNORECASE)
    return m.group(1) if m else None


def _read_list(uri: str) -> list[str]:
    """URIs listed in a .txt (one per line, # comments) or .csv (column uri|input|path, else first)."""
    fs, path = _fs(uri)
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
        elif not _has_ext(name, exts):
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
    ``--output``) nor samsp's own outputs elsewhere (``jobs.own_outputs``): a rerun must not
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
        if _has_ext(item, LIST_EXTENSIONS) and not GLOB_CHARS.search(item):
            if _depth > 2:
                raise ValueError(f"{item}: list files nested too deep")
            out.extend(expand_inputs(_read_list(item), extensions, (), _depth + 1, own))
            continue
        if is_s3(item):
            fs, path = _fs(item)
            if GLOB_CHARS.search(item):
                names = fs.glob(path)
                # a glob may match files inside zarr stores or whole folders; keep scenes only
                found = _expand_listing(item, [n for n in names], exts, "s3://")
                out.extend(own.keep(found))
                continue
            if _has_ext(item, exts):
                out.append(item.rstrip("/"))  # a single key (or zarr store): kept even if missing
                continue
            try:
                names = fs.find(path.rstrip("/") + "/")
            except FileNotFoundError:
                names = []
            found = own.keep(_expand_listing(item, names, exts, "s3://"))
            if not found:
                log.warning("input %s: no scenes under this prefix", item)
            out.extend(found)
            continue
        # local
        if item.startswith("file://"):
            item = item[len("file://"):]
        if GLOB_CHARS.search(item):
            matches = sorted(glob.glob(item, recursive=True))
            files = []
            for m in matches:
                if os.path.isdir(m) and not m.lower().rstrip("/").endswith(".zarr"):
                    files.extend(expand_inputs([m], extensions, (), _depth + 1, own))
                elif _zarr_root(m) is not None or _has_ext(m, exts):
                    files.append(_zarr_root(m) or m)
            files = own.keep(files)
            if not files:
                log.warning("input %s: the glob matched no scenes", item)
            out.extend(files)
            continue
        if os.path.isdir(item) and not item.lower().rstrip("/").endswith(".zarr"):
            names = []
            for root, dirs, files in os.walk(item):
                zdirs = [d for d in dirs if d.lower().endswith(".zarr")]
                names.extend(os.path.join(root, d) for d in zdirs)
                # never walk into an output root (its tile records can be many)
                dirs[:] = sorted(d for d in dirs if not d.lower().endswith(".zarr") and not any(
                    is_under(normalise_input(os.path.join(root, d)), r) for r in own.roots))
                names.extend(os.path.join(root, f) for f in files)
            found = own.keep(_expand_listing(item, names, exts, ""))
            if not found:
                log.warning("input %s: no scenes in this folder", item)
            out.extend(found)
            continue
        out.append(item.rstrip("/") if item.lower().rstrip("/").endswith(".zarr") else item)
    # normalise (one identity per input), de-duplicate, keep order
    seen: set[str] = set()
    uniq = []
    for u in map(normalise_input, out):
        if u not in seen:
            seen.add(u)
            uniq.append(u)
    return uniq


# --------------------------------------------------------------------------- scene ids

def safe_stem(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".ome.tif", ".tiff", ".tif", ".zarr", ".jp2", ".png", ".jpeg", ".jpg", ".vrt"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return name[:100] or "scene"


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def assign_scene_ids(inputs: list[str], previous: dict[str, dict]) -> dict[str, str]:
    """Stable, filesystem/S3-safe ids: the input's stem; ``stem-<hash>`` when two inputs share it.

    An input already in the manifest keeps its id (so resume and skip find it again).
    """
    # rows of runs before inputs were normalised may hold relative paths: best effort, this cwd
    by_input = {normalise_input(row["input"]): sid for sid, row in previous.items()
                if row.get("input")}
    taken: dict[str, str] = {sid: normalise_input(row["input"]) if row.get("input") else None
                             for sid, row in previous.items()}
    stems: dict[str, int] = {}
    for uri in inputs:
        stems[safe_stem(uri)] = stems.get(safe_stem(uri), 0) + 1
    ids: dict[str, str] = {}
    for uri in inputs:
        if uri in by_input:
            ids[uri] = by_input[uri]
            continue
        stem = safe_stem(uri)
        sid = stem
        if stems[stem] > 1 or (sid in taken and taken[sid] != uri):
            sid = f"{stem}-{short_hash(uri)}"
        taken[sid] = uri
        ids[uri] = sid
    return ids


# --------------------------------------------------------------------------- plan

@dataclass
class ScenePlan:
    id: str
    input: str
    out_dir: str
    height: int = 0
    width: int = 0
    count: int = 0
    dtype: str = ""
    georeferenced: bool = False
    crs_wkt: str = ""
    transform: tuple = ()
    radiometry: dict = field(default_factory=dict)
    tile: int = 0
    overlap: int = 0
    tiles: Sequence = ()                               # the TileGrid: Tiles made on access
    todo: list = field(default_factory=list)           # indexes into tiles still to compute
    done_stats: dict = field(default_factory=dict)     # (r, c) -> stat record from a previous run
    error: str = ""
    seconds_plan: float = 0.0
    record: dict = field(default_factory=dict)         # jobs.segment_record: what the mask is made of
    replaces: str = ""     # out_dir is a recomputation whose outputs replace these on success
    recompute_reason: str = ""

    @property
    def zarr_uri(self) -> str:
        return join_uri(self.out_dir, "mask.zarr")

    @property
    def tiles_uri(self) -> str:
        return join_uri(self.out_dir, "tiles")

    @property
    def pixels(self) -> int:
        return int(self.height) * int(self.width)


def is_geospatial_uri(uri: str) -> bool:
    """Formats that are expected to carry a CRS (photos such as PNG/JPEG never do)."""
    return not _has_ext(uri, (".png", ".jpg", ".jpeg"))


def tile_key(index) -> str:
    r, c = index
    return f"{int(r)}_{int(c)}"


def read_json_records(folder_uri: str, key) -> dict:
    """Every record in a folder's ``*.json`` files (local or s3://; a file holds one record or
    a list of them), keyed by ``key(record)``.

    Torn or foreign records are skipped: the item they describe is simply recomputed.
    """
    fs, path = _fs(folder_uri)
    try:
        names = [n for n in fs.ls(path, detail=False) if n.endswith(".json")]
    except FileNotFoundError:
        return {}
    if not names:
        return {}
    blobs = fs.cat(names) if len(names) > 1 else {names[0]: fs.cat(names[0])}
    out = {}
    for blob in blobs.values():
        try:
            recs = json.loads(blob)
        except ValueError:
            continue
        for rec in recs if isinstance(recs, list) else [recs]:  # a file may hold a batch
            try:
                out[key(rec)] = rec
            except (KeyError, TypeError, IndexError):
                continue
    return out


def read_tile_records(tiles_uri: str) -> dict[tuple[int, int], dict]:
    """Per-tile stat records written by the write stage (resume state)."""
    return read_json_records(tiles_uri, lambda rec: (int(rec["tile"][0]), int(rec["tile"][1])))


def window_tuple(win) -> tuple[int, int, int, int]:
    return (int(win.row_off), int(win.col_off), int(win.height), int(win.width))
