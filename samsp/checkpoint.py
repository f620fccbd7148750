"""Reading weights safely and fitting them to a model.

Weights come from a local path or any fsspec URI (``s3://...`` reads the AWS environment through
s3fs). Two formats are accepted: safetensors, and ``torch.save`` files (zip or legacy pickle)
loaded with ``weights_only=True``, so a pickle that would build arbitrary objects is refused by
the restricted unpickler instead of being executed.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from typing import Mapping

import fsspec
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError

_ZIP_MAGIC = b"PK\x03\x04"
# Positional parameters that depend on the input size and may be resampled for another one.
_POSITIONAL_SUFFIXES = ("pos_embed", "attn.rel_pos_h", "attn.rel_pos_w")
# Containers other training codes wrap a state dict in.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """Tensors stored at ``uri`` (safetensors or a torch state dict), on the CPU."""
    if _is_local(uri):
        path = _local_path(uri)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint not found: {uri}")
        return _read_local(path, uri, mmap=True)
    # Remote: copy to a local temporary file first; torch.load and safetensors both want random
    # access, which over S3 would be a storm of small range requests.
    try:
        with fsspec.open(uri, "rb") as src, tempfile.NamedTemporaryFile(suffix=".ckpt") as dst:
            shutil.copyfileobj(src, dst, length=16 << 20)
            dst.flush()
            return _read_local(dst.name, uri, mmap=False)  # the copy is deleted on return
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {uri}") from None


def _read_local(path: str, uri: str, mmap: bool) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":
        state = _torch_load(path, uri, mmap=mmap and head.startswith(_ZIP_MAGIC))
    else:
        state = _safetensors_load(path, uri)
    return _plain_state_dict(state, uri)


def _torch_load(path: str, uri: str, mmap: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing checkpoint {uri}: it holds objects other than plain weights; "
            f"nothing in it was executed ({_unpickler_reason(err)})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"unreadable checkpoint {uri}: {err}") from None


def _unpickler_reason(err: Exception) -> str:
    """The one informative line of torch's long weights-only refusal."""
    match = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|$)", str(err), re.MULTILINE)
    return match.group(1).strip() if match else str(err).strip().splitlines()[0]


def _safetensors_load(path: str, uri: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"unreadable checkpoint {uri}: neither a torch file nor safetensors ({err})"
        ) from None


def _plain_state_dict(state: object, uri: str) -> dict[str, torch.Tensor]:
    """Unwrap ``{"model": sd}``-style containers and ``module.`` prefixes; demand tensors only."""
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {uri} holds a {type(state).__name__}, not a state dict")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {uri}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def fit_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    resample_positions: bool = False,
    source: str = "checkpoint",
    target: str = "model",
) -> dict[str, torch.Tensor]:
    """``state`` checked against ``model``'s keys and shapes, ready for a strict load.

    With ``resample_positions`` the input-size-dependent positional parameters (absolute
    ``pos_embed`` and the global-attention ``rel_pos_*``) are interpolated to the model's size, so
    an official 1024 px checkpoint serves a model built for another input size. Anything else
    that differs raises ``CheckpointError`` naming the first bad key and both shapes.
    """
    expected = model.state_dict()
    fitted: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in state.items():
        if key not in expected:
            continue
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            if resample_positions and key.endswith(_POSITIONAL_SUFFIXES):
                value = _resample_positional(key, value, want)
            if value is None or tuple(value.shape) != want:
                mismatched.append(
                    f"key {key!r} has shape {tuple(state[key].shape)} in the {source} "
                    f"but {want} in the {target}"
                )
                continue
        fitted[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if mismatched or missing or unexpected:
        problems = []
        if mismatched:
            more = f" ({len(mismatched) - 1} more mismatched)" if len(mismatched) > 1 else ""
            problems.append(mismatched[0] + more)
        if missing:
            problems.append(f"{len(missing)} missing key(s), first {missing[0]!r}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
        raise CheckpointError(f"{source} does not fit the {target}: " + "; ".join(problems))
    return fitted


def _resample_positional(
    key: str, value: torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor | None:
    """Interpolate a positional table to ``shape``; None if only channels would change."""
    if value.shape[-1] != shape[-1] or value.dim() != len(shape):
        return None
    dtype = value.dtype
    if key.endswith("pos_embed"):  # [1, H, W, C] absolute position per patch
        grid = value.float().permute(0, 3, 1, 2)
        shrink = shape[1] < value.shape[1]
        grid = F.interpolate(grid, size=shape[1:3], mode="bicubic", align_corners=False,
                             antialias=shrink)
        return grid.permute(0, 2, 3, 1).to(dtype).contiguous()
    # [2L-1, C] relative position per offset; linear like segment_anything's get_rel_pos.
    table = value.float().t().unsqueeze(0)
    table = F.interpolate(table, size=shape[0], mode="linear", align_corners=False)
    return table.squeeze(0).t().to(dtype).contiguous()
