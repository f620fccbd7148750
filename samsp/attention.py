"""The image encoder's attention with the relative-position bias folded into q and k.

segment_anything's ``Attention`` materialises the score matrix, adds the decomposed relative-
position bias to it and softmaxes it: for vit_b's global blocks that is [12, 4096, 4096] per
image, written and read several times -- memory-bound, half of a bf16 forward on CPU and ~0.8 GB
per image. Here the bias is folded into the dot product instead, so
``torch.nn.functional.scaled_dot_product_attention`` (a flash kernel on CPU and CUDA) runs with no
mask and never holds more than a block of scores (short windows use one bmm; see ``attend``):

    score[i, j] = q_i . k_j * scale + rel_h[i, j_h] + rel_w[i, j_w]
                = [q_i * scale, rel_h[i], rel_w[i]] . [k_j, onehot(j_h), onehot(j_w)]

(``j_h``, ``j_w``: key j's row and column). The one-hot columns are exact in any precision, so this
is the same sum, accumulated inside the kernel. q/k widen by H + W (64 -> 192 for a 64x64 global
block); v is zero-padded to the same width because the flash kernels want one head dim.

One exception, measured: bf16 inference on a CPU without AMX, where the flash kernel runs the
widened q/k slower than segment_anything's own scores. There the long (global) blocks compute
exactly those -- scores, decomposed bias, softmax -- a block of query rows at a time
(:func:`attend_query_blocks`), which bounds memory the same way.

Parameters, their names and the official checkpoint layout are untouched:
:func:`set_fused_attention` swaps the class of each encoder ``Attention`` instance (and back). The
forward still calls ``self.qkv`` and ``self.proj``, so peft LoRA injected into ``qkv`` applies. The
relative-position index tensors are built once per device (segment_anything indexes with a CPU
``arange`` every forward: a host-to-device copy and stream sync per block on CUDA).
"""
from __future__ import annotations

import functools
from typing import Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention
from torch import nn

# CUDA's flash / memory-efficient kernels want head dims that are multiples of 8.
_HEAD_DIM_MULTIPLE = 8


class FusedAttention(Attention):
    """``Attention`` with the same parameters; the bias is folded into q/k (see the module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        # qkv with shape (3, B, nHead, H * W, C)
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.use_rel_pos and _rows_without_flash(q):
            x = attend_query_blocks(q, k, v, self.scale, self.rel_pos_h, self.rel_pos_w, (H, W),
                                    _index_cache(self))
        elif self.use_rel_pos:
            q, k = fold_rel_pos(q, k, self.scale, self.rel_pos_h, self.rel_pos_w, (H, W),
                                _index_cache(self))
            x = attend(q, k, v, 1.0)  # scale already applied to q's first head_dim columns
        else:
            x = attend(_pad_head_dim(q), _pad_head_dim(k), v, self.scale)
        # (B, nHead, H * W, C) -> (B, H, W, nHead * C)
        x = x.reshape(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


# Measured on CPU (vit_b/vit_tiny widths, bf16 and fp32): up to ~256 tokens a materialised score
# matrix (one bmm, the bias already in it) is as fast as the flash kernel or faster (8x8 windows:
# 30 %), and with autograd up to ~1k tokens much faster (the CPU flash backward is slow on short
# sequences: 2x on vit_tiny's windows). From 1k tokens on, flash wins the forward (2x at 4096) and
# ties with backward while never holding the [N, N] scores. On CUDA flash is used throughout.
MATERIALISE_MAX_TOKENS = 256
MATERIALISE_MAX_TOKENS_GRAD = 1024


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for q, k (B, nHead, N, E) and v (B, nHead, N, C), C <= E."""
    n_tokens, head_dim = q.shape[-2], v.shape[-1]
    grad = torch.is_grad_enabled() and q.requires_grad
    limit = MATERIALISE_MAX_TOKENS_GRAD if grad else MATERIALISE_MAX_TOKENS
    if q.device.type == "cpu" and n_tokens <= limit:
        attn = (q * scale if scale != 1.0 else q) @ k.transpose(-2, -1)
        return attn.softmax(dim=-1) @ v
    # The flash kernels want v as wide as q and k: zero columns, dropped from the output.
    v = F.pad(v, (0, q.shape[-1] - head_dim))
    return F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :head_dim]


# Query rows per block of :func:`attend_query_blocks`: about this many score elements at once
# (B x heads x rows x N; 32M = 64 MB of bf16 scores; a block holds 3-4 such temporaries: the
# scores, the biased scores, the softmax -- bf16 too under CPU autocast). At least one row.
QUERY_BLOCK_SCORES = 32 << 20


