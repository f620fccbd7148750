"""Exact CRS identity: a code only when the CRS *is* that code's definition, else WKT2.

``rasterio``'s ``CRS.to_epsg()`` / ``to_string()`` accept a 70 %-confidence match: a UTM 18N CRS on
the International 1924 ellipsoid with towgs84 -87,-98,-121 (ED50-like) comes out as EPSG:21818
(Bogota 1975), another datum -- a silent shift of hundreds of metres for every reader that trusts
the code. Every place samsp names a CRS (STAC ``proj:code``, GeoZarr ``proj:code``, stats, logs)
goes through :func:`crs_code`, which takes a candidate from PROJ's identification and keeps it only
when the code's own definition compares equal to the CRS (``OSRIsSame``: names may differ, the
datum, ellipsoid, projection parameters and axis order may not).
"""
from __future__ import annotations

from dataclasses import dataclass

from rasterio.crs import CRS

#: the only authorities samsp names CRSs by (what STAC and GeoZarr readers resolve)
_AUTHORITIES = ("EPSG", "OGC")
#: identification confidence (percent) that proposes a candidate; equality then decides
_CANDIDATE_CONFIDENCE = 20


def _candidates(crs: CRS) -> list[str]:
    found: list[str] = []
    authority = crs.to_authority(confidence_threshold=_CANDIDATE_CONFIDENCE)
    if authority and authority[0].upper() in _AUTHORITIES:
        found.append(f"{authority[0].upper()}:{authority[1]}")
    epsg = crs.to_epsg(confidence_threshold=_CANDIDATE_CONFIDENCE)
    if epsg:
        found.append(f"EPSG:{epsg}")
    if crs.is_geographic:
        found.append("OGC:CRS84")  # lon/lat WGS 84: EPSG:4326 differs in axis order
    return list(dict.fromkeys(found))


def crs_code(crs: CRS | None) -> str | None:
    """``"EPSG:32633"`` (or ``"OGC:CRS84"``) when ``crs`` equals that code's definition, else None."""
    if crs is None:
        return None
    for code in _candidates(crs):
        try:
            if CRS.from_user_input(code) == crs:
                return code
        except Exception:  # noqa: BLE001 - a code PROJ's database cannot build: not a match
            continue
    return None


def crs_wkt2(crs: CRS) -> str:
    """WKT2 (ISO 19162:2019), what ``proj:wkt2`` holds."""
    return crs.to_wkt(version="WKT2_2019")


@dataclass(frozen=True)
class CRSIdentity:
    """How a CRS is named: ``code`` when exact, else ``wkt2`` (always set, for readers that want it)."""

    code: str | None
    wkt2: str

    def label(self) -> str:
        """One string for logs and stats: the code, else the WKT2."""
        return self.code or self.wkt2

    def proj_fields(self) -> dict:
        """``{"proj:code": ...}`` or ``{"proj:wkt2": ...}`` (STAC Projection v2 / GeoZarr proj:)."""
        return {"proj:code": self.code} if self.code else {"proj:wkt2": self.wkt2}


def crs_identity(crs: CRS | None) -> CRSIdentity | None:
    if crs is None:
        return None
    return CRSIdentity(code=crs_code(crs), wkt2=crs_wkt2(crs))


def crs_label(crs: CRS | None) -> str | None:
    """The exact code or the WKT2 of ``crs`` (None for no CRS): never an approximate code."""
    ident = crs_identity(crs)
    return ident.label() if ident is not None else None


__all__ = ["crs_code", "crs_wkt2", "crs_identity", "crs_label", "CRSIdentity"]
