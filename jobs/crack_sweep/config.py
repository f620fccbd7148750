"""Config model of the crack sweep (``configs/sweep.yaml``, ``--set key=value``).

``tiling:``, ``predict:`` and ``ray:`` are the segmentation job's sections (jobs/inference/config.py,
jobs/runtime/ray_config.py); ``measure:`` is jobs/crack_sweep/measure.py's. Every field has a
default, so ``jobs/sweep.py`` runs without a config file."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from jobs.crack_sweep.measure import MeasureConfig
from jobs.inference.config import PredictConfig, TilingConfig
from jobs.runtime.config import StrictModel
from jobs.runtime.ray_config import RayConfig


class SweepPipelineConfig(StrictModel):
    # ray = Ray Data (an embedded local Ray, or a cluster); local = read -> model -> stitch in
    # this process, no Ray start-up (jobs/crack_sweep/local_engine.py); the outputs are the same.
    engine: Literal["ray", "local"] = "ray"
    # Logical CPUs the model actors may never take (decoding/tiling runs there); the local
    # engine reads in read_cpus / read_task_cpus threads.
    read_cpus: float = Field(default=1.0, gt=0)
    # Photos per read task batch.
    read_batch_size: int = Field(default=2, ge=1)
    read_task_cpus: float = Field(default=0.5, gt=0)
    crop_task_cpus: float = Field(default=0.25, gt=0)
    # Photos finalized in parallel on the driver (mask PNG, thumbnail, measurements).
    finalize_workers: int = Field(default=2, ge=1)


class SweepInputConfig(StrictModel):
    extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"])
    # 1-based bands to read (None = all; alpha becomes the validity mask).
    bands: Optional[list[int]] = None
    # Per-image stretch for non-uint8 photos (16-bit TIFFs).
    percentiles: tuple[float, float] = (2.0, 98.0)
    # A photo whose header declares more pixels than this fails alone, in seconds, before it is
    # decoded (a 3.5 MB PNG can declare 60000 x 60000). 150 MP: any inspection camera.
    max_photo_pixels: int = Field(default=150_000_000, ge=1)


class ReportConfig(StrictModel):
    # What ranks the images (report.csv/parquet, contact sheet, report.html): pixels = crack
    # pixels; length = total centre-line length; max_width = the widest crack's centre-line
    # width (length and max_width: in mm when every ok image has a pixel size, else in px);
    # severity = sum of width class rank x length (jobs/crack_sweep/measure.py).
    sort_by: Literal["pixels", "length", "max_width", "severity"] = "pixels"
    # Images in the contact sheet / HTML top table.
    top_n: int = Field(default=24, ge=1)
    # Longest side of the overlay thumbnails (px).
    thumb_size: int = Field(default=256, ge=32)
    # Contact sheet columns.
    columns: int = Field(default=6, ge=1)


class SweepConfig(StrictModel):
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    pipeline: SweepPipelineConfig = Field(default_factory=SweepPipelineConfig)
    input: SweepInputConfig = Field(default_factory=SweepInputConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
