"""Config model of the training job (``configs/train_*.yaml``, ``--set key=value``).

Every field has a default; ``python jobs/train.py`` with no config trains ``vit_micro`` on a
synthetic set. The full field reference (default and meaning) is the comments below; the YAML
configs in ``configs/`` repeat the important ones.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from jobs.runtime.config import StrictModel, refuse_replaced
from jobs.segmentation.config import InputAllowConfig
from jobs.segmentation.stac_config import SINCE_LAST_RUN, StacInputConfig

# Layout presets of image/mask pair folders: (image_dir, mask_dir, mask threshold).
PAIR_LAYOUTS: dict[str, tuple[str, str, int]] = {
    # DeepCrack: train_img/*.jpg + train_lab/*.png; masks {0,255} or 1-bit {0,1} -> lab > 0.
    "deepcrack": ("train_img", "train_lab", 0),
    # DeepCrack's held-out test set (same layout, other folders).
    "deepcrack_test": ("test_img", "test_lab", 0),
    # EPFL roads: images/*.png + groundtruth/*.png, anti-aliased 0..237 -> gt > 127.
    "epfl": ("images", "groundtruth", 127),
}


class TrainRunConfig(StrictModel):
    # Run name: checkpoints live under <storage_path>/<name>/. Relaunching the same name and
    # storage path resumes from the run's latest checkpoint.
    name: str = Field(default="samsp-train", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    # Local directory or s3://bucket/prefix (AWS_* env incl. AWS_ENDPOINT_URL for custom S3).
    storage_path: str = "./out/train"
    # Worker failures Ray Train recovers from (restarting from the latest checkpoint); -1 = no limit.
    max_failures: int = Field(default=0, ge=-1)
    # Checkpoints kept, best by val Dice (Ray always keeps the latest one too, for resume).
    num_to_keep: int = Field(default=2, ge=1)
    # Ray address: None = $RAY_ADDRESS if set (ray job submit), else an embedded local Ray;
    # "auto" = the cluster running on this machine; "host:port" / "ray://host:10001".
    ray_address: Optional[str] = None
    # Level of Ray Train's own logs (INFO also prints every report's metrics twice per epoch);
    # the job's progress lines ([train] ...) are printed regardless.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"


class ModelConfig(StrictModel):
    # vit_b | vit_l | vit_h (official layouts) | vit_tiny (256 px) | vit_micro (128 px, tests).
    type: str = "vit_micro"
    # Base weights: an official SAM checkpoint (local path or s3://...), or a samsp bundle to
    # fine-tune (its folder, its model.safetensors, a URI or a bundle name as for --model: its
    # type, image size, detail branch, threshold and labels are then taken unless set here);
    # None = random init (use finetune: full).
    checkpoint: Optional[str] = None
    # Model input side (px); None = the model type's default (1024 official, 256 tiny, 128 micro).
    image_size: Optional[int] = Field(default=None, ge=32)
    # lora (pretrained SAM + LoRA on the encoder's qkv), full (everything trains), decoder
    # (encoder frozen, prompt encoder + mask decoder train), presence (a trained bundle's masks
    # stay exactly as they are; only the window-presence head trains: samsp.presence, needs
    # loss.presence_weight > 0).
    finetune: Literal["lora", "full", "decoder", "presence"] = "full"
    lora_rank: int = Field(default=4, ge=1)
    lora_alpha: float = Field(default=8.0, gt=0)
    # Self-prompting passes K after the first (the model returns K + 1 masks).
    iterations: int = Field(default=1, ge=0, le=8)
    # Self-prompt type for passes >= 1.
    prompt: Literal["box", "mask", "box+mask", "points"] = "box"
    # Probability threshold written into the bundle (segment's default for the binary mask).
    threshold: float = Field(default=0.5, gt=0, lt=1)
    # What a foreground (1) pixel means ("crack", "road"): the bundle's input contract states it.
    labels: str = Field(default="foreground", min_length=1)
    # An image smaller than the model window (ingest.TileGrid small_images): "pad" keeps it at native
    # size in a padded window, "fill" upscales it until its longer side fills the frame (SAM's
    # resize-longest-side). Validation (checkpoint and threshold choice) runs this way and the
    # bundle records it, so photo inference does the same. A base bundle's unless set.
    small_images: Literal["pad", "fill"] = "pad"
    # Detail branch (samsp.detail): a small conv stem on the full-resolution input whose
    # features join the mask decoder's before the hypernetwork product; trains in every
    # fine-tune mode, saved in the bundle. Off: SAM's decoder as is (official checkpoints).
    detail_branch: bool = False
    detail_width: int = Field(default=32, ge=8)
    # 4: the decoder's own resolution (input / 4); 2: logits at input / 2 (thin structures).
    detail_stride: Literal[2, 4] = 4
    # Window presence gate written into the bundle (samsp.presence): windows whose presence
    # probability is below it come out empty. None = no gate; only a model whose presence head
    # was trained (finetune: presence) should have one -- choose it on validation
    # (python -m bench.presence_gate --write). Never carried over from a base bundle: any other
    # fine-tune changes what the head reads.
    presence_threshold: Optional[float] = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _lora_needs_weights(self):
        if self.finetune == "lora" and self.checkpoint is None:
            raise ValueError("finetune 'lora' needs model.checkpoint (pretrained weights); "
                             "use finetune: full to train from scratch")
        if self.finetune == "presence" and self.checkpoint is None:
            raise ValueError("finetune 'presence' needs model.checkpoint: the trained bundle "
                             "whose presence head it trains")
        if self.presence_threshold is not None and self.finetune != "presence":
            raise ValueError("model.presence_threshold is for finetune: presence (only that mode "
                             "trains the presence head the gate reads)")
        return self


class LossConfig(StrictModel):
    # Weight of the self-distillation term (final pass -> earlier passes); 0 disables it.
    distill_weight: float = Field(default=0.5, ge=0)
    # Softening temperature of the distillation target.
    temperature: float = Field(default=1.0, gt=0)
    # Weights of the supervised terms on every pass.
    dice_weight: float = Field(default=1.0, ge=0)
    bce_weight: float = Field(default=1.0, ge=0)
    # Skeleton recall (samsp.loss.skeleton_recall_loss): probability mass on the ground
    # truth's skeleton, for thin structures (cracks, roads); 0 = off.
    skeleton_weight: float = Field(default=0.0, ge=0)
    # Window presence (samsp.presence.presence_loss): BCE of the IoU head's logit against "the
    # window holds a target pixel", every pass. Only model.finetune: presence trains that head.
    presence_weight: float = Field(default=0.0, ge=0)


class PairsData(StrictModel):
    """Image/mask pair folders (local or s3://), matched by file stem."""

    kind: Literal["pairs"] = "pairs"
    # Dataset root, local or s3://bucket/prefix.
    root: str
    # deepcrack | deepcrack_test | epfl | custom (then image_dir/mask_dir/threshold must be set).
    layout: Literal["deepcrack", "deepcrack_test", "epfl", "custom"] = "custom"
    # Sub-folders of root with images and masks (None = the layout's).
    image_dir: Optional[str] = None
    mask_dir: Optional[str] = None
    # Mask pixel is positive when value > threshold (None = the layout's; custom: 127).
    threshold: Optional[float] = None
    # Use at most this many pairs (after sorting; None = all). Handy for smoke runs.
    limit: Optional[int] = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _fill_layout(self):
        if self.layout != "custom":
            image_dir, mask_dir, thr = PAIR_LAYOUTS[self.layout]
            self.__dict__["image_dir"] = self.image_dir or image_dir
            self.__dict__["mask_dir"] = self.mask_dir or mask_dir
            if self.threshold is None:
                self.__dict__["threshold"] = float(thr)
        else:
            self.__dict__["image_dir"] = self.image_dir or "images"
            self.__dict__["mask_dir"] = self.mask_dir or "masks"
            if self.threshold is None:
                self.__dict__["threshold"] = 127.0
        return self


class VectorLabelOptions(StrictModel):
    """How a vector layer becomes labels (ingest/labels): a raster pair's options and a scene
    listing's shared labels take the same ones."""

    # Value burnt inside every feature (1..255) ...
    burn: int = Field(default=1, ge=1, le=255)
    # ... or each feature's value of this attribute (integers 0..255; where features overlap
    # the highest value wins). A pixel is positive when its value > data.source.threshold.
    class_field: Optional[str] = None
    # Lines and points are buffered by this many metres (each side: a road centre-line of a
    # 6 m wide road takes 3); 0 = burn the 1-px line. Metres in a projected image CRS (its
    # unit converted), else in the UTM zone of the scene's centre.
    line_buffer_m: float = Field(default=0.0, ge=0)
    # Features whose ignore_field equals ignore_value (no ignore_value: is truthy) are "don't
    # know" areas: their pixels are invalid, never supervised. ignore_value without an
    # ignore_field compares class_field (e.g. 255 = ignore, as in semantic segmentation sets).
    ignore_field: Optional[str] = None
    ignore_value: Optional[Union[bool, int, float, str]] = None
    # Area of interest (a vector file, any of the formats above): pixels outside it are
    # invalid (unlabelled land is not background); windows mostly outside it are not used.
    # With an AOI, a scene the labels have no feature in is all background inside it.
    aoi: Optional[str] = None
    # Burn every pixel a feature touches (thin features), not only those whose centre is inside.
    all_touched: bool = False
    # Layer of a multi-layer file (GeoPackage); None = the first.
    layer: Optional[str] = None
    # The AOI's layer (None = the first) and an OGR SQL filter on its features: a review
    # package (samsp review) trains on `aoi_layer: tiles`, `aoi_where: "reviewed = 1"`.
    aoi_layer: Optional[str] = None
    aoi_where: Optional[str] = None
    # An OGR SQL filter on the label features themselves (GeoPackage/FlatGeobuf/GeoJSON).
    where: Optional[str] = None

    def _check_options(self) -> None:
        if self.class_field and "burn" in self.model_fields_set:
            raise ValueError("give burn or class_field, not both")
        if (self.aoi_layer or self.aoi_where) and not self.aoi:
            raise ValueError("aoi_layer and aoi_where need an aoi file")
        if self.ignore_value is not None and not (self.ignore_field or self.class_field):
            raise ValueError("ignore_value needs ignore_field (or class_field) to compare with")


class RasterPair(VectorLabelOptions):
    # Image raster (GeoTIFF/COG/Zarr, local or s3://).
    image: str
    # Its labels: a label raster on the same grid, or a vector layer decided by the extension
    # (.geojson/.json, .parquet/.geoparquet, .fgb, .gpkg; ingest/labels) rasterised window by
    # window onto the image's grid, reprojected from the layer's CRS (the image needs a CRS).
    # The options (VectorLabelOptions) are for vector labels only (refused with a label raster).
    label: str

    @model_validator(mode="after")
    def _vector_options_need_a_vector_label(self):
        from ingest.labels import is_vector_label  # no torch/Ray: cheap

        if not is_vector_label(self.label):
            used = sorted(self.model_fields_set - {"image", "label"})
            if used:
                raise ValueError(f"{', '.join(used)}: only for vector labels (.geojson, "
                                 f".parquet, .fgb, .gpkg); {self.label} is a label raster")
        self._check_options()
        return self


class SceneLabels(VectorLabelOptions):
    """The labels of listed scenes: one vector layer over all of them (read by bbox, window by
    window, so one big file serves many scenes), with a raster pair's vector options."""

    # The vector layer (.geojson/.json, .parquet/.geoparquet, .fgb, .gpkg; local or s3://).
    uri: str

    @model_validator(mode="after")
    def _one_vector_layer(self):
        from ingest.labels import is_vector_label  # no torch/Ray: cheap

        if not is_vector_label(self.uri):
            raise ValueError(f"{self.uri}: listed scenes take one vector layer as labels "
                             "(.geojson, .parquet, .fgb, .gpkg)")
        self._check_options()
        return self


class SceneListing(StrictModel):
    """Scenes listed instead of written pair by pair (``data.source.scenes``), each paired with
    one vector label layer (jobs/training/scene_listing.py). Planning leaves out, with a log
    line, the scenes the labels have no feature in (and no AOI covers): a listing over an
    archive holds unlabelled scenes. Give ``inputs``, ``stac`` or both."""

    # Local paths, folders, globs, s3:// keys, prefixes and globs, .txt/.csv list files:
    # expanded as the segment job's --input (jobs/inputs/expand.py; samsp's outputs skipped).
    inputs: list[str] = Field(default_factory=list)
    # File extensions picked up from folders, prefixes and globs (georeferenced rasters).
    extensions: list[str] = Field(default_factory=lambda: [".tif", ".tiff", ".zarr", ".jp2",
                                                           ".vrt"], min_length=1)
    # A STAC search with the segment job's input.stac fields (jobs/segmentation/stac_config.py):
    # API URL or static catalog, collections, bbox or an inline intersects geometry, datetime,
    # filter, max_items, assets. One asset per item (a multi-band one, e.g. visual).
    stac: Optional[StacInputConfig] = None
    # What the catalog's hrefs may reach (the segment job's input.allow).
    allow: InputAllowConfig = Field(default_factory=InputAllowConfig)
    labels: SceneLabels

    @model_validator(mode="after")
    def _something_to_list(self):
        if not self.inputs and self.stac is None:
            raise ValueError("give inputs (paths, globs, prefixes, list files) or stac")
        if self.stac is not None:
            if self.stac.datetime == SINCE_LAST_RUN:
                raise ValueError(f"stac.datetime {SINCE_LAST_RUN!r} is for the nightly segment "
                                 "job; give an RFC 3339 instant or interval")
            if isinstance(self.stac.intersects, str):
                raise ValueError("stac.intersects: give the GeoJSON geometry inline (or a bbox)")
            if len(self.stac.assets) != 1:
                raise ValueError(f"stac.assets: one asset per item (a multi-band one), got "
                                 f"{self.stac.assets}")
        return self


class RasterData(StrictModel):
    """GeoTIFF/Zarr scenes with label rasters or vector labels, cut into tiles through
    ``ingest`` (jobs/training/raster_source.py)."""

    kind: Literal["raster"] = "raster"
    # Image/label pairs, each with its own labels ...
    pairs: Optional[list[RasterPair]] = Field(default=None, min_length=1)
    # ... or listed scenes sharing one vector label layer (not both).
    scenes: Optional[SceneListing] = None
    # 1-based bands to read (None = all); then 1 band -> grey x3, 3+ -> the first three.
    bands: Optional[list[int]] = None
    # Sample tiles of this side (px) from the scenes; random crops are taken inside them.
    tile: int = Field(default=512, ge=32)
    # Keep a tile when at least this fraction of its pixels is valid (inside, not nodata).
    min_valid: float = Field(default=0.5, ge=0, le=1)
    # Label pixel is positive when value > threshold.
    threshold: float = 0.0
    # Scene-wide percentile stretch to uint8 (uint8 scenes pass through unchanged).
    percentiles: tuple[float, float] = (2.0, 98.0)
    # Share of each epoch's training samples drawn from windows holding at least one positive
    # label pixel (the rest from windows without); None = windows cycle evenly, positives or
    # not. Planning reads each training window's labels once for its flag
    # (jobs/training/window_sampling.py). Training source only; not in a mixture.
    positive_fraction: Optional[float] = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _pairs_or_scenes(self):
        if self.pairs is not None and self.scenes is not None:
            raise ValueError("give pairs or scenes, not both")
        if self.pairs is None and self.scenes is None:
            raise ValueError("give pairs (image/label pairs) or scenes (a listing with one "
                             "vector label layer)")
        return self


class SyntheticData(StrictModel):
    """Procedural cracks/lines on texture, generated in memory (no files, same on every worker)."""

    kind: Literal["synthetic"] = "synthetic"
    count: int = Field(default=48, ge=4)
    size: int = Field(default=128, ge=32)
    seed: int = 0
    # Crack width range in px (drawn per crack).
    width: tuple[int, int] = (1, 4)


DataSource = Annotated[Union[PairsData, RasterData, SyntheticData], Field(discriminator="kind")]


class MixtureMember(StrictModel):
    """One data set of a mixture: its training source, its own validation (a separate source, or
    ``split.val_fraction`` of its items) and its share of the training samples."""

    # Short name: metric keys (val_dice_<name>) and item keys (<name>/<key>).
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=40)
    source: DataSource
    val_source: Optional[DataSource] = None
    # Sampling weight: each training sample comes from this member with probability
    # weight / sum(weights), whatever its size (a big set does not drown a small one).
    weight: float = Field(default=1.0, gt=0)
    # Use at most this many of its validation images (a seeded spread over the set; None = all).
    val_limit: Optional[int] = Field(default=None, ge=1)
    # Also score its validation images cut into val_cut x val_cut crops, each run on its own
    # and stitched back (group `<name>_cut<n>`, one more score in the mean): photos smaller
    # than the window, and crack-free ones, as a sweep over small photos sees them -- so
    # selection and the output threshold see the false alarms whole images seldom show.
    # 0 = off.
    val_cut: int = Field(default=0, ge=0, le=8)
    # This member's augment.empty_crops (None: the augment section's). Crack-free crops quiet a
    # model on clean windows but cost faint cracks (GAPs384, models/samsp-crack-tiny's card):
    # a mixture can ask them of the sets with clean pavement around their cracks only.
    empty_crops: Optional[float] = Field(default=None, ge=0, le=1)

    @field_validator("val_cut")
    @classmethod
    def _cut_into_crops(cls, v):
        if v == 1:
            raise ValueError("val_cut is 0 (off) or the crops per side, 2 to 8: 1 would score "
                             "each image whole a second time")
        return v


