"""What a scene evaluation reads: georeferenced scenes (any raster ``ingest.open_scene`` opens:
GeoTIFF/COG/Zarr, local or s3://) paired with their labels -- a label raster on the same grid, or
a vector layer (GeoJSON/GeoParquet/FlatGeobuf/GeoPackage) burnt onto the scene's grid window by
window by ``ingest.labels.VectorLabels``, the training job's own reader (same options, same
pixels as one ``rasterio.features.rasterize`` of the whole layer).

The image goes through the segment job's radiometry: the selected bands, uint8 passed through,
anything else stretched by the scene-wide percentiles of a bounded sample
(``ingest.Radiometry.fit``), nodata invalid; only the leading bands the model reads are kept.
Every check that can fail runs when the pair is opened, before any inference, and fails as one
``EvalError`` line naming the scene and the file. The bundle's input contract is checked there
too (``check_contract``: jobs/inference/contract_check.py, as the segment job checks a scene), but
a scene the model cannot read fails alone: the others are scored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Sequence

import numpy as np

import ingest
from ingest.errors import LabelSourceError, SceneError, one_line
from ingest.labels import LabelOptions, VectorLabels, is_vector_label
from jobs.inference.contract_check import (DEFAULT_GSD_TOLERANCE, SceneFacts,
                                           check_scene, scene_gsd_m, split)
from jobs.inference.resampling import Resampling, resampling_for
from jobs.runtime.errors import EvalError

#: pixels sampled to fit the stretch: the segment job's default (radiometry.max_pixels)
SAMPLE_PIXELS = 1_000_000


@dataclass(frozen=True)
class ScenePair:
    image: str
    labels: str
    name: str  # the scene's output folder: <out>/<name>/errors.tif


def _stem(uri: str) -> str:
    name = PurePosixPath(str(uri).rstrip("/")).name
    for ext in (".zarr", ".tiff", ".tif", ".vrt", ".jp2", ".img"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0] if "." in name else name


def scene_pairs(images: Sequence[str], labels: Sequence[str]) -> list[ScenePair]:
    """``--image``/``--labels`` paired in order; names from the image stems, made unique."""
    if len(images) != len(labels):
        raise EvalError(f"give one --labels per --image (paired in order): got {len(images)} "
                        f"--image and {len(labels)} --labels")
    pairs, seen = [], set()
    for i, (image, label) in enumerate(zip(images, labels)):
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in _stem(image))[:80]
        name = base or f"scene{i}"
        if name in seen:  # two scenes of the same name in different folders
            name = f"{name}_{i}"
        seen.add(name)
        pairs.append(ScenePair(str(image), str(label), name))
    return pairs


def label_options(burn: int = 1, class_field: str | None = None, line_buffer_m: float = 0.0,
                  ignore_field: str | None = None, ignore_value=None) -> LabelOptions:
    """The vector label options (the training config's names), checked."""
    try:
        return LabelOptions(burn=burn, class_field=class_field, line_buffer_m=line_buffer_m,
                            ignore_field=ignore_field, ignore_value=ignore_value)
    except ValueError as err:
        raise EvalError(f"label options: {err}") from None


def keep_bands(count: int, band_map) -> int | None:
    """Leading bands the model reads (the segment job's rule: samsp maps more than three bands
    to the first three, or to ``band_map``); None = all."""
    if band_map:
        return max(band_map) + 1 if max(band_map) + 1 < count else None
    return 3 if count > 3 else None


@dataclass
class ScenePlan:
    """A checked pair (small: no pixels): its radiometry, the bands the model reads, the label
    options and facts for the summary; ``open_plan`` opens it for reading."""

    pair: ScenePair
    options: LabelOptions
    radiometry: ingest.Radiometry
    bands: list[int] | None
    keep: int | None
    label_kind: str  # "vector" | "raster"
    facts: dict
    grid: dict  # height, width, crs (WKT or None), transform (6 floats)
    # what the model is fed (the input contract's side of the check: count, dtype, GSD, ...)
    input_facts: SceneFacts | None = None
    error: str | None = None  # the contract's errors: the scene is not scored (check_contract)
    warnings: list[str] = field(default_factory=list)  # the contract's warnings (summary.json)
    # --resample auto: how the scene is tiled to reach the model's GSD (None: read as it is)
    resampling: Resampling | None = None


@dataclass
class OpenedScene:
    """A planned scene opened for reading: the image ``Scene`` and the label reader (a
    ``VectorLabels`` or a label raster's ``Scene``)."""

    plan: ScenePlan
    scene: ingest.Scene
    labels: object

    def read_image(self, window) -> tuple[np.ndarray, np.ndarray]:
        """Boundless ``(uint8 [C,h,w], valid [h,w])`` of a window: radiometry applied, outside
        the scene and nodata invalid (and 0)."""
        data, valid = self.scene.read(window)
        if self.plan.keep:
            data = data[: self.plan.keep]
        return np.ascontiguousarray(self.plan.radiometry.apply(data, valid), np.uint8), valid

    def close(self) -> None:
        self.scene.close()
        if isinstance(self.labels, ingest.Scene):
            self.labels.close()

    def read_labels(self, window, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """``(target bool [h,w], label validity bool [h,w])`` of a window inside the scene."""
        if isinstance(self.labels, VectorLabels):
            try:
                label, valid = self.labels.read(window)
            except LabelSourceError as err:
                raise EvalError(f"scene {self.plan.pair.name}: {err}") from None
        else:
            # A label raster may declare nodata=0 (= background): its validity is not used,
            # as in training (jobs/training/raster_source.py).
            label = self.labels.read(window)[0][0]
            valid = np.ones(label.shape, bool)
        return label > threshold, valid


def _check_label_raster(pair: ScenePair, scene: ingest.Scene) -> None:
    """A label raster must lie on the scene's grid: same size, and same CRS and transform
    when both are georeferenced (a pixel-grid mask of a plain image has neither)."""
    with ingest.open_scene(pair.labels, bands=[1], check_empty=False) as label:
        _same_grid(pair, scene, label)


def _same_grid(pair: ScenePair, scene: ingest.Scene, label: ingest.Scene) -> None:
    if (label.height, label.width) != (scene.height, scene.width):
        raise EvalError(f"scene {pair.name}: label raster {pair.labels} is "
                        f"{label.height}x{label.width} but image {pair.image} is "
                        f"{scene.height}x{scene.width}")
    if label.is_georeferenced and scene.is_georeferenced and (
            label.crs != scene.crs or not label.transform.almost_equals(scene.transform)):
        raise EvalError(f"scene {pair.name}: label raster {pair.labels} is not on the image's "
                        f"grid (CRS or transform differ from {pair.image})")


def _vector_labels(pair: ScenePair, scene: ingest.Scene, options: LabelOptions) -> VectorLabels:
    if not scene.is_georeferenced:
        raise EvalError(f"scene {pair.name}: image {pair.image} has no CRS, so vector labels "
                        f"{pair.labels} cannot be placed on it")
    return VectorLabels(pair.labels, options, scene.crs, scene.transform, scene.height,
                        scene.width)


def _grid(scene: ingest.Scene) -> dict:
    return {"height": scene.height, "width": scene.width,
            "crs": scene.crs.to_wkt() if scene.crs is not None else None,
            "transform": [float(v) for v in tuple(scene.transform)[:6]]}


def plan_scene(pair: ScenePair, options: LabelOptions, bands: Sequence[int] | None = None,
               percentiles: tuple[float, float] = (2.0, 98.0),
               sample_pixels: int = SAMPLE_PIXELS, band_map=None) -> ScenePlan:
    """Open and check one pair, fit its radiometry (``EvalError``, one line, when it cannot be
    evaluated). Nothing of the scene's pixels is kept: scenes are reopened to be scored."""
    bands = [int(b) for b in bands] if bands else None
    try:
        with ingest.storage.gdal_env():
            with ingest.open_scene(pair.image, bands=bands, sample_pixels=sample_pixels) as scene:
                if is_vector_label(pair.labels):
                    kind, facts = "vector", _vector_labels(pair, scene, options).check()
                else:
                    _check_label_raster(pair, scene)
                    kind, facts = "raster", {"labels": pair.labels, "format": "raster"}
                # the segment job's policy: uint8 passes through, other dtypes are stretched
                radiometry = ingest.Radiometry.for_scene(
                    scene, percentiles=tuple(percentiles), max_pixels=sample_pixels)
                grid, count = _grid(scene), scene.count
                input_facts = _input_facts(scene, radiometry, chosen=bands is not None)
    except EvalError:
        raise
    except (SceneError, LabelSourceError, ValueError, OSError) as err:
        raise EvalError(f"scene {pair.name}: {one_line(err)}") from None
    keep = keep_bands(count, band_map)
    if keep:  # only the bands the model reads are read (the segment job's keep_bands)
        radiometry = ingest.Radiometry.from_dict(
            {**radiometry.to_dict(), "lo": radiometry.lo[:keep], "hi": radiometry.hi[:keep]})
    return ScenePlan(pair, options, radiometry, bands, keep, kind, facts, grid, input_facts)


def _input_facts(scene: ingest.Scene, radiometry: ingest.Radiometry, chosen: bool) -> SceneFacts:
    """The scene as the contract checks see it (the segment job's facts of a scene)."""
    pct = radiometry.percentiles
    return SceneFacts(count=scene.count, dtype=str(scene.dtype),
                      band_names=tuple(scene.band_names),
                      gsd_m=scene_gsd_m(scene.crs, scene.transform, scene.is_georeferenced),
                      radiometry={"mode": radiometry.mode,
                                  "percentiles": list(pct) if pct else None},
                      chosen=chosen)


#: what the contract's reasons call radiometry.bands, and how to score such a scene anyway
CONTRACT_HINT = " (evaluate: --bands chooses the bands; --contract-check warn scores it anyway)"


def check_contract(plan: ScenePlan, contract: dict | None, band_map=None, mode: str = "error",
                   gsd_tolerance: float = DEFAULT_GSD_TOLERANCE,
                   resample_tiling: tuple[int, int, int] | None = None) -> ScenePlan:
    """The planned scene against the bundle's input contract (jobs.inference.contract_check, as
    the segment job checks a scene; ``mode`` its ``input.contract_check``): ``plan.error`` is
    every error's reason on one line (the scene is not scored), ``plan.warnings`` the rest.
    ``resample_tiling`` (``--resample auto``: the model's frame, the run's tile and overlap): a scene off the
    model's GSD is tiled to reach it (``plan.resampling``, as segment's radiometry.resample)
    and checked at that GSD."""
    facts, problems = plan.input_facts, []
    if facts is not None and resample_tiling is not None and contract:
        plan.resampling, problems = resampling_for(contract, facts.gsd_m, *resample_tiling,
                                                   gsd_tolerance, "--resample auto")
        if plan.resampling is not None:
            facts = dataclasses.replace(facts, gsd_m=plan.resampling.model_gsd_m)
    problems = (check_scene(contract, facts, band_map, gsd_tolerance) + problems) \
        if facts is not None else []
    errors, plan.warnings = split(problems, mode)
    plan.error = "; ".join(errors) + CONTRACT_HINT if errors else None
    return plan


def open_plan(plan: ScenePlan) -> OpenedScene:
    """The planned scene and its label reader, opened (checked already: no emptiness check)."""
    pair = plan.pair
    try:
        scene = ingest.open_scene(pair.image, bands=plan.bands, check_empty=False)
        if plan.label_kind == "vector":
            labels = _vector_labels(pair, scene, plan.options)
        else:
            labels = ingest.open_scene(pair.labels, bands=[1], check_empty=False)
    except (SceneError, LabelSourceError) as err:
        raise EvalError(f"scene {pair.name}: {one_line(err)}") from None
    return OpenedScene(plan, scene, labels)


__all__ = ["OpenedScene", "SAMPLE_PIXELS", "ScenePair", "ScenePlan", "check_contract",
           "keep_bands", "label_options", "open_plan", "plan_scene", "scene_pairs"]
