"""The run record: what a scene's mask was computed from, so a rerun never mixes two of them.

A record holds the model bundle's sha256, the threshold, the radiometry settings, the bands, the
tiling, the model precision and the input's fingerprint (:func:`input_fingerprint`), which
tells one version of an input from another without reading its pixels:

- a local file: size, mtime_ns, ctime_ns and inode -- a file rewritten to the same size with
  its mtime put back still has a new ctime (and a new inode when written as new + rename); a
  local folder (Zarr store): its file count, total size, newest mtime_ns and newest ctime_ns;
- an S3 key: ETag + size; an S3 prefix: object count, total size, a sha1 over the ETags;
- an http(s) URL (or ``/vsicurl/`` one): ETag, Last-Modified and size from one HEAD request
  (:func:`http_fingerprint`); none when the server does not answer;
- a STAC item stacked into a VRT: each asset's own fingerprint with the asset's identity, and
  the resampling (:func:`stacked_fingerprint`, jobs.segmentation.stac_input) -- not the VRT's.

A local fingerprint stored by an earlier version (no ctime_ns/inode) still matches when the
keys it has are equal (:func:`records_match`): an upgrade does not recompute every scene.

The record is stored in the mask store's attrs (``attrs["samsp_run"]``), in ``stats.json`` and in
the scene's manifest row (``record``). On a rerun:

- a done scene is skipped only when its manifest row's record matches this run's;
- a scene is resumed (only missing chunks computed) only into a store whose record matches
  this run's;
- otherwise -- another threshold, bundle or input version, or ``--force`` -- the scene is
  recomputed whole into a fresh store under ``<id>/.recompute/`` and its outputs replace the old
  ones only once all of it succeeded (:func:`promote`); with ``pipeline.on_change: fail`` the
  scene fails instead with :class:`RunChangedError` naming what differs.

The fitted stretch is not part of the record: it is a function of the input and the settings.

A band-name pick (no ``radiometry.bands``, no bundle band map, a scene of more than three bands
whose names say which are red, green and blue: ``ingest.bands``) puts the picked bands in the
record's ``bands`` and how they were found in ``band_pick`` (:func:`with_band_pick`); without a
pick the record is what it was, so scenes done before picks existed are not recomputed. A
rerun decides to skip before it opens the scene, so a record with a pick matches this run's
``bands: null`` there (:func:`done_record_matches`); resuming compares the planned record.
Outputs made before picks existed of a scene that would now be picked are skipped as done
(nothing says otherwise without opening it): ``--force`` recomputes them.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from ingest import MaskWriter, storage
from ingest.errors import one_line
from ingest.trust import redact_text, redact_uri, uri_identity
from ingest.writer import store_is_ready
from jobs.runtime.errors import RunChangedError

log = logging.getLogger("samsp.segment")

RECORD_KEY = "samsp_run"
STAGING = ".recompute"        # a recomputation's outputs, until they replace the old ones
STORE = "mask.zarr"
FILES = ("mask.tif", "prob.tif", "quicklook.png",  # + output.vectors' files (segment_vectors)
         *(f"{k}{e}" for k in ("polygons", "centerlines") for e in (".parquet", ".geojson", ".fgb")))
STORE_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")  # root metadata: moved last
BUNDLE_FILES = ("bundle.json", "model.safetensors")
#: record field -> how an error message names it (the config field a user would change)
FIELD_NAMES = {"bundle_sha256": "model bundle (sha256)", "threshold": "predict.threshold",
               "radiometry": "radiometry", "bands": "radiometry.bands", "tiling": "tiling",
               "precision": "predict.precision", "input": "input (fingerprint)",
               "band_pick": "band pick (band names)", "resampled": "resampling (GSD)",
               "presence_gate": "predict.presence_gate"}
#: the record key of a band-name pick (how ``bands`` were chosen): informational, never compared
PICK_KEY = "band_pick"
#: the record key of a scene read at the model's GSD (jobs/inference/resampling.py): its
#: ``tiling`` is then the scene's, this key holds the GSDs and the job's own tiling
RESAMPLED_KEY = "resampled"
HTTP_TIMEOUT_S = 10.0  # the fingerprint request of an http(s) input
#: local fingerprint keys added after records were first kept (see records_match)
ADDED_INPUT_KEYS = frozenset({"ctime_ns", "inode"})


# --------------------------------------------------------------------------- the record

def bundle_sha256(uri: str) -> str:
    """sha256 over the bundle's ``bundle.json`` and weights (streamed: bounded memory)."""

    digest = hashlib.sha256()
    for name in BUNDLE_FILES:
        fs, path = storage.fs_for(storage.join(uri, name))
        try:
            with fs.open(path, "rb") as f:
                digest.update(name.encode() + b"\0")
                for block in iter(lambda: f.read(8 << 20), b""):
                    digest.update(block)
        except FileNotFoundError:
            digest.update(name.encode() + b"\0missing")
    return digest.hexdigest()