class MixtureData(StrictModel):
    """Several data sets trained together with per-set sampling weights. Validation scores each
    member on its own validation images; ``val_dice`` (checkpoint selection, threshold tuning)
    is the mean of the members' Dice, so every set counts the same."""

    kind: Literal["mixture"] = "mixture"
    members: list[MixtureMember] = Field(min_length=1)
    # Training samples per epoch, all members together (None = their training items summed);
    # train.samples_per_item multiplies it.
    samples_per_epoch: Optional[int] = Field(default=None, ge=1)

    @field_validator("members")
    @classmethod
    def _unique_names(cls, members):
        # val_cut groups are named <name>_cut<n>: metric keys must not collide with them
        names = [m.name for m in members] + [f"{m.name}_cut{m.val_cut}" for m in members
                                             if m.val_cut]
        if len(set(names)) != len(names):
            raise ValueError(f"mixture member (and val_cut group) names must be unique, got "
                             f"{names}")
        return members


TrainSource = Annotated[Union[PairsData, RasterData, SyntheticData, MixtureData],
                        Field(discriminator="kind")]


class SpatialSplit(StrictModel):
    """Validation from square blocks of the scenes, ``val_fraction`` of them (seeded hash rank);
    training windows keep ``buffer_windows`` away from them (jobs/training/geo_split.py)."""

    # Block side in metres of the image CRS (projected scenes) or in pixels; one of them, or
    # neither: 4 windows (4 * data.source.tile px).
    block_m: Optional[float] = Field(default=None, gt=0)
    block_px: Optional[int] = Field(default=None, ge=1)
    # Gap between validation blocks and training windows, in windows (data.source.tile px).
    buffer_windows: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _one_block_size(self):
        if self.block_m is not None and self.block_px is not None:
            raise ValueError("give block_m or block_px, not both")
        return self


