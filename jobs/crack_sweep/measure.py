"""The sweep's crack sizes in millimetres and its width classes (``measure:`` in the config).

A photo's pixel size (mm per pixel) comes from ``measure.pixel_size_csv`` (archives shot at
different distances: one row per image) or else ``measure.pixel_size_mm`` (one value for all);
with neither, only the pixel columns are reported. The CSV has a header with ``image`` and
``pixel_size_mm``; ``image`` is matched against the image id, its file name, or its input URI.
A malformed CSV is a config error before any photo is read; an image missing from it falls back
to ``measure.pixel_size_mm`` with a warning.

Classes: ``width_classes_mm`` are ascending thresholds, ``class_names`` one more name than
thresholds; a width ``w`` gets the first class whose threshold is above it (``w < 0.3`` ->
hairline, ``0.3 <= w < 1.0`` -> fine, else wide). A crack line (one centre-line of
``ingest.vectors.centerlines``) is classed by its **max** width: inspection guidelines class a
crack by its widest opening, and a mean would under-rate a crack that opens at one end. An
image's ``width_class`` is the class of its widest line. A line's width is its centre-line width
away from junctions and ends (jobs/crack_sweep/cracks.py), not the raw maximum there.

Severity (``report.sort_by: severity``): the sum over an image's crack lines of
``class rank × length``, the rank 1 for the first class (hairline), 2 for the next, ...: a
metre of hairline weighs as much as half a metre of fine crack. With a pixel size the lines are
classed by ``width_classes_mm`` and their lengths counted in mm (``severity_basis: mm``);
without one by ``width_classes_px`` (unset: ``width_classes_mm`` at ``NOMINAL_MM_PER_PX``,
0.1 mm per px: [3, 10] px) and in px (``severity_basis: px``) -- so in an archive where
only some photos have a pixel size, the two kinds of score do not compare (the report says which
each image got).
"""
from __future__ import annotations

import bisect
import csv
import io
import logging
import os
import re
from typing import Optional

from pydantic import Field, field_validator

from ingest import storage
from jobs.crack_sweep.cracks import NETWORK_GAP_PX, WIDTH_METHOD
from jobs.crack_sweep.outputs import photo_features_uri, photo_record_uri, record_json
from jobs.runtime.config import ConfigError, StrictModel

log = logging.getLogger("samsp.sweep")

CSV_COLUMNS = ("image", "pixel_size_mm")
#: the pixel size the px width classes assume when ``width_classes_px`` is not set (0.3 mm is
#: then 3 px): a round guess for close-range photos, not a measurement -- an archive with a known
#: scale sets ``pixel_size_mm``/``pixel_size_csv`` (or its own ``width_classes_px``)
NOMINAL_MM_PER_PX = 0.1


