"""Scene ids: stable, filesystem- and S3-safe names for inputs, kept across runs."""
from __future__ import annotations

import hashlib
import re

from jobs.inputs.own_outputs import normalise_input


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
