"""Config model of the segmentation job (``configs/segment.yaml``, ``--set key=value``).

Every field has a default, so ``jobs/segment.py`` runs without a config file. The reference table is
in ``configs/segment.yaml`` (each field commented) and in the module docstring of ``jobs/segment.py``.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, PositiveInt, field_validator, model_validator

# tiling/predict/ray are the sections the crack sweep shares; segmentation code names them here
from ingest.trust import InputPolicy
from jobs.inference.config import PredictConfig, TilingConfig
from jobs.runtime.config import StrictModel, refuse_replaced
from jobs.runtime.ray_config import RayConfig
from jobs.segmentation.stac_config import StacInputConfig


class RadiometryConfig(StrictModel):
    # 1-based band indexes to read (None = all bands; the bundle's band_map then picks 3; without
    # a band_map, a scene of more than three bands whose band names or colour interpretation
    # say which are red, green and blue gives those three: ingest/bands.py).
    bands: Optional[list[int]] = None
    # Scene-wide percentile stretch (low, high), fitted once per scene on the driver.
    percentiles: tuple[float, float] = (2.0, 98.0)
    # Upper bound of pixels sampled to fit the stretch (overviews or a bounded sample).
    max_pixels: int = Field(default=1_000_000, ge=1024)
    # uint8 scenes pass through unchanged (no stretch) when True.
    uint8_passthrough: bool = True
    # A scene whose GSD is more than input.gsd_tolerance times off the model's (both known):
    # "off" reads it as it is and warns; "auto" reads it at the model's GSD -- its tiles cover
    # as many metres as the model's frame did in training, each resampled into the frame and
    # its prediction back; outputs stay on the scene's grid (jobs/inference/resampling.py).
    resample: Literal["off", "auto"] = "off"

    @field_validator("resample", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return yaml_off(v)

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, v):
        lo, hi = v
        if not (0 <= lo < hi <= 100):
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100")
        return v


class PipelineConfig(StrictModel):
    # "ray": Ray Data (read tasks -> model actors; any cluster size; the default). "local": the
    # same stages in this process -- on CPU one single-threaded lane per core (each reads,
    # predicts and writes its own blocks; predict.num_actors overrides the count), on a GPU one
    # lane with reader and writer threads -- for one machine without a cluster, where Ray's own
    # daemons, task scheduling and block conversion cost as much CPU as a small model.
    engine: Literal["ray", "local"] = "ray"
    # Logical CPUs the model actors may never take (the read tasks run there).
    read_cpus: float = Field(default=1.0, gt=0)
    # Tiles per read task = per actor call (the actor writes each model batch while the next one
    # runs); 0 = auto: 2-4 model batches (~8 MB of pixels), at least 2 blocks per actor.
    block_tiles: int = Field(default=0, ge=0)
    # Ray logical CPUs per read task.
    read_task_cpus: float = Field(default=0.5, gt=0)
    # Where tiles are read: true = inside the model actors (no read tasks, no image blocks
    # through the object store), false = in Ray read tasks feeding the actors; null = auto:
    # in the actors when they run on CPU (every core runs an actor, so a separate read stage
    # only adds processes and transfers), read tasks when actors have GPUs.
    read_in_actors: Optional[bool] = None
    # Scenes planned in parallel on the driver (header, radiometry sample, resume listing: I/O).
    plan_workers: int = Field(default=8, ge=1)
    # Seconds one scene's planning reads (emptiness check and radiometry sample) may take; a
    # store without overviews too big to walk in time fails alone with a reason, and the
    # planning threads go on with the other scenes. Add overviews (or raise this) for huge scenes.
    plan_timeout_s: float = Field(default=300.0, gt=0)
    # Parallel scene finalizations (COG, quicklook, stats) on the driver, overlapping the pipeline.
    finalize_workers: int = Field(default=2, ge=1)
    # A done or partial scene whose run record (model bundle sha256, threshold, radiometry,
    # bands, tiling, precision, input size/mtime or ETag) differs from this run's: "recompute"
    # it whole into a fresh store, replacing the old outputs only once it succeeded; "fail"
    # the scene with an error naming the difference (old outputs untouched). Never mixed.
    on_change: Literal["recompute", "fail"] = "recompute"
    # A scene another live run is computing (status.json "running") is left to it. A lease
    # whose process is gone (same host) is taken over at once; one of another host whose
    # heartbeat is older than this belongs to a run that died (lost node) and is taken over
    # too (resumed from its written tiles).
    lease_timeout_s: float = Field(default=45.0, gt=0)
    # How often a running scene's lease is refreshed (at most a third of lease_timeout_s).
    lease_heartbeat_s: float = Field(default=10.0, gt=0)


VectorFormat = Literal["parquet", "geojson", "flatgeobuf"]


class OutputConfig(StrictModel):
    # COG of the binary mask (mask.tif) and of the probability (prob.tif).
    mask_cog: bool = True
    prob_cog: bool = True
    # GDAL threads per COG build ("ALL_CPUS" or a count). 1: a scene's two COGs are already
    # built concurrently and other scenes' tiles keep the cores busy. Measured on 2 cores
    # (BENCHMARKS.md): sparse crack masks 0.40 s on 1 thread vs 0.64 s (2.8x the CPU) on 2;
    # dense noise 3.8 vs 2.3 s. Raise it on big CPU nodes finishing a few dense scenes.
    cog_threads: Union[Literal["ALL_CPUS"], PositiveInt] = 1
    # Vector files streamed from mask.zarr (jobs/segmentation/vectors.py): polygons.<ext> (one
    # polygon per connected component, with area, perimeter, probability, review disagreement),
    # centerlines.<ext> (crack centre-lines with length and width), both, or none.
    # auto = polygons for georeferenced scenes, none for plain images (PNG/JPEG).
    vectors: Literal["auto", "none", "polygons", "centerlines", "both"] = "auto"
    # parquet = GeoParquet 1.1 (CRS as PROJJSON); geojson = RFC 7946, reprojected to WGS 84
    # (georeferenced scenes only); flatgeobuf = .fgb with a spatial index. A list of distinct
    # formats ([parquet, flatgeobuf]) writes each of them for every kind (a one-item list is
    # that format).
    vector_format: Union[VectorFormat, list[VectorFormat]] = "parquet"
    # Pixel connectivity of a polygon: 4 (edges; every feature a Polygon) or 8 (corners too;
    # a component joined only at a corner is one valid MultiPolygon).
    vector_connectivity: Literal[4, 8] = 4
    # Topology-preserving simplification tolerance of polygons (map units); 0 = exact pixel
    # outlines. Area and perimeter are always measured on the exact outline.
    vector_simplify: float = Field(default=0.0, ge=0)
    # quicklook.png longest side (px); 0 disables it.
    quicklook_size: int = Field(default=1024, ge=0)
    # Number of most-uncertain tiles listed per scene in the manifest (review queue).
    uncertain_top_n: int = Field(default=5, ge=0)
    # Rewrite the manifest at most this often (s) while scenes finish (always at the end).
    manifest_interval_s: float = Field(default=10.0, ge=0)
    # Zarr format of <id>/mask.zarr. 3: zarr-python 3, xarray/rioxarray, newer GDAL. 2: also
    # GDAL 3.10 -- the one rasterio 1.4 wheels ship (QGIS/gdalinfo of that age) fails on a v3
    # store with "Unsupported codec: bytes". A store resumed keeps the format it was made with.
    zarr_format: Literal[2, 3] = 3
    # STAC: <id>/item.json per ok scene; at the end of a run that wrote one, <output>/collection.json
    # (a self-contained catalog of every item under the output) and <output>/items.parquet
    # (stac-geoparquet: `rustac serve --use-duckdb false <output>/items.parquet` searches them).
    stac: bool = True
    # id of collection.json; None = the output folder's name.
    stac_collection: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    @field_validator("vector_format")
    @classmethod
    def _distinct_formats(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("name at least one format")
            if len(set(v)) != len(v):
                raise ValueError(f"{v} names a format twice")
            if len(v) == 1:
                return v[0]  # the same setting as the plain string (no output-only rerun)
        return v

    @property
    def vector_formats(self) -> tuple[str, ...]:
        """``vector_format`` as a tuple of formats, in the order asked."""
        v = self.vector_format
        return (v,) if isinstance(v, str) else tuple(v)

    @model_validator(mode="before")
    @classmethod
    def _replaced_fields(cls, data):
        return refuse_replaced(data, {"polygons": "output.vectors (auto | none | polygons | "
                                                  "centerlines | both; auto = polygons for "
                                                  "georeferenced scenes)"})


class InputAllowConfig(StrictModel):
    """What a STAC catalog's hrefs and links may reach (README "Security model"): checked
    before anything opens them; a refused href fails its scene alone, with the reason. The
    operator's own --input values are trusted and not checked."""

    # URI schemes catalog hrefs may use.
    schemes: list[str] = Field(default_factory=lambda: ["file", "s3", "http", "https"])
    # S3 locations catalog hrefs may name, as "bucket" or "bucket/prefix"; empty = any bucket.
    s3: list[str] = Field(default_factory=list)
    # http(s) hosts ("host" or "host:port"). Empty = any public host (loopback, link-local and
    # private addresses refused); listed = only these hosts, whatever they resolve to.
    hosts: list[str] = Field(default_factory=list)
    # Local folders a catalog's hrefs may name besides the catalog's own folder (a remote
    # catalog may name none by default).
    local_roots: list[str] = Field(default_factory=list)

    def policy(self) -> InputPolicy:
        return InputPolicy(schemes=tuple(self.schemes), s3=tuple(self.s3),
                           hosts=tuple(self.hosts), local_roots=tuple(self.local_roots))


