"""Scene ids: stable, filesystem- and S3-safe names for inputs, kept across runs."""
from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

from ingest.trust import uri_identity
from jobs.inputs.own_outputs import normalise_input

SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}$")


def is_safe_id(sid: object) -> bool:
    """A scene id that is one plain path segment under ``--output`` (ids read back from an
    index or a status object are untrusted: ``../x`` would write outside the output)."""
    return isinstance(sid, str) and bool(SAFE_ID.match(sid))


def safe_stem(uri: str) -> str:
    """The file name of ``uri`` without its extension, as an id. A URL's query string (a
    signature, a credential) is never part of it."""
    path = urlsplit(uri).path if "://" in uri else uri
    name = path.rstrip("/").rsplit("/", 1)[-1]
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

    An input already in the manifest keeps its id (so resume and skip find it again); inputs
    are compared by identity (``ingest.trust.uri_identity``: a URL signed again is the same
    input). Rows whose id is not a safe path segment are ignored.
    """
    previous = {sid: row for sid, row in previous.items() if is_safe_id(sid)}
    # rows of runs before inputs were normalised may hold relative paths: best effort, this cwd
    by_input = {uri_identity(normalise_input(row["input"])): sid for sid, row in previous.items()
                if row.get("input")}
    taken: dict[str, str] = {sid: uri_identity(normalise_input(row["input"]))
                             if row.get("input") else None for sid, row in previous.items()}
    stems: dict[str, int] = {}
    for uri in inputs:
        stems[safe_stem(uri)] = stems.get(safe_stem(uri), 0) + 1
    ids: dict[str, str] = {}
    for uri in inputs:
        key = uri_identity(uri)
        if key in by_input:
            ids[uri] = by_input[key]
            continue
        stem = safe_stem(uri)
        sid = stem
        if stems[stem] > 1 or (sid in taken and taken[sid] != key):
            sid = f"{stem}-{short_hash(key)}"
        taken[sid] = key
        ids[uri] = sid
    return ids
