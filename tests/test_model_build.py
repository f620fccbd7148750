"""build_sam: official layouts, small configs, checkpoint loading and refusal of bad files."""
from __future__ import annotations

import copy
import pickle
from dataclasses import replace
from functools import partial

import pytest
import torch
from safetensors.torch import save_file
from segment_anything import sam_model_registry
from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                       TwoWayTransformer)

import samsp
from samsp import CheckpointError, build_sam, build_sam_from_config, get_config
from samsp.attention import set_fused_attention


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_official_configs_have_segment_anythings_exact_layout(model_type):
    # On the meta device nothing is allocated: comparing full vit_h layouts costs milliseconds.
    with torch.device("meta"):
        reference = sam_model_registry[model_type]()
        ours = build_sam_from_config(get_config(model_type))
    assert _shapes(ours) == _shapes(reference)


def _official_layout_sam(image_size: int = 256) -> Sam:
    """A vit_b-width SAM with only 2 blocks, written out independently of samsp the way
    segment_anything.build_sam._build_sam does it: the key layout of an official checkpoint."""
    grid = image_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=768, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=12, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=14, out_chans=256,
        ),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
    ).eval()


REDUCED_VIT_B = replace(get_config("vit_b", 256), encoder_depth=2, encoder_global_attn_indexes=(1,))


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    torch.manual_seed(0)
    sam = _official_layout_sam()
    with torch.no_grad():  # non-zero rel-pos tables, so a wrong load would show in outputs
        for name, param in sam.named_parameters():
            if "rel_pos" in name:
                param.normal_(0, 0.02)
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_reduced.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


def _embeddings(sam: Sam, size: int = 256) -> torch.Tensor:
    # segment_anything's own attention on both sides: these tests are about the weights, and bit
    # equality needs the same kernels (tests/test_model_attention.py compares the fused one).
    sam = set_fused_attention(copy.deepcopy(sam), False)
    torch.manual_seed(1)
    with torch.no_grad():
        return sam.image_encoder(torch.randn(1, 3, size, size))


def test_official_checkpoint_loads_and_reproduces_the_model(official):
    reference, path = official
    loaded = build_sam_from_config(REDUCED_VIT_B, str(path), model_type="vit_b")
    assert loaded.samsp_model_type == "vit_b"
    assert not loaded.training
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(_embeddings(loaded), _embeddings(reference))
    assert torch.equal(loaded.pixel_mean, reference.pixel_mean)


@pytest.mark.parametrize("meta_min_params", [0, 10**12])
def test_meta_and_cpu_skeletons_load_the_same_model(official, monkeypatch, meta_min_params):
    # big encoders are built on the meta device (no wasted random init), small ones on the CPU
    # (no torch._dynamo import): either way the loaded model is the checkpoint's
    import samsp.build

    monkeypatch.setattr(samsp.build, "META_BUILD_MIN_PARAMS", meta_min_params)
    reference, path = official
    loaded = build_sam_from_config(REDUCED_VIT_B, str(path), model_type="vit_b")
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert torch.equal(loaded.pixel_std, reference.pixel_std)
    assert torch.equal(_embeddings(loaded), _embeddings(reference))


def test_safetensors_wrapped_and_ddp_prefixed_checkpoints_load(official, tmp_path):
    reference, _ = official
    state = reference.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"model": state, "epoch": 3}, tmp_path / "wrapped.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    for name in ("w.safetensors", "wrapped.pt", "ddp.pt"):
        loaded = build_sam_from_config(REDUCED_VIT_B, f"file://{tmp_path / name}")
        assert torch.equal(loaded.image_encoder.pos_embed, reference.image_encoder.pos_embed), name


def test_other_image_size_resamples_positions(official):
    _, path = official
    small = replace(REDUCED_VIT_B, image_size=128)
    shapes = r"image_encoder\.pos_embed.*\(1, 16, 16, 768\).*\(1, 8, 8, 768\)"
    with pytest.raises(CheckpointError, match=shapes):
        build_sam_from_config(small, str(path))
    sam = build_sam_from_config(small, str(path), resample_positions=True)
    assert sam.image_encoder.pos_embed.shape == (1, 8, 8, 768)
    assert sam.image_encoder.blocks[1].attn.rel_pos_h.shape == (15, 64)  # global block: 2*8-1
    assert sam.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 64)  # window 14: unchanged
    assert _embeddings(sam, 128).shape == (1, 256, 8, 8)


def test_build_sam_with_image_size_resamples_its_own_checkpoint(tmp_path):
    torch.manual_seed(0)
    micro = build_sam("vit_micro")
    torch.save(micro.state_dict(), tmp_path / "micro.pt")
    bigger = build_sam("vit_micro", str(tmp_path / "micro.pt"), image_size=256)
    assert bigger.image_encoder.img_size == 256
    assert bigger.image_encoder.pos_embed.shape == (1, 16, 16, 64)
    assert torch.equal(bigger.mask_decoder.iou_token.weight, micro.mask_decoder.iou_token.weight)


def test_mismatched_checkpoint_names_first_bad_key_and_both_shapes(tmp_path):
    torch.save(build_sam("vit_micro").state_dict(), tmp_path / "micro.pt")
    with pytest.raises(CheckpointError) as err:
        build_sam("vit_tiny", str(tmp_path / "micro.pt"))
    message = str(err.value)
    assert "image_encoder.pos_embed" in message
    assert "(1, 8, 8, 64)" in message and "(1, 16, 16, 192)" in message
    assert "missing key" in message  # vit_tiny has more blocks


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = build_sam("vit_micro").state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\), first 'mask_decoder\.iou_token\.weight'"
                       r".*1 unexpected key\(s\), first 'extra\.weight'"):
        build_sam("vit_micro", str(tmp_path / "bad.pt"))


class _CreatesFile:
    """Unpickling this would create a file: the classic pickle payload."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_never_executed(tmp_path, writer):
    victim = tmp_path / "pwned"
    payload = {"image_encoder.pos_embed": torch.zeros(1), "x": _CreatesFile(str(victim))}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not victim.exists()
    refusal = "refusing checkpoint.*nothing in it was executed.*Unsupported global"
    with pytest.raises(CheckpointError, match=refusal):
        build_sam("vit_micro", str(path))
    assert not victim.exists()


def test_unreadable_missing_and_non_tensor_files_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        build_sam("vit_micro", str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        build_sam("vit_micro", str(tmp_path / "absent.pt"))
    torch.save({"w": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="'step' is a int"):
        build_sam("vit_micro", str(tmp_path / "mixed.pt"))


def test_small_configs_and_unknown_model_type():
    assert set(samsp.SAM_CONFIGS) >= {"vit_b", "vit_l", "vit_h", "vit_tiny", "vit_micro"}
    tiny = build_sam("vit_tiny")
    assert tiny.image_encoder.img_size == 256
    assert tiny.prompt_encoder.image_embedding_size == (16, 16)
    with pytest.raises(ValueError, match="unknown model_type 'vit_x'"):
        build_sam("vit_x")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_sam("vit_micro", image_size=100)
