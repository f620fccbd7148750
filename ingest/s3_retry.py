"""One retry policy for every S3 client samsp uses, and failures that name the object.

S3 throttles (503 SlowDown) and drops connections now and then; on a night of thousands of
objects some request will meet one. Every client retries the same way, from two settings:

* ``SAMSP_S3_MAX_RETRIES`` (default 5): retries after the first attempt of one request.
* ``SAMSP_S3_RETRY_DELAY_S`` (default 0.5): GDAL's first back-off (it doubles each retry).
* ``SAMSP_S3_RETRY_MODE`` (default ``adaptive``): botocore's retry mode. ``adaptive`` also rate-
  limits the client once S3 throttles it (seconds per request while the bucket recovers: right
  for AWS at scale); ``standard`` only backs off per request (on-prem stores that throttle
  rarely, and the fault tests, where one request in four is refused on purpose).

The segmentation job's ``storage.max_retries`` / ``storage.retry_delay_s`` set them for the
driver and, through the environment, for every Ray worker. Where they go:

* GDAL /vsis3 (scene reads, COG writes): ``GDAL_HTTP_MAX_RETRY`` / ``GDAL_HTTP_RETRY_DELAY``
  (GDAL retries 429/5xx and reset connections); an explicit ``GDAL_HTTP_*`` in the environment
  still wins, for GDAL only.
* botocore under s3fs (small objects, status CAS, Zarr chunks -- zarr writes through fsspec):
  ``config_kwargs={"retries": {"max_attempts": 1 + N, "mode": MODE}}`` in
  ``storage.storage_options`` -- adaptive mode also slows the client down while throttled.
  s3fs adds its own few retries of truncated bodies (``IncompleteRead``) on top.
"""
from __future__ import annotations

import contextlib
import os

from ingest.errors import SceneError

ENV_MAX_RETRIES = "SAMSP_S3_MAX_RETRIES"
ENV_RETRY_DELAY_S = "SAMSP_S3_RETRY_DELAY_S"
ENV_RETRY_MODE = "SAMSP_S3_RETRY_MODE"
RETRY_MODES = ("adaptive", "standard")
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_DELAY_S = 0.5


class S3Failure(SceneError, OSError):
    """An S3 request that still failed after every retry; the message names the object."""

    def __str__(self) -> str:  # OSError would format errno/filename otherwise
        return self.args[0] if self.args else ""


def max_retries() -> int:
    return max(0, int(os.environ.get(ENV_MAX_RETRIES, DEFAULT_MAX_RETRIES)))


def retry_delay_s() -> float:
    return max(0.0, float(os.environ.get(ENV_RETRY_DELAY_S, DEFAULT_RETRY_DELAY_S)))


def retry_mode() -> str:
    mode = os.environ.get(ENV_RETRY_MODE, "adaptive").strip().lower() or "adaptive"
    if mode not in RETRY_MODES:
        raise ValueError(f"{ENV_RETRY_MODE}={mode!r}: choose one of {', '.join(RETRY_MODES)}")
    return mode


def configure(max_retries_: int | None = None, retry_delay_s_: float | None = None,
              retry_mode_: str | None = None) -> None:
    """Make the job's settings this process's (and its children's) policy; None keeps the
    environment's value or the default."""
    if max_retries_ is not None:
        os.environ[ENV_MAX_RETRIES] = str(int(max_retries_))
    if retry_delay_s_ is not None:
        os.environ[ENV_RETRY_DELAY_S] = str(float(retry_delay_s_))
    if retry_mode_ is not None:
        os.environ[ENV_RETRY_MODE] = retry_mode_


def botocore_config() -> dict:
    """``config_kwargs`` of s3fs (botocore ``Config``): max_attempts counts the first try."""
    return {"retries": {"max_attempts": 1 + max_retries(), "mode": retry_mode()}}


def gdal_config() -> dict[str, str]:
    return {"GDAL_HTTP_MAX_RETRY": os.environ.get("GDAL_HTTP_MAX_RETRY", str(max_retries())),
            "GDAL_HTTP_RETRY_DELAY": os.environ.get("GDAL_HTTP_RETRY_DELAY", str(retry_delay_s()))}


def describe(uri: str, err: BaseException) -> str:
    """``s3://b/k: SlowDown: Please reduce ... (after 5 retries)`` on one line."""
    cause = err.__cause__ or err
    code = getattr(cause, "response", {}).get("Error", {}).get("Code", "") if \
        hasattr(cause, "response") else ""
    text = " ".join(str(err).split()) or type(err).__name__
    head = f"{code}: " if code and code not in text else ""
    return f"{uri}: {head}{type(err).__name__}: {text[:300]} (after {max_retries()} retries)"


@contextlib.contextmanager
def naming(uri: str):
    """Re-raise an S3 client error of the block as :class:`S3Failure` naming ``uri`` (a missing
    object and refused credentials keep their types: callers test for them)."""
    try:
        yield
    except (FileNotFoundError, PermissionError, S3Failure):
        raise
    except OSError as err:
        raise S3Failure(describe(uri, err)) from err

