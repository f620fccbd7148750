"""Fine-tuning modes: which parameters train, which stay frozen, and LoRA merging."""
from __future__ import annotations

import pytest
import torch

from samsp import (PROMPT_KINDS, SamSP, apply_lora, build_sam, configure_finetune, has_lora,
                   merge_lora, samsp_loss)


def _model(prompt: str = "box", iterations: int = 1, **kwargs) -> SamSP:
    torch.manual_seed(0)
    return SamSP(build_sam("vit_micro"), iterations=iterations, prompt=prompt, **kwargs).train()


def _backward(model: SamSP) -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 128, 128, generator=generator)
    target = (torch.rand(2, 1, 128, 128, generator=generator) > 0.5).float()
    samsp_loss(model(images), target).total.backward()


def _grads(model: SamSP) -> dict[str, bool]:
    """Parameter name -> received a gradient."""
    return {name: p.grad is not None for name, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["lora", "full", "decoder"])
@pytest.mark.parametrize("prompt", PROMPT_KINDS)
def test_every_trainable_parameter_gets_a_gradient_and_nothing_else_does(mode, prompt):
    # The DDP condition: a trainable parameter without gradient breaks the reduction.
    model = _model(prompt, n_negative=1 if prompt == "points" else 0)
    trainable = configure_finetune(model, mode, rank=2, alpha=4)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {id(p) for p in trainable} == {id(p) for n, p in model.named_parameters() if n in trainable_names}
    _backward(model)
    got = _grads(model)
    assert {n for n, g in got.items() if g} == trainable_names


def test_lora_mode_trains_adapters_prompt_encoder_and_decoder_only():
    model = _model("box")
    configure_finetune(model, "lora", rank=2, alpha=4)
    _backward(model)
    encoder = dict(model.sam.image_encoder.named_parameters())
    lora = [n for n in encoder if "lora_" in n]
    assert lora and all(encoder[n].grad is not None for n in lora)
    assert all(encoder[n].grad is None and not encoder[n].requires_grad for n in encoder if "lora_" not in n)
    # lora_B starts at zero, so lora_A's first gradient is zero; lora_B's is not.
    assert any(encoder[n].grad.abs().sum() > 0 for n in lora if "lora_B" in n)
    assert model.sam.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad is not None
    assert model.sam.prompt_encoder.point_embeddings[2].weight.grad is not None  # box corner
    assert model.sam.prompt_encoder.no_mask_embed.weight.grad is not None  # promptless pass
    assert not model.sam.mask_decoder.iou_prediction_head.layers[0].weight.requires_grad


def test_decoder_mode_freezes_the_whole_encoder():
    model = _model("mask")
    configure_finetune(model, "decoder")
    _backward(model)
    assert not has_lora(model)
    assert all(p.grad is None for p in model.sam.image_encoder.parameters())
    assert model.sam.prompt_encoder.mask_downscaling[0].weight.grad is not None


def test_full_mode_trains_the_encoder_from_scratch():
    model = _model("box")
    configure_finetune(model, "full")
    _backward(model)
    assert all(p.grad is not None for p in model.sam.image_encoder.parameters())


def test_merged_lora_model_matches_and_has_official_keys():
    model = _model("box").eval()
    plain_keys = set(model.sam.state_dict())
    apply_lora(model, rank=2, alpha=4)
    with torch.no_grad():  # non-zero adapters, as after training
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    merged = merge_lora(model)
    assert has_lora(model) and not has_lora(merged)  # the original keeps its adapters
    assert set(merged.sam.state_dict()) == plain_keys
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        a, b = model(images), merged(images)
    torch.testing.assert_close(b.low_res[0], a.low_res[0], rtol=1e-4, atol=1e-4)
    assert not torch.equal(model.sam.image_encoder.blocks[0].attn.qkv.base_layer.weight,
                           merged.sam.image_encoder.blocks[0].attn.qkv.weight)


def test_mode_errors():
    model = _model("box")
    with pytest.raises(ValueError, match="unknown fine-tune mode"):
        configure_finetune(model, "adapters")
    apply_lora(model, rank=2, alpha=4)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model)
    with pytest.raises(ValueError, match="merge_lora first"):
        configure_finetune(model, "full")
