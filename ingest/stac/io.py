"""pystac I/O through ``ingest.storage`` (local paths and ``s3://``), and file checksums.

pystac's default ``StacIO`` reads local files and http(s) only and writes in place; samsp's
catalogs live beside its outputs, often on S3, and readers may list the prefix while a run
rewrites it -- so every write here is atomic (local: temp + rename; S3: a single PUT).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import pystac

from .. import storage

#: multihash prefix of a sha2-256 digest (code 0x12, length 0x20), what ``file:checksum`` holds
SHA256_MULTIHASH_PREFIX = "1220"


def _is_url(href: str) -> bool:
    return href.startswith(("http://", "https://"))


class StorageStacIO(pystac.StacIO):
    """Read local/s3:// through fsspec (http(s) as pystac does); write atomically."""

    def __init__(self) -> None:
        super().__init__()
        self._http = pystac.StacIO.default()

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        href = str(getattr(source, "href", source))
        if _is_url(href):
            return self._http.read_text(href, *args, **kwargs)
        return storage.read_bytes(_path(href)).decode("utf-8")

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        href = str(getattr(dest, "href", dest))
        if _is_url(href):
            raise ValueError(f"cannot write a STAC document to {href}: http(s) is read-only here")
        storage.write_bytes(_path(href), txt.encode("utf-8"))


def _path(href: str) -> str:
    return href[len("file://"):] if href.startswith("file://") else href


def file_checksum(uri: str, block: int = 8 << 20) -> tuple[int, str]:
    """``(size, multihash)`` of a file (local or s3://), streamed: ``file:size``/``file:checksum``."""
    fs, path = storage.fs_for(uri)
    digest = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, SHA256_MULTIHASH_PREFIX + digest.hexdigest()


def absolute(href: str, base: str) -> str:
    """``href`` made absolute against the document at ``base`` (local, s3:// or URL)."""
    if "://" in href or os.path.isabs(href):
        return href
    return pystac.utils.make_absolute_href(href, base)


__all__ = ["StorageStacIO", "file_checksum", "absolute", "SHA256_MULTIHASH_PREFIX"]
