"""Log hygiene for the batch jobs: what a healthy run prints is the job's own lines.

* Third-party INFO lines that repeat: botocore logs "Found credentials in environment
  variables." for every client it makes (s3fs makes one per thread and event loop: dozens per
  run) -- let through once; stac_geoparquet logs its profiling (CPU %, RSS) at INFO -- WARNING.
* Ray's core worker prints, at error level and from C++ straight to the driver's stderr,
  "Actor ... has constructor arguments in the object store and max_restarts > 0" for every Ray
  Data actor that may restart and for Ray Train's own ``PreemptionWatcher``
  (ray-project/ray#53727): Ray Data itself always passes the
  actors' data context and map transformer as object refs, and our bounded ``max_restarts``
  (lost nodes, fatal CUDA errors) is what makes it print. Those objects are owned and kept
  alive by the driver for the whole dataset, so a restarted actor finds them; the line is
  noise here. :func:`filtered_native_stderr` replaces it with one INFO line saying so. It is
  a file-descriptor filter because no Python logger ever sees the line.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings

from ingest.trust import redact_text

log = logging.getLogger("samsp.logs")

#: (pattern of a native line, the one INFO line said instead, once per run)
HARMLESS_NATIVE_LINES = [
    (re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in "
                rb"the object store and max_restarts > 0"),
     "ray: restartable actors (Ray Data's model actors, Ray Train's controller helpers) keep "
     "their constructor arguments in the object store, owned by this driver for the whole run "
     "(Ray's error-level notice about it, ray-project/ray#53727, is not shown)"),
]


class OncePerMessage(logging.Filter):
    """Lets each distinct message of a logger through once."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        with self._lock:
            if msg in self.seen:
                return False
            self.seen.add(msg)
        return True


class RedactSecrets(logging.Filter):
    """Every URL in a log line without userinfo or signature/credential query parameters
    (``ingest.trust.redact_text``): presigned hrefs and ``s3://KEY:SECRET@`` never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_text(msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def configure_logging(level: str | int = logging.INFO,
                      fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """The jobs' logging: ``fmt`` lines on stderr at ``level``, secrets in URLs redacted."""
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=fmt)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


def quiet_third_party() -> None:
    """Once-only and quieter third-party loggers (see the module docstring)."""
    creds = logging.getLogger("botocore.credentials")
    if not any(isinstance(f, OncePerMessage) for f in creds.filters):
        creds.addFilter(OncePerMessage())
    logging.getLogger("stac_geoparquet").setLevel(logging.WARNING)
    # Ray 2.60 deprecates map_batches(**ray_remote_args) but has no named parameter yet for
    # the two we pass (max_retries: bounded task retries; max_restarts: bounded actor
    # restarts -- the trust boundary's "no input loops forever"); until it has (2.64 removes
    # them), its warning about our own call is noise on every healthy run. Ray installs its
    # own "module" filter for RayDeprecationWarning when ray.util.annotations is first imported,
    # in front of any filter set before: import it first, so that ours comes in front of it.
    try:
        import ray.util.annotations  # noqa: F401
    except ImportError:  # a job without Ray
        pass
    warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated",
                            module=r"jobs\.")
    # Photos (PNG/JPEG) have no geotransform by nature, and georeferencing is checked where it
    # matters (input.require_crs names the scene): rasterio's warning on every open is noise.
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


def quiet_ray_data(ctx) -> None:
    """Ray Data ``DataContext`` settings of a job that logs its own progress line: no progress
    bars (off a terminal they are a block of INFO lines, "Running Dataset ...", every 10 s),
    no WARNING that they are off, and the two execution-start lines (plan, log folder) only
    when this process logs at DEBUG."""
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = logging.getLogger().isEnabledFor(logging.DEBUG)
    # "Progress bars disabled. To enable, ..." (once per process, at WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


@contextlib.contextmanager
def filtered_native_stderr(patterns=HARMLESS_NATIVE_LINES):
    """Route fd 2 through a pipe whose reader drops the known-harmless native lines.

    Everything else is forwarded unchanged and in order (Python's logging writes to fd 2 too).
    On exit fd 2 is restored and the reader drains what is left."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    said: set[int] = set()

    def pump() -> None:
        buf = b""
        with os.fdopen(read_fd, "rb", buffering=0) as src:
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                out = []
                for line in lines:
                    hit = next((i for i, (pat, _) in enumerate(patterns) if pat.search(line)), None)
                    if hit is None:
                        out.append(line + b"\n")
                    elif hit not in said:
                        said.add(hit)
                        out.append(f"INFO {patterns[hit][1]}\n".encode())
                if out:
                    os.write(saved, b"".join(out))
        if buf:
            os.write(saved, buf)

    reader = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join(timeout=5)
        os.close(saved)
