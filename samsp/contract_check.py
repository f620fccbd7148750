"""Does the data fit the model? A bundle's input contract (``bundle.json`` ``input``,
samsp/contract.py) checked against what a job is about to feed the model -- wherever a model
meets data: the segment job's planning (per scene, through jobs/inference/contract_check.py),
``samsp.segment_file`` (per image), the crack sweep and evaluation (per run).

Pure functions over the contract as a plain dict and a :class:`SceneFacts`: no I/O and no torch
(the segment driver imports them; ``import samsp`` loads torch only when a model name is used).
Each check returns a list of :class:`Problem`:

- ``error``: the output would be silently wrong (a road model trained on 3-band uint8 photos
  fed a 1-band uint16 panchromatic tile, replicated to grey "RGB"): the scene fails with the
  reason, unless the operator chose the bands (``radiometry.bands``) or asked for warnings only;
- ``warning``: it runs, and the reason is logged and kept (status.json ``warnings``, report).

The rules (README "Radiometry and bands"):

- bands: fewer bands than the model was trained on is an error (samsp would invent the missing
  ones by replication or averaging); more is a warning (samsp feeds the first three, a false
  colour when the bands are not red, green, blue); band names that differ from the training
  scenes' warn. A bundle ``band_map`` bridges any count it fits; one that indexes past the
  scene's bands is an error whatever the contract (the tiles would fail anyway).
- GSD: a scene's pixel size (projected CRS) more than ``gsd_tolerance`` times finer or coarser
  than the training scenes' warns: objects appear at a scale the model never learned.
- dtype and radiometry: uint16 or float scenes for a model of uint8 photos are fine (the
  percentile stretch maps them; the job records that it did); a model trained on stretched
  scenes fed uint8 unchanged, or stretched between other percentiles, warns.

An unknown contract (bundles written before it existed) checks only the band map: today's
behaviour. A mixture's contract is checked member by member; the best-fitting member counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .contract import MIXED  # a field a mixture's members disagree on (pydantic, no torch)

ERROR, WARNING = "error", "warning"
DEFAULT_GSD_TOLERANCE = 2.0
RGB = ("red", "green", "blue")


@dataclass(frozen=True)
class Problem:
    level: str   # ERROR | WARNING
    reason: str  # one line, for the person running the job


@dataclass(frozen=True)
class SceneFacts:
    """What a job feeds the model from one scene or image."""

    count: int                                   # bands read, before samsp's mapping to three
    dtype: str                                   # numpy dtype name of the source pixels
    band_names: tuple = field(default_factory=tuple)  # the read bands' descriptions (None: none)
    gsd_m: float | None = None                   # pixel side in metres (None: unknown)
    radiometry: dict | None = None               # {"mode", "percentiles"} the job applies
    chosen: bool = False                         # the operator named the bands (radiometry.bands)


def scene_gsd_m(crs, transform, georeferenced: bool) -> float | None:
    """Mean pixel side in metres when ``crs`` is projected (any linear unit, converted); None
    for unreferenced images and geographic CRSs (degrees are no distance). Training computes
    the contract's ``gsd_m`` the same way (jobs/training/contract.py)."""
    if not georeferenced or crs is None or not crs.is_projected:
        return None
    try:
        _, to_metres = crs.linear_units_factor
    except Exception:  # noqa: BLE001 - a CRS rasterio cannot give units for: unknown
        return None
    return float((abs(transform.a) + abs(transform.e)) / 2 * to_metres)


def _plural(n: int, word: str = "band") -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def describe_model(contract: dict) -> str:
    """``3 bands (red, green, blue) of uint8 photos``: what the contract says the model takes."""
    n, names = contract.get("channels"), contract.get("band_names")
    decoded = contract.get("bands") is None  # no band selection: images decoded to RGB
    photos = decoded and contract.get("gsd_m") is None
    if not isinstance(names, list):
        names = list(RGB) if n == 3 and decoded else None
    text = _plural(n) + (f" ({', '.join(names)})" if names else "")
    dtype = contract.get("dtype")
    kind = "photos" if photos else "scenes"
    return f"{text} of {dtype} {kind}" if dtype != MIXED else f"{text} of {kind}"


def describe_scene(facts: SceneFacts) -> str:
    """``1 band uint16`` (with the bands' names when every one has one)."""
    names = [n for n in facts.band_names if n]
    named = f" ({', '.join(names)})" if names and len(names) == facts.count else ""
    return f"{_plural(facts.count)} {facts.dtype}{named}"


def check_band_map(band_map, count: int) -> list[Problem]:
    """A bundle band map must name three of the bands read (0-based)."""
    if not band_map:
        return []
    band_map = list(band_map)
    if len(band_map) == 3 and all(0 <= int(b) < count for b in band_map):
        return []
    return [Problem(ERROR, f"the bundle's band_map {band_map} (0-based) needs "
                           f"{max(band_map) + 1} bands; the scene gives {_plural(count)}: give "
                           f"radiometry.bands so that the map finds its bands")]


