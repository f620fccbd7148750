"""Fused image-encoder attention (samsp.attention) against segment_anything's own."""
from __future__ import annotations

import copy
import pickle
from dataclasses import replace

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, Block

import samsp.attention
from samsp import apply_lora, build_sam, build_sam_from_config, get_config
from samsp.attention import FusedAttention, set_fused_attention, uses_fused_attention

# vit_b's width and heads, two blocks (windowed, then global) at 256 px: a 16x16 grid in windows
# of 14, i.e. padded to 28x28.
REDUCED_VIT_B = replace(get_config("vit_b", 256), encoder_depth=2, encoder_global_attn_indexes=(1,))
FP32 = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(params=["sdpa", "materialised"])
def attention_path(request, monkeypatch):
    """Each test below on both of samsp.attention.attend's paths, whatever the sequence length."""
    limit = 0 if request.param == "sdpa" else 10**9
    monkeypatch.setattr(samsp.attention, "MATERIALISE_MAX_TOKENS", limit)
    monkeypatch.setattr(samsp.attention, "MATERIALISE_MAX_TOKENS_GRAD", limit)
    return request.param


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero everything (rel-pos tables are zero-initialised), so a wrong bias shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            scale = 0.5 if "rel_pos" in name else 0.05
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return module


def _encoder(config, seed: int = 0):
    sam = build_sam_from_config(config, fused_attention=False)
    return _randomised(sam.image_encoder, seed)


def _both(module, *inputs, grad: bool = False):
    """(reference output, fused output) and, with ``grad``, both sets of gradients."""
    results = []
    for fused in (False, True):
        set_fused_attention(module, fused)
        module.zero_grad(set_to_none=True)
        xs = [x.detach().clone().requires_grad_(grad) for x in inputs]
        out = module(*xs)
        grads = None
        if grad:
            # a fixed random projection, so every output element matters
            weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            (out * weight).sum().backward()
            grads = {name: p.grad.clone() for name, p in module.named_parameters()
                     if p.grad is not None}
            grads.update({f"input{i}": x.grad.clone() for i, x in enumerate(xs)})
        results.append((out.detach(), grads))
    return results


@pytest.mark.parametrize("config", [get_config("vit_tiny"), REDUCED_VIT_B],
                         ids=["vit_tiny", "vit_b_depth2_256px"])
def test_fused_encoder_equals_segment_anything(config, attention_path):
    encoder = _encoder(config).eval()
    image = torch.randn(1, 3, config.image_size, config.image_size)
    with torch.no_grad():
        (ref, _), (fused, _) = _both(encoder, image)
    torch.testing.assert_close(fused, ref, **FP32)


@pytest.mark.parametrize("window, grid", [(0, 16), (8, 16), (14, 14), (14, 20), (14, 64)],
                         ids=["global", "windows", "one_window", "padded", "windows14_grid64"])
def test_fused_block_equals_reference_and_so_do_gradients(window, grid, attention_path):
    # Narrow blocks (64 wide, 2 heads) keep the 64x64 grid cheap; windows of 14 over 64 pad to 70.
    block = _randomised(Block(64, 2, use_rel_pos=True, window_size=window,
                              input_size=(grid, grid)))
    x = torch.randn(2, grid, grid, 64)
    (ref, ref_grads), (fused, fused_grads) = _both(block, x, grad=True)
    torch.testing.assert_close(fused, ref, **FP32)
    assert ref_grads.keys() == fused_grads.keys()
    assert {"attn.rel_pos_h", "attn.rel_pos_w", "attn.qkv.weight", "input0"} <= ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_rel_pos_tables_of_another_size_are_interpolated_like_segment_anything(attention_path):
    # A global block built for an 8x8 grid run on 12x12 (segment_anything's get_rel_pos resizes).
    attn = _randomised(Attention(64, 2, use_rel_pos=True, input_size=(8, 8)))
    x = torch.randn(1, 12, 12, 64)
    with torch.no_grad():
        (ref, _), (fused, _) = _both(attn, x)
    torch.testing.assert_close(fused, ref, **FP32)


