"""Headless Chromium for pages the project writes: a screenshot and the page's console lines.

Debian's ``chromium`` package (``.ci/run`` installs it when missing). With
``--enable-logging=stderr --v=0`` every console message of the page (errors, warnings, logs,
failed resource loads) is printed to stderr as ``...:INFO:CONSOLE(<line>)] "<message>", source:
<url>``; that is how console errors are seen without a DevTools client.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

CONSOLE = re.compile(r"INFO:CONSOLE[^\]]*\] (.*)")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render(page: Path, screenshot: Path, size: str = "1200,900", timeout: float = 90) -> list[str]:
    """Screenshot ``page`` (a local file); returns the console messages it logged."""
    cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
           f"--screenshot={screenshot}", f"--window-size={size}", "--enable-logging=stderr",
           "--v=0", "--no-first-run", "--disable-extensions", f"file://{page.resolve()}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not screenshot.exists():
        raise RuntimeError(f"chromium wrote no screenshot (rc {res.returncode}): {res.stderr[-2000:]}")
    return [m.group(1) for m in CONSOLE.finditer(res.stderr)]
