"""Which bands of a many-band scene are red, green and blue, from what the file says about them.

Models take three bands. With no explicit ``bands``, a scene of more than three bands used to
give its first three -- for a Sentinel-2 stack (B01 coastal, B02 blue, B03 green, ...) a false
colour the model never saw. ``rgb_bands`` finds red/green/blue, in this order of trust:

1. GDAL colour interpretation (``RedBand``/``GreenBand``/``BlueBand``), each exactly once;
2. band names (GDAL band descriptions, STAC ``eo:bands`` common names) that are the words
   ``red``/``green``/``blue`` (any case, also ``red (B4)``-style);
3. Sentinel-2 band names (``B01``..``B12``, ``B8A``; ``B4``-style when ``B8A`` is among them,
   so a Landsat 5/7 ``B4`` (near-infrared) is not taken for red): B04, B03, B02.

Anything else gives None and the caller keeps its rule. Pure functions: no I/O.
"""
from __future__ import annotations

import re
from typing import Sequence

RGB = ("red", "green", "blue")
_S2_NAME = re.compile(r"^b(0?[1-9]|1[0-2]|8a)$")
_S2_RGB = ("04", "03", "02")


def _norm(name: str | None) -> str:
    return (name or "").strip().lower()


def _by_colorinterp(colorinterp: Sequence[str] | None) -> list[int] | None:
    names = [_norm(c) for c in colorinterp or ()]
    if all(names.count(c) == 1 for c in RGB):
        return [names.index(c) + 1 for c in RGB]
    return None


def _by_words(names: list[str]) -> list[int] | None:
    found = {}
    for i, name in enumerate(names):
        words = set(re.findall(r"[a-z]+", name))
        hits = [c for c in RGB if c in words]
        if len(hits) == 1:
            found.setdefault(hits[0], []).append(i + 1)
    if all(len(found.get(c, ())) == 1 for c in RGB):
        return [found[c][0] for c in RGB]
    return None


def _by_sentinel2(names: list[str]) -> list[int] | None:
    if not names or not all(_S2_NAME.match(n) for n in names if n):
        return None
    padded = any(re.match(r"^b0\d$", n) for n in names)
    if not (padded or "b8a" in names):
        return None  # "B4" alone could be Landsat 5/7's near-infrared
    index = {n.replace("b0", "b"): i + 1 for i, n in enumerate(names) if n}
    picked = [index.get("b" + code.lstrip("0")) for code in _S2_RGB]
    return picked if all(picked) else None


def rgb_bands(names: Sequence[str | None] = (), colorinterp: Sequence[str] | None = None
              ) -> tuple[list[int], str] | None:
    """``([red, green, blue] 1-based band numbers, how they were found)`` or None."""
    by_ci = _by_colorinterp(colorinterp)
    if by_ci:
        return by_ci, "colour interpretation"
    normed = [_norm(n) for n in names]
    by_words = _by_words(normed)
    if by_words:
        return by_words, "band names"
    by_s2 = _by_sentinel2(normed)
    if by_s2:
        return by_s2, "Sentinel-2 band names"
    return None


__all__ = ["rgb_bands"]
