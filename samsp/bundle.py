"""Model bundles: what training writes and segmentation reads.

A bundle is a folder (local or any fsspec URI, e.g. ``s3://bucket/models/crack-v1``) with
``model.safetensors`` -- the SAM weights in the official layout, LoRA adapters merged so no peft
is needed to load -- and ``bundle.json`` (``BundleMeta``): how to build the model, normalise its
input and threshold its output, training provenance and the input contract (``input``,
samsp/contract.py; absent from older bundles). ``bundle.json`` is written last, so a folder
without it is an unfinished bundle.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, Optional

import fsspec
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .build import build_sam_from_config
from .config import get_config
from .contract import InputContract
from .errors import BundleError, CheckpointError
from .lora import has_lora, merge_lora
from .detail import detail_branch_for
from .model import SamSP, logit_of
from .prompts import PromptKind

WEIGHTS_FILE = "model.safetensors"
META_FILE = "bundle.json"
FORMAT_VERSION = 1


class BundleMeta(BaseModel):
    """Contents of ``bundle.json``. Unknown fields are rejected (a newer format fails loudly)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    model_type: str
    image_size: int = Field(gt=0)
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    iterations: int = Field(ge=0)
    prompt: PromptKind
    n_points: int = Field(default=4, ge=0)
    n_negative: int = Field(default=0, ge=0)
    # Probability above which a pixel is foreground in the final mask.
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    # Probability above which a pass's prediction counts as foreground for the next pass's
    # self-prompt: the threshold the model was trained with (None: the same as ``threshold``;
    # set when the output threshold was tuned after training).
    prompt_threshold: Optional[float] = Field(default=None, gt=0.0, lt=1.0)
    # Three 0-based input band indices used as the model's R, G, B (None: samsp's default mapping).
    band_map: Optional[list[int]] = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    # Storage precision of model.safetensors; weights are always loaded as float32.
    weights_dtype: Literal["float32", "float16"] = "float32"
    weights_sha256: str = ""
    # The optional detail branch (samsp.detail): its spec ({"width", "output_stride"}); its
    # weights are the "detail.*" keys of model.safetensors. None: SAM's decoder as is.
    detail: Optional[dict[str, int]] = None
    # What the model was trained on (samsp.contract): bands, dtype, radiometry, GSD, what 1
    # means. None: unknown -- bundles written before the contract existed load unchanged.
    input: Optional[InputContract] = None
    # How an image smaller than the model window reaches the model (ingest.TileGrid small_images):
    # "pad" (native size in a padded window) or "fill" (upscaled until its longer side fills
    # the frame, SAM's resize-longest-side). The rule the threshold and checkpoint were chosen
    # under; photo inference (sweep, evaluate, segment_file) follows it. Older bundles: pad.
    small_images: Literal["pad", "fill"] = "pad"
    # Window presence gate (samsp.presence): a window whose presence probability (the IoU head,
    # trained by model.finetune: presence) is below it comes out empty. None: no gate.
    presence_threshold: Optional[float] = Field(default=None, gt=0.0, lt=1.0)


@dataclass
class Bundle:
    model: SamSP  # eval mode, on the CPU
    meta: BundleMeta
    uri: str = ""


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


# Fields derived from the model itself; meta may repeat them but not contradict them.
_MODEL_FIELDS = ("model_type", "image_size", "pixel_mean", "pixel_std", "iterations", "prompt",
                 "n_points", "n_negative", "detail")
# Prefix of the detail branch's weights in model.safetensors (SAM's own keys stay official).
DETAIL_PREFIX = "detail."


def _model_fields(model: SamSP) -> dict[str, Any]:
    sam = model.sam
    fields = {
        "image_size": model.image_size,
        "pixel_mean": tuple(float(v) for v in sam.pixel_mean.flatten().tolist()),
        "pixel_std": tuple(float(v) for v in sam.pixel_std.flatten().tolist()),
        "iterations": model.iterations,
        "prompt": model.prompt,
        "n_points": model.n_points,
        "n_negative": model.n_negative,
        "detail": model.detail.spec() if model.detail is not None else None,
    }
    model_type = getattr(sam, "samsp_model_type", None)
    if model_type:
        fields["model_type"] = model_type
    return fields


