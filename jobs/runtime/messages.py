"""One-line messages: what a status row, a manifest row, a log line or a report says about a
failure. Every failure text of the jobs goes through here, so it is one line and bounded."""
from __future__ import annotations

import time

from ingest.errors import SceneError, one_line


def error_line(exc: BaseException, limit: int = 400) -> str:
    """``Type: message`` of an exception on one line; a bare ``Type`` when it has no message.

    ingest's ``SceneError``s are written for people already: they keep up to 500 characters.
    """
    msg = one_line(exc, 500 if isinstance(exc, SceneError) else limit)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def utc_now() -> str:
    """UTC time as ISO 8601 to the second (``2026-12-06T17:30:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
