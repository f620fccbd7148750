"""Bundles as the jobs see them, without torch: where ``--model NAME`` points
(``resolve_bundle``: one resolver for segment, sweep, evaluate and training's
``model.checkpoint``), the bundles that can be found (``find_bundles``, ``python -m jobs.models``),
and what a driver needs from a ``bundle.json`` (``read_bundle_meta``: frame size, threshold, band
map; the actors load and validate the full bundle).

Names: a bare name (no slash, not an existing path) is looked up as ``<repo>/models/NAME``, then
as ``ROOT/NAME`` for every root of ``$SAMSP_MODELS`` (local folders or ``s3://`` prefixes,
separated by ``:`` or ``,``); the first folder holding a ``bundle.json`` wins. The repository's
own folder comes from this file's location, so a name resolves the same from any working
directory. samsp knows nothing of S3 or names: it is given the resolved folder/URI.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ingest import storage

META_FILE = "bundle.json"
CARD_FILE = "MODEL_CARD.md"
MODELS_ENV = "SAMSP_MODELS"
# The committed bundles (models/ at the repository root).
REPO_MODELS = str(Path(__file__).resolve().parents[2] / "models")
# SAMSP_MODELS separators: commas, and colons that do not start a scheme's "://".
_ROOT_SEPARATOR = re.compile(r",|:(?!//)")


class BundleNotFoundError(ValueError):
    """A bundle name found in none of the model roots (the message lists where it looked)."""


@dataclass(frozen=True)
class BundleInfo:
    """What the driver needs from ``bundle.json`` (the actors load and validate the full bundle)."""

    model_type: str
    image_size: int
    threshold: float
    band_map: tuple | None = None  # 0-based bands the model uses as R, G, B (None: samsp default)
    # the input contract (``bundle.json`` ``input``, samsp/contract.py) as a plain dict; None for
    # bundles written before it (unknown, never guessed): jobs/inference/contract_check.py
    input: dict | None = None


def read_bundle_meta(uri: str) -> BundleInfo:
    """Read ``bundle.json`` only (with the Ray engine the driver never loads the weights, nor
    even imports torch: ~0.5 GB of driver RSS and seconds of start-up; ``samsp.load_bundle`` in
    each actor does the full validation. The local engine loads them in this process, in
    jobs/inference/model_preload.py)."""

    meta_uri = uri.rstrip("/") + "/bundle.json"
    try:
        raw = storage.read_bytes(meta_uri)
    except FileNotFoundError:
        raise ValueError(f"no model bundle at {uri}: bundle.json is missing") from None
    try:
        meta = json.loads(raw)
        info = BundleInfo(model_type=str(meta["model_type"]), image_size=int(meta["image_size"]),
                          threshold=float(meta.get("threshold", 0.5)),
                          band_map=tuple(int(b) for b in meta["band_map"]) if meta.get("band_map") else None,
                          input=meta["input"] if isinstance(meta.get("input"), dict) else None)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"invalid bundle.json in {uri}: {type(err).__name__}: {err}") from None
    if info.image_size <= 0 or not 0 < info.threshold < 1:
        raise ValueError(f"invalid bundle.json in {uri}: image_size {info.image_size}, "
                         f"threshold {info.threshold}")
    return info


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
    """The bundle folder/URI that ``--model ref`` means: a path or URI as given, a bare name
    through the model roots (module docstring). ``BundleNotFoundError`` (one line, naming every
    place looked at) when a name is in none of them."""
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


def find_bundles() -> list[dict]:
    """Every bundle of every model root, in lookup order: ``{"name", "uri", "root",
    "shadowed"}``; ``shadowed``: an earlier root has a bundle of that name (a name finds that
    one). An unreachable root is an entry with ``error`` instead."""
    found, seen = [], set()
    for root in model_roots():
        try:
            metas = storage.glob(storage.join(root, "*", META_FILE))
        except Exception as err:  # noqa: BLE001 - list the others; say which root failed
            found.append({"root": root, "error": f"{type(err).__name__}: {err}"})
            continue
        for meta in metas:
            uri = meta[: -len(META_FILE) - 1]
            name = uri.rstrip("/").rsplit("/", 1)[-1]
            found.append({"name": name, "uri": uri, "root": root, "shadowed": name in seen})
            seen.add(name)
    return found


def read_bundle_json(uri: str) -> dict:
    """``bundle.json`` of the folder ``uri`` as a dict (``ValueError`` when missing/invalid)."""
    try:
        return json.loads(storage.read_bytes(storage.join(uri, META_FILE)))
    except FileNotFoundError:
        raise ValueError(f"no model bundle at {uri}: {META_FILE} is missing") from None
    except ValueError as err:
        raise ValueError(f"invalid {META_FILE} in {uri}: {err}") from None


def describe_input(contract: dict | None) -> str:
    """The input contract (``bundle.json`` ``input``) in a few words; old bundles have none. A
    mixture is described member by member."""
    if not contract:
        return "contract unknown"
    members = contract.get("members")
    data = ("; ".join(f"{name}: {_describe_data(c)}" for name, c in members.items())
            if members else _describe_data(contract))
    return f"{data}; 1 = {contract.get('labels')}"


def _describe_data(contract: dict) -> str:
    """``uint16 x3, bands 3,2,1 (red,green,blue), stretch 2-98%, GSD 0.5 m``."""
    radiometry = contract.get("radiometry")
    if isinstance(radiometry, dict):
        pct = radiometry.get("percentiles")
        radiometry = (f"stretch {pct[0]:g}-{pct[1]:g}%" if radiometry.get("mode") == "stretch"
                      and pct else radiometry.get("mode"))
    parts = [f"{contract.get('dtype')} x{contract.get('channels')}"]
    bands, names = contract.get("bands"), contract.get("band_names")
    if isinstance(bands, list):
        parts.append(f"bands {','.join(map(str, bands))}"
                     + (f" ({','.join(names)})" if isinstance(names, list) else ""))
    gsd = contract.get("gsd_m")
    parts += [str(radiometry), "no GSD" if gsd is None else
              (f"GSD {gsd:g} m" if isinstance(gsd, (int, float)) else f"GSD {gsd}")]
    return ", ".join(parts)