def save_bundle(
    model: SamSP, uri: str, meta: dict[str, Any] | BundleMeta | None = None,
    weights_dtype: Literal["float32", "float16"] = "float32",
) -> BundleMeta:
    """Write ``model`` (LoRA merged) and its metadata to the folder ``uri``; returns the meta.

    ``meta`` supplies threshold, band_map, input, provenance (and model_type for a Sam not built
    by ``build_sam``); fields that describe the model are taken from it and must not contradict it.
    ``weights_dtype="float16"`` halves the file (for models committed to a repo); the default
    float32 round-trips bit for bit.
    """
    given = meta.model_dump() if isinstance(meta, BundleMeta) else dict(meta or {})
    derived = _model_fields(model)
    for key in _MODEL_FIELDS:
        if key in given and key in derived and _differs(given[key], derived[key]):
            raise BundleError(f"meta {key}={given[key]!r} contradicts the model ({derived[key]!r})")
    given.pop("weights_sha256", None)
    sam = merge_lora(model.sam) if has_lora(model.sam) else model.sam
    store = torch.float16 if weights_dtype == "float16" else None
    weights = dict(sam.state_dict())
    if model.detail is not None:
        weights.update({DETAIL_PREFIX + k: v for k, v in model.detail.state_dict().items()})
    state = {k: (v.detach().to("cpu", store) if store is not None and v.is_floating_point()
                 else v.detach().to("cpu")).contiguous()
             for k, v in weights.items()}
    # One metadata key only: safetensors orders several arbitrarily, and equal weights should
    # give equal bytes. Everything else lives in bundle.json.
    payload = save_safetensors(state, metadata={"format": "pt"})
    try:
        bundle_meta = BundleMeta(**{**given, **derived, "weights_dtype": weights_dtype,
                                    "weights_sha256": hashlib.sha256(payload).hexdigest()})
    except ValidationError as err:
        raise BundleError(f"invalid bundle meta: {_first_error(err)}") from None
    fs, root = fsspec.core.url_to_fs(uri)
    fs.makedirs(root, exist_ok=True)
    if fs.exists(_join(root, META_FILE)):  # overwriting: unfinished until the new meta lands
        fs.rm(_join(root, META_FILE))
    with fs.open(_join(root, WEIGHTS_FILE), "wb") as f:
        f.write(payload)
    with fs.open(_join(root, META_FILE), "w") as f:
        f.write(bundle_meta.model_dump_json(indent=2))
    return bundle_meta


def load_bundle(uri: str) -> Bundle:
    """Read the bundle at ``uri`` (local folder or fsspec URI) into an eval-mode ``SamSP``."""
    fs, root = fsspec.core.url_to_fs(uri)
    try:
        with fs.open(_join(root, META_FILE), "r") as f:
            raw = f.read()
    except FileNotFoundError:
        raise BundleError(f"no bundle at {uri}: {META_FILE} is missing") from None
    try:
        meta = BundleMeta.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as err:
        detail = _first_error(err) if isinstance(err, ValidationError) else str(err)
        raise BundleError(f"invalid {META_FILE} in {uri}: {detail}") from None
    if meta.format_version != FORMAT_VERSION:
        raise BundleError(f"bundle {uri} has format {meta.format_version}; this samsp reads "
                          f"{FORMAT_VERSION}")
    try:
        with fs.open(_join(root, WEIGHTS_FILE), "rb") as f:
            payload = f.read()
    except FileNotFoundError:
        raise BundleError(f"incomplete bundle at {uri}: {WEIGHTS_FILE} is missing") from None
    if meta.weights_sha256 and hashlib.sha256(payload).hexdigest() != meta.weights_sha256:
        raise BundleError(f"bundle {uri}: {WEIGHTS_FILE} does not match its sha256 in {META_FILE}")
    try:
        state = load_safetensors(payload)
    except Exception as err:  # safetensors raises its own error types for corrupt payloads
        raise BundleError(f"bundle {uri}: unreadable {WEIGHTS_FILE} ({err})") from None

    detail_state = {k[len(DETAIL_PREFIX):]: state.pop(k) for k in list(state)
                    if k.startswith(DETAIL_PREFIX)}
    if bool(detail_state) != (meta.detail is not None):
        raise BundleError(f"bundle {uri}: {META_FILE} and {WEIGHTS_FILE} disagree on the detail "
                          "branch (one has it, the other not)")
    try:
        config = get_config(meta.model_type, meta.image_size)
        sam = build_sam_from_config(config, state_dict=state, model_type=meta.model_type)
        detail = None
        if meta.detail is not None:
            detail = detail_branch_for(sam, **meta.detail)
            detail.load_state_dict({k: v.float() for k, v in detail_state.items()})
    except (CheckpointError, ValueError, RuntimeError, TypeError) as err:
        raise BundleError(f"bundle {uri}: {err}") from None
    sam.pixel_mean.copy_(torch.tensor(meta.pixel_mean).view(-1, 1, 1))
    sam.pixel_std.copy_(torch.tensor(meta.pixel_std).view(-1, 1, 1))
    # Self-prompts at the threshold the model was trained with.
    prompt_threshold = meta.prompt_threshold if meta.prompt_threshold is not None else meta.threshold
    model = SamSP(sam, iterations=meta.iterations, prompt=meta.prompt, n_points=meta.n_points,
                  n_negative=meta.n_negative, threshold=logit_of(prompt_threshold), detail=detail)
    return Bundle(model=model.eval(), meta=meta, uri=uri)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) > 1e-6
        except (TypeError, ValueError):
            return True
    return a != b


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "bundle"
    return f"{where}: {first.get('msg', '')}"