class MeasureConfig(StrictModel):
    # mm per pixel of every photo (None = unknown: pixel columns only).
    pixel_size_mm: Optional[float] = Field(default=None, gt=0)
    # CSV (path or URI) with columns image,pixel_size_mm: one value per image.
    pixel_size_csv: Optional[str] = None
    # Width class thresholds (mm, ascending) and their names (one more than thresholds).
    width_classes_mm: list[float] = Field(default_factory=lambda: [0.3, 1.0])
    # (validate_default: changing only the thresholds must still be checked against the names)
    class_names: list[str] = Field(default_factory=lambda: ["hairline", "fine", "wide"],
                                   validate_default=True)

    # Class thresholds (px, ascending) for the severity of photos without a pixel size, one per
    # width_classes_mm; None = width_classes_mm read at NOMINAL_MM_PER_PX ([3, 10] px).
    width_classes_px: Optional[list[float]] = None
    # Crack pieces at most this many px apart are one crack network (the mask dilated by a
    # disk of radius network_gap_px // 2 before counting: jobs/crack_sweep/cracks.py).
    network_gap_px: int = Field(default=NETWORK_GAP_PX, ge=0)

    @field_validator("width_classes_mm")
    @classmethod
    def _ascending(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"thresholds must be positive and strictly ascending, got {v}")
        return v

    @field_validator("class_names")
    @classmethod
    def _one_more_name(cls, v: list[str], info) -> list[str]:
        thresholds = info.data.get("width_classes_mm")
        if thresholds is not None and len(v) != len(thresholds) + 1:
            raise ValueError(f"needs {len(thresholds) + 1} names for {len(thresholds)} "
                             f"threshold(s) in measure.width_classes_mm, got {len(v)}: {v}")
        bad = [n for n in v if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", n)]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"names must be distinct words (letters, digits, _ or -; they "
                             f"become report columns), got {v}")
        return v

    @field_validator("width_classes_px")
    @classmethod
    def _as_many_px(cls, v: Optional[list[float]], info) -> Optional[list[float]]:
        if v is None:
            return v
        cls._ascending(v)
        thresholds = info.data.get("width_classes_mm")
        if thresholds is not None and len(v) != len(thresholds):
            raise ValueError(f"needs {len(thresholds)} threshold(s), one per "
                             f"measure.width_classes_mm {thresholds}, got {v}")
        return v

    @property
    def px_thresholds(self) -> list[float]:
        """The px class thresholds of photos without a pixel size (``width_classes_px``)."""
        if self.width_classes_px is not None:
            return list(self.width_classes_px)
        return [round(t / NOMINAL_MM_PER_PX, 6) for t in self.width_classes_mm]


# --------------------------------------------------------------------------- pixel sizes

def read_pixel_size_csv(uri: str) -> dict[str, float]:
    """``{image: mm per pixel}`` of the CSV; anything malformed is a :class:`ConfigError`
    naming the file and the line."""

    where = f"measure.pixel_size_csv {uri}"
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(f"{where}: cannot be read ({type(err).__name__}: {err})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a UTF-8 text file") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(f"{where}: needs a header with columns {', '.join(CSV_COLUMNS)} "
                          f"(missing {', '.join(missing)}; got {reader.fieldnames})")
    sizes: dict[str, float] = {}
    for row in reader:
        line = reader.line_num
        image, raw = (row.get("image") or "").strip(), (row.get("pixel_size_mm") or "").strip()
        if not image:
            raise ConfigError(f"{where} line {line}: empty image")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{where} line {line}: pixel_size_mm {raw!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise ConfigError(f"{where} line {line}: pixel_size_mm must be > 0, got {raw}")
        if sizes.get(image, value) != value:
            raise ConfigError(f"{where} line {line}: {image} listed twice with different "
                              f"sizes ({sizes[image]} and {value})")
        sizes[image] = value
    if not sizes:
        raise ConfigError(f"{where}: no rows")
    return sizes


class PixelSizes:
    """Which mm-per-pixel each photo gets (see the module docstring)."""

    def __init__(self, cfg: MeasureConfig):
        self.default = cfg.pixel_size_mm
        self.table = read_pixel_size_csv(cfg.pixel_size_csv) if cfg.pixel_size_csv else None
        self.warned: set[str] = set()  # one warning per photo, not one per lookup

    def lookup(self, photo_id: str, uri: str) -> tuple[Optional[float], str]:
        """``(mm per pixel or None, source: "csv" | "global" | "none")``; warns on a fallback."""
        if self.table is not None:
            for key in (photo_id, os.path.basename(uri.rstrip("/")), uri):
                if key in self.table:
                    return self.table[key], "csv"
            if photo_id not in self.warned:
                self.warned.add(photo_id)
                log.warning("photo %s (%s) is not in measure.pixel_size_csv: %s", photo_id, uri,
                            f"using measure.pixel_size_mm = {self.default}" if self.default
                            else "no pixel size, pixel measurements only")
        if self.default is not None:
            return self.default, "global"
        return None, "none"


# --------------------------------------------------------------------------- classes

def width_class(width_mm: float, thresholds: list[float], names: list[str]) -> str:
    """The class of a width: below the first threshold -> names[0], ... (module docstring)."""
    return names[bisect.bisect_right(thresholds, width_mm)]


def class_columns(names: list[str]) -> list[str]:
    """The report's per-class columns, in class order."""
    return [c for n in names for c in (f"cracks_{n}", f"length_mm_{n}")]


def measured_with(mm: Optional[float], cfg: MeasureConfig) -> list:
    """What a record's mm and severity columns depend on: a rerun with other settings (or a
    record from before the centre-line width or the severity) measures again."""
    return [mm, list(cfg.width_classes_mm), list(cfg.class_names), cfg.px_thresholds,
            WIDTH_METHOD]


def severity(line_lengths_px, line_max_widths_px, mm: Optional[float],
             cfg: MeasureConfig) -> tuple[float, str]:
    """``(score, basis)``: the sum over the lines of class rank (1 = the first class) × length,
    in mm with a pixel size, else in px with the px classes (module docstring)."""
    thresholds, scale, basis = ((cfg.px_thresholds, 1.0, "px") if mm is None
                                else (cfg.width_classes_mm, float(mm), "mm"))
    score = sum((bisect.bisect_right(thresholds, float(w) * scale) + 1) * float(length) * scale
                for length, w in zip(line_lengths_px, line_max_widths_px))
    return round(score, 3), basis


def physical_measurements(metrics: dict, line_lengths_px, line_max_widths_px,
                          mm: Optional[float], source: str, cfg: MeasureConfig) -> dict:
    """The mm and severity columns of one photo's record from its pixel ``metrics`` and its
    centre-lines (length and max width in px, one entry per line); the mm ones all None
    without a pixel size."""
    score, basis = severity(line_lengths_px, line_max_widths_px, mm, cfg)
    out: dict = {"pixel_size_mm": mm, "pixel_size_source": source,
                 "measured_with": measured_with(mm, cfg), "severity": score,
                 "severity_basis": basis}
    keys = ["skeleton_length_mm", "max_width_mm", "mean_width_mm", "width_class",
            *class_columns(cfg.class_names)]
    if mm is None:
        return {**out, **dict.fromkeys(keys)}
    counts = dict.fromkeys(cfg.class_names, 0)
    lengths = dict.fromkeys(cfg.class_names, 0.0)
    for length, width in zip(line_lengths_px, line_max_widths_px):
        name = width_class(float(width) * mm, cfg.width_classes_mm, cfg.class_names)
        counts[name] += 1
        lengths[name] += float(length) * mm
    widest = max(line_max_widths_px, default=None)
    out.update({
        "skeleton_length_mm": round(sum(float(x) for x in line_lengths_px) * mm, 3),
        "max_width_mm": round(metrics["max_width_px"] * mm, 4),
        "mean_width_mm": round(metrics["mean_width_px"] * mm, 4),
        "width_class": (width_class(float(widest) * mm, cfg.width_classes_mm, cfg.class_names)
                        if widest is not None else None),
    })
    for name in cfg.class_names:
        out[f"cracks_{name}"] = counts[name]
        out[f"length_mm_{name}"] = round(lengths[name], 3)
    return out


def remeasure_records(output: str, records: dict[str, dict], sizes: PixelSizes,
                      cfg: MeasureConfig) -> dict[str, dict]:
    """Records of earlier runs measured with another pixel size or other classes get their mm
    columns again from their ``features/<id>.parquet`` (length and max width px per line) and
    are written back; records without a features file are left as they are."""
    import pyarrow.parquet as pq

    for rid, rec in records.items():
        if rec.get("status") != "ok":
            continue
        mm, source = sizes.lookup(rid, rec.get("input", ""))
        if rec.get("measured_with") == measured_with(mm, cfg):
            continue
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(photo_features_uri(output, rid))),
                                  columns=["length", "max_width"])
        except FileNotFoundError:
            continue
        rec.update(physical_measurements(rec, table["length"].to_pylist(),
                                         table["max_width"].to_pylist(), mm, source, cfg))
        storage.write_bytes(photo_record_uri(output, rid), record_json(rec))
    return records


__all__ = ["remeasure_records", "MeasureConfig", "PixelSizes", "class_columns", "physical_measurements",
           "read_pixel_size_csv", "severity", "width_class"]
