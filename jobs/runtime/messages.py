"""One-line messages: what a status row, a manifest row, a log line or a report says about a
failure. Every failure text of the jobs goes through here, so it is one line and bounded."""
from __future__ import annotations

import re
import time

from ingest.errors import SceneError, one_line


def error_line(exc: BaseException, limit: int = 400) -> str:
    """``Type: message`` of an exception on one line; a bare ``Type`` when it has no message.

    ingest's ``SceneError``s are written for people already: they keep up to 500 characters.
    """
    msg = one_line(exc, 500 if isinstance(exc, SceneError) else limit)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


#: samsp's exceptions that mean "this model cannot run" (a usage error of the whole job, exit 2),
#: matched by name: the driver of a Ray run never imports samsp (torch), and Ray hands an actor's
#: exception over as text inside its own error.
MODEL_ERRORS = ("BundleError", "CheckpointError", "PrecisionError")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def root_cause(exc: BaseException) -> BaseException:
    """The exception at the bottom of a chain: Ray's ``cause`` (RayTaskError), then
    ``__cause__``/``__context__``."""
    seen = {id(exc)}
    while True:
        nxt = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
        if not isinstance(nxt, BaseException) or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def model_error_line(exc: BaseException) -> str | None:
    """``BundleError: <why>`` when ``exc`` -- or the error text Ray wrapped around it -- comes
    from a model that cannot load or run; None otherwise. ANSI colour codes are dropped."""
    cause = root_cause(exc)
    if type(cause).__name__ in MODEL_ERRORS:
        return f"{type(cause).__name__}: {one_line(ANSI.sub('', str(cause)), 400)}"
    text = ANSI.sub("", f"{exc}")
    for name in MODEL_ERRORS:
        at = text.rfind(f"{name}: ")
        if at >= 0:
            return one_line(text[at:].splitlines()[0], 400)
    return None


def utc_now() -> str:
    """UTC time as ISO 8601 to the second (``2026-12-06T17:30:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