def check_bands(contract: dict, facts: SceneFacts, band_map=None) -> list[Problem]:
    """Band count and names against the contract's ``channels`` / ``band_names``."""
    channels = contract.get("channels")
    if band_map or not isinstance(channels, int) or isinstance(channels, bool):
        return []  # a band map bridges any count it fits (check_band_map); "mixed": no rule
    model, scene, n = describe_model(contract), describe_scene(facts), facts.count
    if n < channels:
        if facts.chosen:  # the operator picked them: run, but say what samsp does
            return [Problem(WARNING, f"model expects {model}; radiometry.bands gives "
                                     f"{_plural(n)}: samsp fills the rest from them")]
        return [Problem(ERROR, f"model expects {model}; scene has {scene}: give "
                               f"radiometry.bands or a bundle band_map")]
    if n > channels:
        # more than three: samsp's rule is the first three (no band name said red/green/blue)
        what = "its bands 1-3" if n > 3 else "all of them"
        unnamed = " and none is named red, green, blue" if n > 3 and not facts.chosen else ""
        return [Problem(WARNING, f"model expects {model}; scene has {scene}{unnamed}: samsp "
                                 f"feeds {what} ({_bands_hint(contract)})")]
    return _check_names(contract, facts)


def _bands_hint(contract: dict) -> str:
    """How to choose the bands, with the training scenes' own when the contract has them."""
    bands = contract.get("bands")
    return (f"radiometry.bands: {bands} as in training" if isinstance(bands, list)
            else "radiometry.bands chooses")


def _check_names(contract: dict, facts: SceneFacts) -> list[Problem]:
    want = contract.get("band_names")
    have = list(facts.band_names)
    if not isinstance(want, list) or len(want) != len(have) or not all(have):
        return []  # unnamed on either side: nothing to compare
    if [w.strip().lower() for w in want] == [h.strip().lower() for h in have]:
        return []
    return [Problem(WARNING, f"scene bands are {', '.join(have)}; the model was trained on "
                             f"{', '.join(want)} ({_bands_hint(contract)})")]


def _stretch_text(radiometry: dict) -> str:
    lo, hi = radiometry.get("percentiles") or (None, None)
    return f"{lo:g}-{hi:g} %" if lo is not None else "percentiles"


def check_radiometry(contract: dict, facts: SceneFacts) -> list[Problem]:
    """How pixels reach uint8 here against how they did in training (uint8 photos from a
    stretched uint16 scene are fine: that is what the stretch is for)."""
    want, have = contract.get("radiometry"), facts.radiometry
    if not isinstance(want, dict) or not have or want.get("mode") != "stretch":
        return []
    trained = f"{contract.get('dtype')} scenes stretched {_stretch_text(want)}"
    if have.get("mode") == "identity":
        return [Problem(WARNING, f"model was trained on {trained}; this {facts.dtype} scene "
                                 f"goes to it unchanged (radiometry.uint8_passthrough: false "
                                 f"stretches it)")]
    w, h = want.get("percentiles"), have.get("percentiles")
    if w and h and [float(v) for v in w] != [float(v) for v in h]:
        return [Problem(WARNING, f"model was trained on {trained}; this run stretches "
                                 f"{_stretch_text(have)} (radiometry.percentiles)")]
    return []


def check_gsd(contract: dict, gsd_m: float | None,
              tolerance: float = DEFAULT_GSD_TOLERANCE) -> list[Problem]:
    """The scene's pixel size against the training scenes' (both known, metres)."""
    want = contract.get("gsd_m")
    if not gsd_m or isinstance(want, bool) or not isinstance(want, (int, float)) or want <= 0:
        return []
    ratio = max(gsd_m, want) / min(gsd_m, want)
    if ratio <= tolerance:
        return []
    how = "coarser" if gsd_m > want else "finer"
    return [Problem(WARNING, f"scene GSD {gsd_m:.3g} m, model trained at {want:.3g} m "
                             f"({ratio:.3g}x {how}, over input.gsd_tolerance {tolerance:g}x): "
                             f"objects appear at a scale the model never learned")]


def _check_one(contract: dict, facts: SceneFacts, band_map, tolerance: float) -> list[Problem]:
    return (check_bands(contract, facts, band_map) + check_radiometry(contract, facts)
            + check_gsd(contract, facts.gsd_m, tolerance))


def check_scene(contract: dict | None, facts: SceneFacts, band_map=None,
                gsd_tolerance: float = DEFAULT_GSD_TOLERANCE) -> list[Problem]:
    """Every check for one scene: the band map always, the contract's rules when it is known
    (a mixture's best-fitting member: fewest errors, then fewest warnings)."""
    problems = check_band_map(band_map, facts.count)
    if not contract:
        return problems
    members = contract.get("members") or {}
    candidates = [_check_one(c, facts, band_map, gsd_tolerance) for c in members.values()] or \
        [_check_one(contract, facts, band_map, gsd_tolerance)]
    best = min(candidates, key=lambda ps: (sum(p.level == ERROR for p in ps), len(ps)))
    return problems + best


def split(problems: list[Problem], mode: str = "error") -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` as reasons, under ``input.contract_check``: ``error`` keeps the
    levels, ``warn`` turns errors into warnings (the operator takes the risk), ``off`` drops
    everything."""
    if mode == "off":
        return [], []
    errors = [p.reason for p in problems if p.level == ERROR]
    warnings = [p.reason for p in problems if p.level != ERROR]
    return (errors, warnings) if mode == "error" else ([], errors + warnings)


__all__ = ["ERROR", "WARNING", "DEFAULT_GSD_TOLERANCE", "Problem", "SceneFacts", "check_band_map",
           "check_bands", "check_gsd", "check_radiometry", "check_scene", "describe_model",
           "describe_scene", "scene_gsd_m", "split"]