class SplitConfig(StrictModel):
    # Fraction of items held out for validation (deterministic: seeded shuffle of sorted keys);
    # with a spatial split, the fraction of blocks.
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0
    # Raster sources: hold out spatial blocks, not random windows (recommended: random windows
    # sit next to training windows and flatter the model); None = random. Not for pairs/synthetic.
    spatial: Optional[SpatialSplit] = None


class DataConfig(StrictModel):
    # pairs | raster | synthetic | mixture (several of those, each with its own validation).
    source: TrainSource = Field(default_factory=lambda: SyntheticData())
    # Optional separate validation source (then split.val_fraction is ignored); a mixture
    # names its members' own.
    val_source: Optional[DataSource] = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    # Keep decoded items in worker memory after first use (small sets, remote data).
    cache: bool = True
    # DataLoader worker processes per training worker (0 = load in the training process).
    loader_workers: int = Field(default=0, ge=0)
    # Stream training samples through Ray Data tasks (jobs/training/streaming.py; the same
    # samples, no training set in worker memory; validation as before). Needs a spare CPU.
    streaming: bool = False

    @model_validator(mode="after")
    def _mixture_has_its_own_validation(self):
        if self.source.kind == "mixture" and self.val_source is not None:
            raise ValueError("data.val_source does not apply to a mixture: give each member "
                             "its own val_source (or let split.val_fraction hold out its items)")
        if self.split.spatial is not None and self.source.kind in ("pairs", "synthetic"):
            raise ValueError(f"data.split.spatial applies to raster sources, not "
                             f"{self.source.kind!r} (its items have no place on a map)")
        return self

    @model_validator(mode="after")
    def _positive_fraction_on_the_training_source(self):
        def sets_it(src) -> bool:
            return getattr(src, "positive_fraction", None) is not None

        if sets_it(self.val_source):
            raise ValueError("data.val_source.positive_fraction: applies to the training "
                             "source only (validation windows are all scored)")
        if self.source.kind == "mixture":
            for m in self.source.members:
                if sets_it(m.source) or sets_it(m.val_source):
                    raise ValueError(f"mixture member {m.name!r}: positive_fraction is not "
                                     "supported in a mixture (members are drawn by weight)")
        return self


