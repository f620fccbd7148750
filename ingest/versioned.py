"""Compare-and-swap writes of small whole objects, local or s3:// (scene status, leases, index).

Several runs may update the same object at once (two nightly runs over one output prefix). A
plain read-modify-write would lose one of the updates; here every write names the version it
was computed from and is refused when the object changed in between -- the caller re-reads and
decides again (:func:`update`).

* S3: the object's ETag, and a conditional PUT (``If-Match: <etag>``, or ``If-None-Match: *``
  for "only if absent"); S3 and SeaweedFS answer 412 PreconditionFailed when it no longer holds.
* Local: a sha1 of the bytes, checked and replaced (temp file + ``os.replace``) under an
  exclusive ``flock`` on the object's folder (processes on one host; network filesystems
  without working ``flock`` are not supported for concurrent runs).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Callable, Optional, TypeVar

from ingest import s3_retry, storage

T = TypeVar("T")
#: ``update`` gives up after this many lost races (each loss means another writer made progress)
MAX_ATTEMPTS = 50


class VersionConflict(RuntimeError):
    """An object kept changing under :func:`update`."""


def _local_version(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else hashlib.sha1(data).hexdigest()


@contextlib.contextmanager
def _local_lock(path: str):
    """An exclusive flock on the object's folder: no lock files left beside the outputs."""
    import fcntl

    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_local(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _s3(uri: str):
    fs, path = storage.fs_for(uri)
    bucket, key = path.split("/", 1)
    return fs, bucket, key


def _is_precondition_failure(err: BaseException) -> bool:
    # s3fs turns botocore's ClientError into OSError(EINVAL); the code is on the cause
    cause = getattr(err, "__cause__", None) or err
    code = getattr(cause, "response", {}).get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") or \
        "pre-condition" in str(err).lower()


def read_versioned(uri: str) -> tuple[Optional[bytes], Optional[str]]:
    """``(bytes, version)`` of the object, ``(None, None)`` when there is none."""
    if not storage.is_s3(uri):
        path = storage.gdal_path(uri)
        data = _read_local(path)
        return data, _local_version(data)
    from fsspec.asyn import sync

    fs, bucket, key = _s3(uri)

    async def get():
        # botocore retries the request; a body cut mid-way (connection reset) comes after it
        # returned, so the read is retried here, under the same policy
        for attempt in range(1 + s3_retry.max_retries()):
            resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                return await resp["Body"].read(), resp["ETag"]
            except Exception:  # noqa: BLE001 - aiohttp/botocore payload errors
                if attempt == s3_retry.max_retries():
                    raise
            finally:
                resp["Body"].close()

    try:
        with s3_retry.naming(uri):
            return sync(fs.loop, get)
    except FileNotFoundError:
        return None, None


def write_if_version(uri: str, data: bytes, version: Optional[str]) -> bool:
    """Write ``data`` only if the object is still at ``version`` (None: only if absent).
    True when written, False when another writer got there first."""
    if not storage.is_s3(uri):
        path = storage.gdal_path(uri)
        with _local_lock(path):
            if _local_version(_read_local(path)) != version:
                return False
            storage.write_bytes(path, data)
        return True
    fs, bucket, key = _s3(uri)
    cond = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond)
    except OSError as err:
        if _is_precondition_failure(err):
            return False
        raise s3_retry.S3Failure(s3_retry.describe(uri, err)) from err
    return True


def update(uri: str, change: Callable[[Optional[bytes]], tuple[Optional[bytes], T]]) -> T:
    """Read, ``change(current) -> (new bytes or None to leave it, result)``, write if unchanged
    in between, else again. Returns the result of the ``change`` call whose decision stood."""
    for _ in range(MAX_ATTEMPTS):
        current, version = read_versioned(uri)
        new, result = change(current)
        if new is None or write_if_version(uri, new, version):
            return result
    raise VersionConflict(f"{uri}: changed under {MAX_ATTEMPTS} attempts to update it")
