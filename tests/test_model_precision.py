"""Precision as a setting: auto resolved from the device (never assumed), fp32 unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samsp import SamSP, build_sam, save_bundle
from samsp import precision as prec
from samsp.predict import TilePredictor
from tests.conftest import save_random_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return save_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", "vit_tiny", iterations=1)


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU reports these /proc/cpuinfo flags (and nothing via torch)."""
    def set_flags(*flags):
        prec.cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(prec, "_cpuinfo_flags", lambda: set(flags))
        monkeypatch.setattr(torch._C, "_cpu", None, raising=False)
    yield set_flags
    prec.cpu_has_native_bf16.cache_clear()


def test_auto_is_bf16_only_where_the_cpu_has_native_bf16(cpu_flags):
    cpu_flags("avx2", "avx512f", "fma")  # AVX-512 without BF16 (e.g. Skylake-SP)
    assert prec.resolve_precision("auto", "cpu") == "fp32"
    cpu_flags("avx512f", "avx512_bf16")
    assert prec.resolve_precision("auto", "cpu") == "bf16"
    cpu_flags("amx_tile", "amx_bf16")
    assert prec.resolve_precision("auto", "cpu") == "bf16"
    cpu_flags()
    assert prec.resolve_precision("auto", "cpu") == "fp32"
    assert prec.resolve_precision("bf16", "cpu") == "bf16"  # explicit requests are honoured
    assert prec.resolve_precision("fp32", "cpu") == "fp32"


def test_auto_on_cuda_follows_the_card_and_fp16_is_refused_on_cpu(monkeypatch):
    monkeypatch.setattr(prec, "cuda_has_bf16", lambda device: True)
    assert prec.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(prec, "cuda_has_bf16", lambda device: False)  # T4 / V100
    assert prec.resolve_precision("auto", "cuda") == "fp16"
    assert prec.resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(prec.PrecisionError, match="fp16 is for CUDA"):
        prec.resolve_precision("fp16", "cpu")
    with pytest.raises(prec.PrecisionError, match="unknown precision"):
        prec.resolve_precision("int8", "cpu")


def test_fp32_predictor_runs_no_autocast_and_bf16_stays_close(bundle_dir):
    tiles = np.random.default_rng(0).integers(0, 255, (2, 3, 256, 256), dtype=np.uint8)
    fp32 = TilePredictor(bundle_dir, precision="fp32")
    assert fp32.precision == "fp32"
    model, meta = fp32.model, fp32.meta
    x = (torch.from_numpy(tiles).float() - torch.tensor(meta.pixel_mean).view(1, 3, 1, 1)) \
        / torch.tensor(meta.pixel_std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = torch.sigmoid(model(x).logits[-1])[:, 0].numpy()
    got = fp32(tiles)["prob"]
    np.testing.assert_array_equal(got, fp32(tiles)["prob"])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    bf16 = TilePredictor(bundle_dir, precision="bf16")
    assert bf16.precision == "bf16"
    out = bf16(tiles)["prob"]
    assert out.dtype == np.float32  # post-processing stays float32
    assert not np.array_equal(out, got)  # it really ran in bf16
    assert np.abs(out - got).max() < 0.05


def test_the_old_bf16_training_field_names_its_replacement():
    from jobs.runtime.config import ConfigError, load_config
    from jobs.training.config import TrainConfig

    with pytest.raises(ConfigError, match=r"train.*replaced by train\.precision"):
        load_config(TrainConfig, None, ["train.bf16=true"])
    cfg = load_config(TrainConfig, None, ["train.precision=fp32"])
    assert cfg.train.precision == "fp32"
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(TrainConfig, None, ["train.precision=fp8"])


def test_bf16_weights_cast_once_give_autocasts_own_bytes(bundle_dir):
    """Casting the Linear/Conv weights to bf16 once (what a predictor that loaded its own bundle
    does) computes exactly what autocast's per-call casts compute; fp32 and a Bundle passed in
    are left alone. The vit_tiny has the detail branch off; a detail bundle casts its convs too."""
    from samsp import load_bundle

    tiles = np.random.default_rng(1).integers(0, 255, (2, 3, 256, 256), dtype=np.uint8)
    shared = load_bundle(bundle_dir)
    per_call = TilePredictor(shared, precision="bf16")  # a Bundle passed in: not cast
    assert all(p.dtype == torch.float32 for p in shared.model.parameters())
    once = TilePredictor(bundle_dir, precision="bf16")  # loaded here: cast
    linear = once.model.sam.image_encoder.blocks[0].attn.qkv
    assert linear.weight.dtype == torch.bfloat16
    norm = once.model.sam.image_encoder.blocks[0].norm1
    assert norm.weight.dtype == torch.float32  # LayerNorm runs in fp32 under autocast
    a, b = per_call(tiles), once(tiles)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    fp32 = TilePredictor(bundle_dir, precision="fp32")
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())
    assert prec.cast_autocast_weights(fp32.model, "fp32") == 0


def test_bf16_weight_cast_with_the_detail_branch_gives_the_same_bytes(tmp_path):
    from samsp.detail import detail_branch_for

    torch.manual_seed(2)
    sam = build_sam("vit_tiny")
    model = SamSP(sam, iterations=1, prompt="box", detail=detail_branch_for(sam, 16, 2))
    save_bundle(model, str(tmp_path / "detail"), {"threshold": 0.5})
    tiles = np.random.default_rng(2).integers(0, 255, (2, 3, 256, 256), dtype=np.uint8)
    from samsp import load_bundle

    per_call = TilePredictor(load_bundle(str(tmp_path / "detail")), precision="bf16")
    once = TilePredictor(str(tmp_path / "detail"), precision="bf16")
    assert any(p.dtype == torch.bfloat16 for p in once.model.detail.parameters())
    a, b = per_call(tiles), once(tiles)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
