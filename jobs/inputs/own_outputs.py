"""What input expansion must never pick up: the job's own output root and samsp's outputs.

With ``--output`` inside an input folder or prefix, the next run's expansion would otherwise find
``<id>/mask.tif``, ``prob.tif``, ``quicklook.png`` and ``mask.zarr`` (segment) or
``masks/*.png``, ``thumbs/*.jpg`` and ``contact_sheet.png`` (sweep) and take them for new scenes.
:class:`OwnOutputs` recognises

- everything under the output roots it is given (this run's ``--output``), and
- samsp's outputs under *any* root, by their shape, so an older run into another output folder
  inside the inputs is not read back either: a ``mask.zarr`` whose group attrs say
  ``samsp-mask``, and the ``mask.tif``/``prob.tif``/``quicklook.png`` next to one; a sweep
  output's ``masks/``, ``thumbs/`` and ``contact_sheet.png`` next to its ``records/`` or
  ``report.csv``.

Only what a folder, prefix or glob *expands to* is filtered: a scene named explicitly (argument or
list file) is taken as given. Each check costs at most one small read per folder (cached).
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from ingest import storage

SEGMENT_SCENE_OUTPUTS = ("mask.tif", "prob.tif", "quicklook.png")
SWEEP_FOLDERS = ("masks", "thumbs")
SWEEP_SHEET = "contact_sheet.png"
MASK_STORE = "mask.zarr"


def normalise_input(uri: str) -> str:
    """Input identity: s3:// and other URLs as given, local paths absolute and normalised
    (``./a.tif`` and ``/abs/a.tif`` are one scene; ``file://`` dropped); no trailing slash."""
    uri = uri.strip()
    if uri.startswith("/vsi") or ("://" in uri and not uri.startswith("file://")):
        return uri.rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return os.path.abspath(uri)


def _parent(uri: str) -> tuple[str, str]:
    """``(folder, name)`` of a local path or s3:// URI."""
    head, _, name = uri.rstrip("/").rpartition("/")
    return head, name


def is_under(uri: str, root: str) -> bool:
    root = root.rstrip("/")
    return uri == root or uri.startswith(root + "/")


class OwnOutputs:
    """``excluded(uri)``: True for the output roots' contents and samsp's own outputs."""

    def __init__(self, roots: Iterable[str] = ()):
        self.roots = [normalise_input(r) for r in roots if r]
        self._stores: dict[str, bool] = {}   # folder -> holds a samsp mask.zarr
        self._sweeps: dict[str, bool] = {}   # folder -> is a sweep output root

    def excluded(self, uri: str) -> bool:
        uri = normalise_input(uri)
        if any(is_under(uri, root) for root in self.roots):
            return True
        folder, name = _parent(uri)
        low = name.lower()
        if low == MASK_STORE:
            return self._is_mask_store(uri)
        if low in SEGMENT_SCENE_OUTPUTS:
            return self._holds_mask_store(folder)
        if low == SWEEP_SHEET:
            return self._is_sweep_root(folder)
        root, sub = _parent(folder)
        return sub.lower() in SWEEP_FOLDERS and self._is_sweep_root(root)

    def _holds_mask_store(self, folder: str) -> bool:
        if folder not in self._stores:
            self._stores[folder] = self._is_mask_store(f"{folder}/{MASK_STORE}")
        return self._stores[folder]

    @staticmethod
    def _is_mask_store(uri: str) -> bool:
        """A MaskWriter store (even a half-made one): its group attrs name the samsp format."""

        for meta in ("zarr.json", ".zattrs"):
            try:
                if b'"samsp-mask"' in storage.read_bytes(f"{uri}/{meta}"):
                    return True
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
        return False

    def _is_sweep_root(self, folder: str) -> bool:
        if folder not in self._sweeps:

            self._sweeps[folder] = any(storage.exists(f"{folder}/{n}")
                                       for n in ("report.csv", "records"))
        return self._sweeps[folder]

    def keep(self, uris: Iterable[str]) -> list[str]:
        return [u for u in uris if not self.excluded(u)]