def input_fingerprint(uri: str) -> dict | None:
    """What tells one version of an input from another without reading its pixels (see the
    module). None when the input does not exist or an http(s) server does not say (planning
    then reports an input it cannot read)."""

    if storage.is_s3(uri):
        return _s3_fingerprint(uri)
    if is_http(uri):
        return http_fingerprint(uri)
    if not os.path.exists(uri):
        return None
    if not os.path.isdir(uri):
        st = os.stat(uri)
        # ctime and inode: a file rewritten to the same size with its mtime put back (touch -r,
        # rsync -t, cp -p over it) still gets a new ctime (and, written as new + rename, a new
        # inode) -- nothing can set ctime back
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                "inode": st.st_ino}
    sizes, mtime, ctime, n = 0, 0, 0, 0
    for root, _, files in os.walk(uri):  # a Zarr store: its files' total size, newest times
        for name in files:
            st = os.stat(os.path.join(root, name))
            sizes, n = sizes + st.st_size, n + 1
            mtime, ctime = max(mtime, st.st_mtime_ns), max(ctime, st.st_ctime_ns)
    return {"files": n, "size": sizes, "mtime_ns": mtime, "ctime_ns": ctime}


def _s3_fingerprint(uri: str) -> dict | None:
    """ETag + size of a key; for a prefix (a Zarr store), a sha1 over its keys' ETags."""

    fs, path = storage.fs_for(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info.get("type") != "directory":
        return {"etag": str(info.get("ETag", "")).strip('"'), "size": int(info.get("size", 0))}
    fs.invalidate_cache(path)
    found = fs.find(path, detail=True)
    keys = sorted((k, str(v.get("ETag", "")).strip('"'), int(v.get("size", 0)))
                  for k, v in found.items())
    return {"objects": len(keys), "size": sum(k[2] for k in keys),
            "etags_sha1": hashlib.sha1(json.dumps(keys).encode()).hexdigest()}


def is_http(uri: str) -> bool:
    """A plain http(s) URL or GDAL's ``/vsicurl/`` form of one."""
    return uri.removeprefix("/vsicurl/").startswith(("http://", "https://"))


def http_fingerprint(uri: str, timeout: float = HTTP_TIMEOUT_S) -> dict | None:
    """ETag, Last-Modified and size (Content-Length) of one HEAD request. A server that refuses
    HEAD (403/405/501: a presigned URL is signed for GET only) is asked for its first byte
    instead (the body is never read). None when neither answers, or the answer names no
    version: the record's input is then null, as it was for every http input before (an
    input that cannot be read fails at planning, with its own reason).

    Only for inputs the job opens anyway (the operator's own, or asset hrefs that
    ``input.allow`` passed): the caller decides -- see StacInput.fingerprint."""

    url = uri.removeprefix("/vsicurl/")
    if urlsplit(url).username is not None:  # urllib would send neither them nor a valid host
        _no_fingerprint(uri, "credentials in the URL")
        return None
    try:
        try:
            headers = _response_headers(url, "HEAD", timeout)
        except urllib.error.HTTPError as err:
            if err.code not in (403, 405, 501):
                raise
            headers = _response_headers(url, "GET", timeout)
    except (OSError, ValueError, http.client.HTTPException) as err:
        _no_fingerprint(uri, f"{type(err).__name__}: {err}")
        return None
    found = {"etag": (headers.get("ETag") or "").strip('"') or None,
             "last_modified": headers.get("Last-Modified") or None,
             "size": _http_size(headers)}
    return found if any(v is not None for v in found.values()) else None


def _response_headers(url: str, method: str, timeout: float):
    headers = {"User-Agent": "samsp-fingerprint"}
    if method == "GET":
        headers["Range"] = "bytes=0-0"
    request = urllib.request.Request(url, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.headers  # closed unread: a server ignoring Range sends no more


def _http_size(headers) -> int | None:
    """The object's size: Content-Range's total for a ranged answer, else Content-Length."""
    total = (headers.get("Content-Range") or "").rpartition("/")[2]
    length = total if total.isdigit() else headers.get("Content-Length")
    return int(length) if length and str(length).isdigit() else None


def _no_fingerprint(uri: str, reason: str) -> None:
    # the URL and the reason may carry a signature: both redacted, one line
    log.warning("input %s: no fingerprint (%s); a rerun cannot tell whether it changed",
                redact_uri(uri), one_line(redact_text(reason)))


def stacked_fingerprint(hrefs, resampling: str, fingerprint=input_fingerprint) -> dict:
    """A scene that stacks several assets (a VRT): every asset's own fingerprint, in band order,
    with its identity (redacted, without the parameters a re-signed URL changes), and the
    resampling the VRT names. Not the VRT file's: it only points at the assets, and one replaced
    in place leaves it as it was. ``hrefs`` must be ones the input policy passed."""
    return {"assets": [{"href": uri_identity(h), "input": fingerprint(h)} for h in hrefs],
            "resampling": resampling}


def run_record(cfg, bundle_sha: str, threshold: float, tile: int, overlap: int,
               fingerprint: dict | None, gated: bool = False) -> dict:
    """This run's record for one scene (JSON-normalised: compares equal to a stored one).
    ``gated``: the bundle has a presence gate, so turning it off changes the outputs."""
    rad = cfg.radiometry
    record = {
        "bundle_sha256": bundle_sha,
        "threshold": float(threshold),
        "radiometry": {"percentiles": list(rad.percentiles), "max_pixels": rad.max_pixels,
                       "uint8_passthrough": rad.uint8_passthrough,
                       # only when on: records made before the option existed keep matching
                       **({"resample": rad.resample, "gsd_tolerance": cfg.input.gsd_tolerance}
                          if rad.resample != "off" else {})},
        "bands": list(rad.bands) if rad.bands else None,
        "tiling": {"tile": int(tile), "overlap": int(overlap),
                   # only when set: records made before the option existed keep matching
                   **({"small_images": cfg.tiling.small_images}
                      if getattr(cfg.tiling, "small_images", None) else {})},
        "precision": getattr(cfg.predict, "precision", None),
        "input": fingerprint,
        # only when it turns a bundle's gate off: records made before the option existed, and
        # those of bundles without a gate, keep matching
        **({"presence_gate": False}
           if gated and not getattr(cfg.predict, "presence_gate", True) else {}),
    }
    return json.loads(json.dumps(record, sort_keys=True))


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text[:12] + "..." if len(text) > 16 and all(c in "0123456789abcdef" for c in text) \
        else text


def record_difference(old: dict | None, new: dict) -> str:
    """One line naming what differs ("" when nothing does)."""
    if not old:
        return "the existing outputs carry no run record (made before records were kept)"
    parts = [f"{FIELD_NAMES.get(k, k)} {_short(old.get(k))} -> {_short(new.get(k))}"
             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(parts)


def with_band_pick(record: dict | None, bands, choice: str) -> dict | None:
    """The record of a scene whose bands a band-name pick chose (``ingest.bands``): ``bands``
    the picked ones -- they make the output -- and ``band_pick`` how. Unchanged without a pick,
    so scenes done before picks existed keep matching."""
    if record is None or not choice:
        return record
    return json.loads(json.dumps({**record, "bands": list(bands), PICK_KEY: choice},
                                 sort_keys=True))


def with_resampling(record: dict | None, resampling) -> dict | None:
    """The record of a scene read at the model's GSD: its own tile geometry (the store's chunks
    follow it) and how it was derived. Unchanged without resampling."""
    if record is None or resampling is None:
        return record
    return json.loads(json.dumps({**record, "tiling": {**record["tiling"],
                                                       "tile": resampling.tile,
                                                       "overlap": resampling.overlap},
                                  RESAMPLED_KEY: resampling.to_dict()}, sort_keys=True))


def _as_planned(stored: dict) -> dict:
    """A stored resampled record as the run's record is before its scene is opened: the job's
    own tiling. Resampling is a function of the input (fingerprinted), the bundle (sha256) and
    the config (radiometry.resample, tiling, recorded), so this is safe to compare."""
    resampled = stored.get(RESAMPLED_KEY)
    if not isinstance(resampled, dict):
        return stored
    out = {k: v for k, v in stored.items() if k != RESAMPLED_KEY}
    job = resampled.get("job_tiling")
    rule = {k: v for k, v in (stored.get("tiling") or {}).items() if k not in ("tile", "overlap")}
    out["tiling"] = {**job, **rule} if isinstance(job, dict) else job
    return out


def _without_pick(record):
    return {k: v for k, v in record.items() if k != PICK_KEY} if isinstance(record, dict) \
        else record


def done_record_matches(stored: dict | None, record: dict) -> bool:
    """Whether a done scene may be skipped: :func:`records_match`, or, before the scene is
    opened (a pick is not known yet), a stored record whose bands a band-name pick chose
    against this run's ``bands`` null (left to the pick) with all else equal. The pick is a
    function of the input (fingerprinted) and of the bundle (a band_map turns it off; its
    sha256 is in the record)."""
    if records_match(stored, record):
        return True
    if not isinstance(stored, dict):
        return False
    stored = _as_planned(stored)
    if records_match(stored, record):
        return True
    if not stored.get(PICK_KEY) or record.get("bands") is not None:
        return False
    return records_match({**stored, "bands": None}, record)


def records_match(stored: dict | None, record: dict) -> bool:
    """Whether a stored record names what this run's ``record`` would make: equal, or equal but
    for an input fingerprint stored by an earlier version (:func:`legacy_input_matches`). How
    the bands were chosen (``band_pick``) is not compared: the bands themselves are."""
    stored, record = _without_pick(stored), _without_pick(record)
    if stored == record:
        return True
    if not isinstance(stored, dict) or set(stored) != set(record):
        return False
    return all(stored[k] == record[k] for k in record if k != "input") and \
        legacy_input_matches(stored["input"], record["input"])


def legacy_input_matches(stored, current) -> bool:
    """A local fingerprint stored before ``ctime_ns``/``inode`` were kept (size + mtime_ns,
    files for a store) names the same input when every key it has is equal and it lacks only
    those: outputs of the earlier version are not all recomputed after an upgrade. Such a
    scene is told apart by size and mtime only, as before, until it is recomputed for another
    reason (its new record then has every key). Anything else must be equal."""
    if not isinstance(stored, dict) or not isinstance(current, dict):
        return False
    return set(stored) < set(current) and set(current) - set(stored) <= ADDED_INPUT_KEYS and \
        all(stored[k] == current[k] for k in stored)


# --------------------------------------------------------------------------- where to write

@dataclass(frozen=True)
class StoreChoice:
    out_dir: str        # where this run writes the scene's store, tile records and outputs
    mode: str           # "a": resume a store with this record; "w": a fresh store
    replaces: str = ""  # the folder whose outputs this run's replace on success ("" = in place)
    reason: str = ""    # why the scene is recomputed (the difference), for the log


def stored_record(store_uri: str) -> tuple[bool, dict | None]:
    """``(usable, record)`` of a mask store: usable = its creation finished."""

    if not store_is_ready(store_uri):
        return False, None
    return True, MaskWriter.open(store_uri, mode="r").attrs.get(RECORD_KEY)


def _clear(uri: str) -> None:

    if storage.exists(uri):
        storage.remove(uri, recursive=True)


def choose_store(live_dir: str, record: dict, force: bool, on_change: str) -> StoreChoice:
    """Resume, start fresh in place, or recompute beside the old outputs (see the module)."""
    staging = storage.join(live_dir, STAGING)
    live_ok, live_rec = stored_record(storage.join(live_dir, STORE))
    if not force:
        if live_ok and records_match(live_rec, record):
            return StoreChoice(live_dir, "a")
        if live_ok and on_change == "fail":
            raise RunChangedError(f"outputs were made with other settings: "
                                  f"{record_difference(live_rec, record)} (pipeline.on_change=fail)")
        staged_ok, staged_rec = stored_record(storage.join(staging, STORE))
        if staged_ok and records_match(staged_rec, record):  # an earlier recomputation to resume
            return StoreChoice(staging, "a", live_dir, "resuming a recomputation")
    if not live_ok:
        # nothing usable in place (no store, or one whose creation was killed): start there;
        # tile records of an earlier store would otherwise pass for this one's
        _clear(storage.join(live_dir, "tiles"))
        return StoreChoice(live_dir, "w")
    _clear(staging)
    reason = "--force" if force else record_difference(live_rec, record)
    return StoreChoice(staging, "w", live_dir, reason)


# --------------------------------------------------------------------------- promotion

def _move(src: str, dst: str) -> None:
    """One file into place: a rename locally, copy + delete on S3 (each PUT is atomic)."""

    if storage.is_s3(src):
        fs, path = storage.fs_for(src)
        fs.copy(path, storage.fs_for(dst)[1])
        fs.rm(path)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)


def _replace_tree(src: str, dst: str) -> None:
    """Folder ``src`` becomes ``dst``. Locally two renames. On S3 the old store's root metadata
    is deleted first and the new one's copied last: a store caught in between has none, reads
    as absent, and the next run resumes the intact ``src`` instead."""

    if not storage.is_s3(src):
        old = f"{dst}.old-{uuid.uuid4().hex[:8]}"
        if os.path.exists(dst):
            os.replace(dst, old)
        os.replace(src, dst)
        _clear(old)
        return
    fs, src_path = storage.fs_for(src)
    dst_path = storage.fs_for(dst)[1]
    for meta in STORE_METADATA:
        if fs.exists(f"{dst_path}/{meta}"):
            fs.rm(f"{dst_path}/{meta}")
    if fs.exists(dst_path):
        fs.rm(dst_path, recursive=True)
    fs.invalidate_cache(src_path)
    keys = fs.find(src_path)
    rel = [k[len(src_path):].lstrip("/") for k in keys]
    body = [r for r in rel if r not in STORE_METADATA]
    last = [r for r in rel if r in STORE_METADATA]
    for part in (body, last):
        if part:
            fs.copy([f"{src_path}/{r}" for r in part], [f"{dst_path}/{r}" for r in part])
    fs.rm(src_path, recursive=True)


def promote(staging_dir: str, live_dir: str, outputs: list[str]) -> None:
    """A finished recomputation replaces the old outputs: files, tile records, the store, and
    ``stats.json`` last. Called only after finalization succeeded. A crash half-way leaves the
    staging store intact and the old manifest row: the next run resumes it and promotes again.
    Outputs of the old run that this one did not make (e.g. polygons now off) are removed."""

    for name in FILES:
        if name in outputs:
            _move(storage.join(staging_dir, name), storage.join(live_dir, name))
        elif storage.exists(storage.join(live_dir, name)):
            storage.remove(storage.join(live_dir, name))
    _replace_tree(storage.join(staging_dir, "tiles"), storage.join(live_dir, "tiles"))
    _replace_tree(storage.join(staging_dir, STORE), storage.join(live_dir, STORE))
    _move(storage.join(staging_dir, "stats.json"), storage.join(live_dir, "stats.json"))
    _clear(staging_dir)