def _rows_without_flash(q: torch.Tensor) -> bool:
    """Long bf16 sequences on a CPU without AMX: there the flash kernel runs the folded q/k
    (3x wider for vit_b's global blocks) slower than segment_anything's materialised scores --
    measured on an AMD EPYC with avx512_bf16, vit_b 1024², 1 thread: flash 9.5-9.7 s, scores
    7.6-8.4 s per image -- while with AMX (and on CUDA, and in fp32) flash is faster (2.4x on
    an AMX Xeon). Inference only: training keeps the flash path."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or q.shape[-2] <= MATERIALISE_MAX_TOKENS:
        return False
    if torch.is_grad_enabled() and q.requires_grad:
        return False
    return not _cpu_has_amx()


@functools.lru_cache(maxsize=1)
def _cpu_has_amx() -> bool:
    probe = getattr(torch._C, "_cpu", None)
    check = getattr(probe, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def attend_query_blocks(q, k, v, scale: float, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                        size: Tuple[int, int], cache: dict) -> torch.Tensor:
    """segment_anything's attention with its decomposed relative-position bias -- scores, bias
    add, softmax, @ v, the same operations -- one block of query rows at a time, so no more than
    ``QUERY_BLOCK_SCORES`` score elements exist at once (the full [heads, N, N] matrix is ~0.8 GB
    per vit_b image). q, k, v (B, nHead, N, C) -> (B, nHead, N, C)."""
    B, n_heads, N, C = q.shape
    H, W = size
    rel_h, rel_w = decomposed_rel_pos(q, rel_pos_h, rel_pos_w, size, cache)
    rows = max(1, QUERY_BLOCK_SCORES // max(1, B * n_heads * N))
    k_t = k.transpose(-2, -1)
    out = []
    for start in range(0, N, rows):
        stop = min(N, start + rows)
        attn = (q[:, :, start:stop] * scale) @ k_t  # (B, nHead, n, N)
        attn = (attn.view(B, n_heads, stop - start, H, W)
                + rel_h[:, :, start:stop, :, None] + rel_w[:, :, start:stop, None, :])
        out.append(attn.view(B, n_heads, stop - start, N).softmax(dim=-1) @ v)
    return torch.cat(out, dim=2)


def fold_rel_pos(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: Tuple[int, int],
    cache: dict,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Widen q (B, nHead, H * W, C) and k so that q' . k' = q . k * scale + the decomposed
    relative-position bias of segment_anything's ``add_decomposed_rel_pos`` (q and k sizes equal).

    Returns q', k' of shape (B, nHead, H * W, C + H + W rounded up to a multiple of 8).
    """
    B, n_heads, N, C = q.shape
    H, W = size
    rel_h, rel_w = decomposed_rel_pos(q, rel_pos_h, rel_pos_w, size, cache)
    width = _padded(C + H + W)
    pad = q.new_zeros(()).expand(B, n_heads, N, width - C - H - W)
    q_wide = torch.cat([q * scale, rel_h.to(q.dtype), rel_w.to(q.dtype), pad], dim=-1)
    keys = _key_one_hot(H, W, width - C, k.dtype, k.device, cache)  # (N, H + W + pad)
    k_wide = torch.cat([k, keys.expand(B, n_heads, N, width - C)], dim=-1)
    return q_wide, k_wide


def decomposed_rel_pos(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                       size: Tuple[int, int], cache: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """The row and column terms of ``add_decomposed_rel_pos`` for q (B, nHead, H * W, C):
    rel_h (B, nHead, H * W, H) and rel_w (B, nHead, H * W, W), from the unscaled q as there."""
    B, n_heads, N, C = q.shape
    H, W = size
    Rh = _rel_pos_table(rel_pos_h, H, cache)  # (H, H, C)
    Rw = _rel_pos_table(rel_pos_w, W, cache)  # (W, W, C)
    r_q = q.reshape(B, n_heads, H, W, C)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh).reshape(B, n_heads, N, H)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw).reshape(B, n_heads, N, W)
    return rel_h, rel_w


def _rel_pos_table(rel_pos: torch.Tensor, size: int, cache: dict) -> torch.Tensor:
    """segment_anything's ``get_rel_pos(size, size, rel_pos)``: (size, size, C), index cached."""
    max_rel_dist = 2 * size - 1
    if rel_pos.shape[0] != max_rel_dist:  # interpolated like get_rel_pos
        rel_pos = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist,
            mode="linear",
        ).reshape(-1, max_rel_dist).permute(1, 0)
    key = ("rel_index", size, rel_pos.device)
    if key not in cache:
        with _constants():
            coords = torch.arange(size, device=rel_pos.device)
            # relative_coords of get_rel_pos for equal q and k sizes: q - k + (size - 1)
            cache[key] = coords[:, None] - coords[None, :] + (size - 1)
    return rel_pos[cache[key]]


def _key_one_hot(H: int, W: int, width: int, dtype: torch.dtype, device: torch.device,
                 cache: dict) -> torch.Tensor:
    """(H * W, width): key j's row one-hot, then its column one-hot, then zeros."""
    key = ("key_one_hot", H, W, width, dtype, device)
    if key not in cache:
        with _constants():
            rows = torch.arange(H, device=device).repeat_interleave(W)
            cols = torch.arange(W, device=device).repeat(H)
            keys = torch.zeros(H * W, width, dtype=dtype, device=device)
            keys[torch.arange(H * W, device=device), rows] = 1
            keys[torch.arange(H * W, device=device), H + cols] = 1
            cache[key] = keys
    return cache[key]


def _index_cache(module: nn.Module) -> dict:
    # A plain attribute, not a buffer: nothing enters the state dict, and keys carry the device.
    cache = module.__dict__.get("_samsp_attention_cache")
    if cache is None:
        cache = module.__dict__["_samsp_attention_cache"] = {}
    return cache


def _constants():
    # Cached tensors built under inference_mode would be inference tensors, which a later
    # training forward could not save for backward (the index gather saves its index).
    return torch.inference_mode(False)


def _padded(width: int) -> int:
    return -(-width // _HEAD_DIM_MULTIPLE) * _HEAD_DIM_MULTIPLE


def _pad_head_dim(t: torch.Tensor) -> torch.Tensor:
    return F.pad(t, (0, _padded(t.shape[-1]) - t.shape[-1]))


def set_fused_attention(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every image-encoder ``Attention`` in ``model`` to :class:`FusedAttention` (or back
    to segment_anything's own with ``enabled=False``), in place; returns ``model``."""
    target = FusedAttention if enabled else Attention
    for module in model.modules():
        if isinstance(module, Attention):
            module.__class__ = target
    return model


def uses_fused_attention(model: nn.Module) -> bool:
    """True if any image-encoder attention in ``model`` is fused."""
    return any(isinstance(m, FusedAttention) for m in model.modules())
