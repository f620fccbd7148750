"""Bundles: bit-identical round trips, merged LoRA, refusal of broken bundles, S3."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from samsp import (BundleError, CheckpointError, SamSP, apply_lora, build_sam, has_lora,
                   load_bundle, logit_of, save_bundle)

META = {"threshold": 0.4, "band_map": [2, 1, 0], "provenance": {"run": "unit", "val_dice": 0.5}}


def _model(prompt: str = "points", iterations: int = 2) -> SamSP:
    torch.manual_seed(0)
    # Self-prompts at the output threshold's logit, as training builds it and bundles load it.
    model = SamSP(build_sam("vit_micro"), iterations=iterations, prompt=prompt, n_points=3,
                  n_negative=1, threshold=logit_of(META["threshold"]))
    return model.eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))


def _assert_identical(a: SamSP, b: SamSP) -> None:
    with torch.no_grad():
        out_a, out_b = a(_images()), b(_images())
    assert len(out_a.logits) == len(out_b.logits)
    for x, y in zip(out_a.logits, out_b.logits):
        assert torch.equal(x, y)


def test_round_trip_is_bit_identical(tmp_path):
    model = _model()
    meta = save_bundle(model, str(tmp_path / "b"), META)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bundle.json", "model.safetensors"]
    bundle = load_bundle(str(tmp_path / "b"))
    assert not bundle.model.training
    assert bundle.meta == meta
    assert (meta.model_type, meta.image_size, meta.iterations, meta.prompt) == ("vit_micro", 128, 2, "points")
    assert (meta.threshold, meta.band_map, meta.provenance) == (0.4, [2, 1, 0], META["provenance"])
    # the loaded model derives its self-prompts at the bundle's output threshold
    assert load_bundle(str(tmp_path / "b")).model.threshold == pytest.approx(logit_of(0.4))
    assert meta.pixel_mean == tuple(model.sam.pixel_mean.flatten().tolist())
    for key, value in model.sam.state_dict().items():
        assert torch.equal(bundle.model.sam.state_dict()[key], value), key
    _assert_identical(model, bundle.model)
    # ... and a second generation is byte-identical on disk.
    save_bundle(bundle.model, str(tmp_path / "c"), bundle.meta)
    assert (tmp_path / "b/model.safetensors").read_bytes() == (tmp_path / "c/model.safetensors").read_bytes()


def test_lora_is_merged_into_plain_official_weights(tmp_path):
    model = _model("box", 1)
    plain_keys = set(model.sam.state_dict())
    apply_lora(model, rank=2, alpha=4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    save_bundle(model, str(tmp_path / "b"), {})
    assert set(load_file(tmp_path / "b/model.safetensors")) == plain_keys
    loaded = load_bundle(str(tmp_path / "b")).model
    assert has_lora(model) and not has_lora(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images()).low_res[0], model(_images()).low_res[0],
                                   rtol=1e-4, atol=1e-4)


def test_broken_bundles_are_refused(tmp_path):
    model = _model()
    with pytest.raises(BundleError, match="contradicts the model"):
        save_bundle(model, str(tmp_path / "x"), {"iterations": 5})
    with pytest.raises(BundleError, match="threshold"):
        save_bundle(model, str(tmp_path / "x"), {"threshold": 1.5})
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(str(tmp_path / "nothing"))

    save_bundle(model, str(tmp_path / "b"), META)
    weights = tmp_path / "b/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_bundle(str(tmp_path / "b"))

    save_bundle(model, str(tmp_path / "d"), META)
    meta_file = tmp_path / "d/bundle.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "model_type": "vit_tiny", "image_size": 256}))
    with pytest.raises(BundleError, match="does not fit the vit_tiny model"):
        load_bundle(str(tmp_path / "d"))
    meta_file.write_text(json.dumps({**meta, "surprise": 1}))
    with pytest.raises(BundleError, match="surprise"):
        load_bundle(str(tmp_path / "d"))


@pytest.mark.s3
def test_bundle_and_checkpoint_through_s3(s3_env, tmp_path):
    model = _model("box", 1)
    uri = f"s3://{s3_env.bucket}/models/test-bundle"
    save_bundle(model, uri, META)
    bundle = load_bundle(uri)
    _assert_identical(model, bundle.model)
    assert bundle.uri == uri

    import fsspec

    torch.save(model.sam.state_dict(), tmp_path / "sam.pt")
    with fsspec.open(f"s3://{s3_env.bucket}/ckpt/sam.pt", "wb") as dst:
        dst.write((tmp_path / "sam.pt").read_bytes())
    sam = build_sam("vit_micro", f"s3://{s3_env.bucket}/ckpt/sam.pt")
    assert torch.equal(sam.image_encoder.pos_embed, model.sam.image_encoder.pos_embed)
    with pytest.raises(CheckpointError, match="not found"):
        build_sam("vit_micro", f"s3://{s3_env.bucket}/ckpt/absent.pt")


def test_float16_bundle_is_half_the_size_and_loads_as_float32(tmp_path):
    """Committed models are stored in float16; they load into float32 with tiny differences."""
    import os

    import torch

    from samsp import SamSP, build_sam, load_bundle, save_bundle

    torch.manual_seed(0)
    model = SamSP(build_sam("vit_micro"), iterations=1, prompt="box").eval()
    save_bundle(model, str(tmp_path / "f32"))
    meta = save_bundle(model, str(tmp_path / "f16"), weights_dtype="float16")
    assert meta.weights_dtype == "float16"
    size32 = os.path.getsize(tmp_path / "f32" / "model.safetensors")
    size16 = os.path.getsize(tmp_path / "f16" / "model.safetensors")
    assert size16 < 0.6 * size32
    loaded = load_bundle(str(tmp_path / "f16"))
    params = dict(loaded.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        a = model(x).final
        b = loaded.model(x).final
    assert torch.allclose(torch.sigmoid(a), torch.sigmoid(b), atol=2e-2)