class AugmentConfig(StrictModel):
    # Training crop side (px) fed to the model (None = model image size). Validation uses the
    # same side, tiling each image like the segment job does.
    crop: Optional[int] = Field(default=None, ge=32)
    # Random rescale range before cropping (width variety); [1, 1] disables it.
    scale: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    # Colour jitter amplitudes (0 disables each): brightness/contrast/saturation as +-fraction,
    # gamma as +-exponent offset.
    brightness: float = Field(default=0.2, ge=0, le=1)
    contrast: float = Field(default=0.2, ge=0, le=1)
    saturation: float = Field(default=0.2, ge=0, le=1)
    gamma: float = Field(default=0.2, ge=0, le=1)
    # Probability of turning a crop grey (other cameras: grey sensors, desaturated archives).
    grayscale: float = Field(default=0.0, ge=0, le=1)
    # Probability of a cast shadow: a random half-plane darkened to 35-75 %, soft-edged.
    shadow: float = Field(default=0.0, ge=0, le=1)
    # Crops are redrawn (up to 5 times) until at least this fraction is positive, when possible.
    min_positive: float = Field(default=0.0, ge=0, le=1)
    # Probability that a crop is instead drawn to hold no positive pixel: clean background,
    # what a sweep sees in most windows. With almost none, a model learns that every window
    # holds a crack and paints blobs on a crack-free photo (bench/small_images.py).
    # Where no crack-free window exists (a cracked photo smaller than the crop) the crop keeps
    # its crack, so the share reached is lower: `python -m bench.crack_free --set
    # augment.empty_crops=P` counts it.
    empty_crops: float = Field(default=0.0, ge=0, le=1)
    # How a crack-free crop is found: `draws` keeps the fewest-positive of 8 random crops (it
    # misses most clean windows of a cracked photo); `windows` picks uniformly among every
    # clean, at least half-valid window (summed-area table, up to 4 scales); `positions` also,
    # where no whole window is clean, takes a clean patch (0.75, 0.5 or 0.35 of the window
    # on one side, 70-100 % of that on the other) padded as a small photo. More crack-free crops make a quieter model that finds
    # fewer faint cracks (models/samsp-crack-tiny/MODEL_CARD.md, "Tried and not committed").
    empty_crops_search: Literal["draws", "windows", "positions"] = "draws"
    # Probability that a crop keeps only a random top-left part (each side small_image_min..1 of
    # the crop), the rest padding: images smaller than the model window, as inference pads them.
    small_image: float = Field(default=0.0, ge=0, le=1)
    small_image_min: float = Field(default=0.35, gt=0, le=1)
    # Probability that a photo smaller than the crop becomes the whole photo upscaled until its
    # longer side fills the crop (the rest padding): the scale model.small_images: fill runs it
    # at. Random rescales (augment.scale) rarely show it that way -- a 133-px GAPs384 photo
    # fills a 256 crop only at scale >= 1.92. Flips/rot90 and small_image still apply to it;
    # empty_crops and min_positive do not.
    fill_small: float = Field(default=0.0, ge=0, le=1)

    @field_validator("scale")
    @classmethod
    def _scale_ordered(cls, v):
        if not (0 < v[0] <= v[1]):
            raise ValueError("scale must be (min, max) with 0 < min <= max")
        return v