def test_bf16_autocast_is_no_worse_than_segment_anythings_bf16(attention_path):
    encoder = _encoder(REDUCED_VIT_B).eval()
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        set_fused_attention(encoder, False)
        exact = encoder(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (ref, _), (fused, _) = _both(encoder, image)
    ref_err = (ref.float() - exact).abs().max().item()
    fused_err = (fused.float() - exact).abs().max().item()
    assert fused_err <= max(ref_err * 1.5, 1e-3), (fused_err, ref_err)
    torch.testing.assert_close(fused.float(), exact, rtol=0.05, atol=0.05)


def test_lora_in_qkv_applies_in_the_fused_forward(attention_path):
    sam = build_sam("vit_micro")
    _randomised(sam.image_encoder)
    apply_lora(sam, rank=2)
    with torch.no_grad():  # lora_B starts at zero: make the adapters change the output
        for name, param in sam.image_encoder.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    assert uses_fused_attention(sam)
    image = torch.randn(1, 3, 128, 128)
    (ref, ref_grads), (fused, fused_grads) = _both(sam.image_encoder, image, grad=True)
    torch.testing.assert_close(fused, ref, **FP32)
    lora = [name for name in fused_grads if "lora_" in name]
    assert lora and all(fused_grads[name].abs().sum() > 0 for name in lora)
    for name in lora:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5)
    set_fused_attention(sam.image_encoder, False)
    with torch.no_grad():
        for name, param in sam.image_encoder.named_parameters():
            if "lora_B" in name:
                param.zero_()
        without = sam.image_encoder(image)
    assert not torch.allclose(without, ref)  # the adapters did contribute


def test_on_by_default_with_unchanged_state_dict_keys_and_switchable_off(monkeypatch):
    monkeypatch.delenv("SAMSP_FUSED_ATTENTION", raising=False)
    fused = build_sam("vit_tiny")
    plain = build_sam("vit_tiny", fused_attention=False)
    attns = [m for m in fused.modules() if isinstance(m, Attention)]
    assert attns and all(type(m) is FusedAttention for m in attns)
    # off is segment_anything's own class, hence its own forward
    assert all(type(m) is Attention for m in plain.modules() if isinstance(m, Attention))
    assert fused.state_dict().keys() == plain.state_dict().keys()
    assert {k: v.shape for k, v in fused.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}
    # the decoder's attention is another class and stays as it is
    assert not any(isinstance(m, FusedAttention) for m in fused.mask_decoder.modules())
    monkeypatch.setenv("SAMSP_FUSED_ATTENTION", "0")
    assert not uses_fused_attention(build_sam("vit_micro"))
    assert uses_fused_attention(build_sam("vit_micro", fused_attention=True))


def test_fused_model_copies_pickles_and_trains_after_inference_mode():
    sam = build_sam("vit_micro")
    image = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():  # fills the index cache first
        first = sam.image_encoder(image)
    # cached constants are ordinary tensors: a training forward can save them for backward
    sam.train()
    sam.image_encoder(image).sum().backward()
    for clone in (copy.deepcopy(sam), pickle.loads(pickle.dumps(sam))):
        assert uses_fused_attention(clone)
        with torch.no_grad():
            torch.testing.assert_close(clone.eval().image_encoder(image), first)


def test_relative_position_indices_are_cached_on_the_parameters_device():
    attn = _randomised(Attention(64, 2, use_rel_pos=True, input_size=(8, 8)))
    set_fused_attention(attn)
    x = torch.randn(1, 8, 8, 64)
    attn(x)
    cache = attn._samsp_attention_cache
    first = dict(cache)
    attn(x)
    assert cache.keys() == first.keys() and all(cache[k] is first[k] for k in cache)
    assert all(t.device == attn.rel_pos_h.device for t in cache.values())
    assert "_samsp_attention_cache" not in str(attn.state_dict().keys())