def yaml_off(value):
    """YAML 1.1 reads an unquoted ``off`` as false: the option's "off" is what was meant."""
    return "off" if value is False else value


class InputConfig(StrictModel):
    # Georeferenced inputs (GeoTIFF/COG/Zarr) must carry a CRS; PNG/JPEG never need one.
    require_crs: bool = True
    # File extensions picked up when expanding a folder or an s3:// prefix.
    extensions: list[str] = Field(default_factory=lambda: [
        ".tif", ".tiff", ".zarr", ".jp2", ".png", ".jpg", ".jpeg", ".vrt"])
    # Scenes from a STAC catalog (jobs/segmentation/stac_config.py; --stac and its flags set it);
    # combined with --input when both are given.
    stac: Optional[StacInputConfig] = None
    # The trust policy for inputs and catalog hrefs.
    allow: InputAllowConfig = Field(default_factory=InputAllowConfig)
    # A scene whose header declares more pixels than this fails alone, before planning reads
    # anything (a lying header would otherwise plan hours of tiles). 1e10 = 100,000 x 100,000.
    max_pixels: int = Field(default=10_000_000_000, ge=1)
    # The model's input contract (bundle.json "input") checked against each scene at planning
    # (jobs/inference/contract_check.py): "error" fails a scene the model would read wrongly
    # (fewer bands than it was trained on, a band_map past the scene's bands) and warns about
    # the rest; "warn" only warns (the scene runs); "off" checks nothing.
    contract_check: Literal["error", "warn", "off"] = "error"

    @field_validator("contract_check", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return yaml_off(v)

    # A scene whose GSD is more than this many times finer or coarser than the model's (both
    # known, metres) gets a warning (status.json "warnings", report.html), or is read at the
    # model's GSD with radiometry.resample: auto.
    gsd_tolerance: float = Field(default=2.0, gt=1)


class StorageConfig(StrictModel):
    # One retry policy for every S3 client (GDAL /vsis3, s3fs/botocore in adaptive mode, Zarr
    # chunks): retries after a request's first attempt; None = $SAMSP_S3_MAX_RETRIES or 5.
    # Set here, it reaches the workers of the embedded Ray through the environment they inherit
    # (ingest/s3_retry.py); on a cluster set the SAMSP_S3_* variables in the runtime env.
    max_retries: Optional[int] = Field(default=None, ge=0)
    # GDAL's first back-off between retries (s); None = $SAMSP_S3_RETRY_DELAY_S or 0.5.
    retry_delay_s: Optional[float] = Field(default=None, ge=0)
    # botocore's retry mode: adaptive (also slows the client while S3 throttles it) or standard
    # (per-request back-off only); None = $SAMSP_S3_RETRY_MODE or adaptive.
    retry_mode: Optional[Literal["adaptive", "standard"]] = None


class SegmentConfig(StrictModel):
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    radiometry: RadiometryConfig = Field(default_factory=RadiometryConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