class OptimisationConfig(StrictModel):
    epochs: int = Field(default=4, ge=1)
    # Per-worker batch size (global batch = batch_size * num_workers * grad_accum).
    batch_size: int = Field(default=4, ge=1)
    # Training crops per epoch per item (more random crops of big images).
    samples_per_item: int = Field(default=1, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    # Linear warmup length as a fraction of all optimizer steps, then cosine to lr*min_lr_ratio.
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    min_lr_ratio: float = Field(default=0.05, ge=0, le=1)
    # Micro-batches accumulated per optimizer step.
    grad_accum: int = Field(default=1, ge=1)
    # Gradient clipping by global norm (0 disables).
    clip_grad_norm: float = Field(default=1.0, ge=0)
    # Model precision (samsp.precision): auto = bf16 on CUDA cards with bf16 and on CPUs with
    # native bf16 (avx512_bf16/AMX), fp16 with a GradScaler on older CUDA cards, else fp32.
    # Losses, metrics and the self-prompts stay float32; checkpoints are float32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # DDP find_unused_parameters. auto = off: samsp.configure_finetune freezes every module the
    # configured SamSP never uses (IoU head, other mask tokens, unused prompt embeddings), so all
    # trainable parameters get gradients; "on" if you change the model and DDP complains.
    find_unused_parameters: Literal["auto", "on", "off"] = "auto"
    seed: int = 0
    # Choose the bundle's output threshold on validation (the best epoch's best of 0.2..0.8 by
    # mean Dice of the final pass); self-prompts keep model.threshold, as trained.
    tune_threshold: bool = False
    # How validation scores a group of images: per_image = the mean of each image's Dice (photo
    # data sets report it so); pooled = the Dice of the summed pixel counts; auto = pooled for
    # windows cut from scenes (kind raster: most windows of sparse geodata are empty, and their
    # mean rewards a model that predicts nothing), per_image otherwise.
    val_metric: Literal["auto", "per_image", "pooled"] = "auto"
    # Promptable pre-training: this fraction of all optimizer steps first trains with pass 1
    # prompted from the ground truth (jittered boxes / points / coarse masks of model.prompt,
    # samsp.prompts.prompt_from_target) beside the promptless pass 0; then SAM-SP as usual.
    prompt_pretraining: float = Field(default=0.0, ge=0, lt=1)
    # Stop this launch after this many epochs (relaunch resumes); None = run to `epochs`.
    stop_after_epochs: Optional[int] = Field(default=None, ge=1)
    # Log training progress every N optimizer steps (rank 0); 0 = epoch summaries only.
    log_every: int = Field(default=10, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _replaced_fields(cls, data):
        return refuse_replaced(data, {"bf16": "train.precision (auto | fp32 | bf16 | fp16)"})


class WorkersConfig(StrictModel):
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    # CPUs reserved per training worker.
    cpus_per_worker: float = Field(default=1.0, gt=0)
    # torch intra-op threads per worker (0 = leave torch's default).
    torch_threads: int = Field(default=0, ge=0)


class ExportConfig(StrictModel):
    # Where the best checkpoint's bundle goes (local dir or s3://); None =
    # <storage_path>/<run name>/bundle. "" disables the export.
    uri: Optional[str] = None
    # Export only when all epochs are done (a launch stopped by stop_after_epochs exports nothing).
    only_when_complete: bool = True


class TrainConfig(StrictModel):
    run: TrainRunConfig = Field(default_factory=TrainRunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: OptimisationConfig = Field(default_factory=OptimisationConfig)
    scaling: WorkersConfig = Field(default_factory=WorkersConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _pretraining_needs_a_prompted_pass(self):
        if self.train.prompt_pretraining > 0 and self.model.iterations < 1:
            raise ValueError("train.prompt_pretraining needs model.iterations >= 1 (a single-pass "
                             "model never takes a prompt)")
        return self

    @model_validator(mode="after")
    def _presence_head_and_its_loss_together(self):
        # Either alone trains nothing: other modes freeze the head, other losses never reach it.
        training_head = self.model.finetune == "presence"
        if training_head != (self.loss.presence_weight > 0):
            raise ValueError("model.finetune: presence and loss.presence_weight > 0 go together "
                             "(the presence head trains in that mode only, from that loss only)")
        if training_head and self.train.tune_threshold:
            raise ValueError("model.finetune: presence keeps the bundle's masks and threshold: "
                             "set train.tune_threshold=false")
        if training_head and self.train.prompt_pretraining > 0:
            # a pass prompted from the ground truth has a box exactly where there is a target:
            # the head would learn the label from its prompt
            raise ValueError("model.finetune: presence needs train.prompt_pretraining=0")
        return self