def test_long_sequences_use_sdpa_and_short_ones_one_bmm(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(a[0].shape[-2]) or sdpa(*a, **kw))
    for grid in (8, 16, 32, 64):
        attn = set_fused_attention(Attention(64, 2, use_rel_pos=True, input_size=(grid, grid)))
        x = torch.randn(1, grid, grid, 64)
        with torch.no_grad():
            attn(x)
        attn(x).sum().backward()
    # inference: flash above 256 tokens; with autograd above 1024 (CPU flash backward is slow)
    assert calls == [1024, 4096, 4096]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_equals_reference_with_indices_on_the_device():
    encoder = _encoder(REDUCED_VIT_B).cuda().eval()
    image = torch.randn(1, 3, 256, 256, device="cuda")
    with torch.no_grad():
        (ref, _), (fused, _) = _both(encoder, image)
        torch.testing.assert_close(fused, ref, rtol=1e-3, atol=1e-3)  # TF32 may be on
        with torch.autocast("cuda", dtype=torch.bfloat16):
            (ref16, _), (fused16, _) = _both(encoder, image)
    torch.testing.assert_close(fused16.float(), ref, rtol=0.05, atol=0.05)
    caches = [m._samsp_attention_cache for m in encoder.modules() if isinstance(m, FusedAttention)]
    assert caches and all(t.is_cuda for c in caches for t in c.values())


# ----------------------------------------------------------------- query blocks (bf16, no AMX)

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_query_blocks_equal_segment_anythings_attention(monkeypatch, dtype):
    """attend_query_blocks = segment_anything's scores + decomposed bias + softmax, a few query
    rows at a time (several blocks forced: 32x32 grid, batch 2, 2 heads: 40-row blocks and a
    tail)."""
    monkeypatch.setattr(samsp.attention, "QUERY_BLOCK_SCORES", 2 * 1024 * 80)
    attn = _randomised(Attention(64, 2, use_rel_pos=True, input_size=(32, 32))).eval()
    x = torch.randn(2, 32, 32, 64)
    with torch.no_grad():
        ref = attn(x)
        B, H, W, _ = x.shape
        qkv = attn.qkv(x).reshape(B, H * W, 3, 2, -1).permute(2, 0, 3, 1, 4).to(dtype)
        q, k, v = qkv.unbind(0)
        out = samsp.attention.attend_query_blocks(q, k, v, attn.scale, attn.rel_pos_h.to(dtype),
                                                  attn.rel_pos_w.to(dtype), (H, W), {})
        out = attn.proj(out.float().reshape(B, 2, H, W, -1).permute(0, 2, 3, 1, 4)
                        .reshape(B, H, W, -1))
    tol = FP32 if dtype == torch.float32 else dict(rtol=0.05, atol=0.05)
    torch.testing.assert_close(out, ref, **tol)


def test_bf16_inference_on_a_cpu_without_amx_takes_query_blocks(monkeypatch):
    """Which path a global block takes: query blocks only for bf16 inference on a CPU without
    AMX (simulated both ways); fp32, autograd and AMX CPUs keep the flash kernel."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append("sdpa") or sdpa(*a, **kw))
    blocks = samsp.attention.attend_query_blocks
    monkeypatch.setattr(samsp.attention, "attend_query_blocks",
                        lambda *a, **kw: calls.append("blocks") or blocks(*a, **kw))
    # 40x40 = 1600 tokens: past the materialised limits with and without autograd
    attn = set_fused_attention(_randomised(Attention(64, 2, use_rel_pos=True,
                                                     input_size=(40, 40))))
    x = torch.randn(1, 40, 40, 64)

    def run(amx: bool, bf16: bool, grad: bool = False) -> str:
        monkeypatch.setattr(samsp.attention, "_cpu_has_amx", lambda: amx)
        calls.clear()
        with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = attn(x)
        if grad:
            out.float().sum().backward()
        return calls[0]

    assert run(amx=False, bf16=True) == "blocks"
    assert run(amx=True, bf16=True) == "sdpa"
    assert run(amx=False, bf16=False) == "sdpa"
    assert run(amx=False, bf16=True, grad=True) == "sdpa"
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        monkeypatch.setattr(samsp.attention, "_cpu_has_amx", lambda: False)
        blocked = attn(x).float()
        monkeypatch.setattr(samsp.attention, "_cpu_has_amx", lambda: True)
        flash = attn(x).float()
    torch.testing.assert_close(blocked, flash, rtol=0.05, atol=0.05)
