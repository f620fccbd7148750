"""Bundles as users meet them: the input contract training writes into ``bundle.json``, bundle
names (``--model NAME``, ``$SAMSP_MODELS``), ``python -m jobs.models``, and fine-tuning from a
bundle (``model.checkpoint`` naming one)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobs.inference.bundle_meta import (BundleNotFoundError, describe_input, find_bundles,
                                        resolve_bundle)
from jobs.runtime.config import load_config
from jobs.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CRACK = REPO / "models" / "samsp-crack-tiny"
ROADS = REPO / "models" / "samsp-roads-tiny"


def _fake_bundle(folder: Path, **meta) -> Path:
    """A folder the resolver counts as a bundle (only bundle.json: names never load weights)."""
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text(json.dumps({"model_type": "vit_micro", "image_size": 128,
                                                    "iterations": 1, "prompt": "box", **meta}))
    return folder


# ------------------------------------------------------------------ (a) training writes it

@pytest.mark.ray
def test_training_exports_the_input_contract(tmp_path):
    from samsp import load_bundle

    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    sets = [f"run.storage_path={tmp_path / 'runs'}", "run.name=contract", "train.epochs=1",
            "train.samples_per_item=1", "scaling.num_workers=1", "data.source.count=8",
            "model.labels=crack"]
    cmd = [sys.executable, "jobs/train.py", "--config", "configs/train_tiny.yaml"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # a healthy run prints nothing at error level (issue 33): Ray Train's notice is filtered
    assert "has constructor arguments in the object store" not in proc.stdout + proc.stderr
    folder = tmp_path / "runs" / "contract" / "bundle"
    written = json.loads((folder / "bundle.json").read_text())["input"]
    assert written == {"labels": "crack", "dtype": "uint8", "channels": 3,
                       "radiometry": {"mode": "identity", "percentiles": None},
                       "bands": None, "band_names": None, "gsd_m": None, "members": None}
    assert load_bundle(str(folder)).meta.input.labels == "crack"


def test_raster_and_mixture_contracts(tmp_path):
    import rasterio

    from ingest.synthetic import make_geotiff
    from jobs.training.contract import input_contract
    from samsp import InputContract

    image = make_geotiff(tmp_path / "img.tif", 64, 64, count=4, dtype="uint16")  # UTM, 10 m
    with rasterio.open(image, "r+") as ds:
        for band, name in enumerate(("blue", "green", "red", "nir"), 1):
            ds.set_band_description(band, name)
    label = make_geotiff(tmp_path / "lab.tif", 64, 64, count=1)
    raster = {"kind": "raster", "pairs": [{"image": image, "label": label}], "bands": [3, 2, 1],
              "percentiles": [1, 99]}
    cfg = TrainConfig.model_validate({"data": {"source": raster}, "model": {"labels": "road"}})
    contract = input_contract(cfg)
    assert contract == {"labels": "road", "dtype": "uint16", "channels": 3, "bands": [3, 2, 1],
                        "band_names": ["red", "green", "blue"], "gsd_m": 10.0,
                        "radiometry": {"mode": "stretch", "percentiles": [1.0, 99.0]}}
    InputContract.model_validate(contract)  # what save_bundle will accept
    assert describe_input(contract) == ("uint16 x3, bands 3,2,1 (red,green,blue), "
                                        "stretch 1-99%, GSD 10 m; 1 = road")

    # a mixture: per-member contracts, "mixed" where they disagree, agreed fields kept
    mixture = {"kind": "mixture", "members": [{"name": "scenes", "source": raster},
                                              {"name": "photos", "source": {"kind": "synthetic"}}]}
    mixed = input_contract(TrainConfig.model_validate({"data": {"source": mixture}}))
    assert mixed["dtype"] == mixed["gsd_m"] == mixed["radiometry"] == "mixed"
    assert mixed["channels"] == 3 and mixed["labels"] == "foreground"
    assert mixed["members"]["photos"]["dtype"] == "uint8"
    assert mixed["members"]["scenes"]["gsd_m"] == 10.0
    assert InputContract.model_validate(mixed).members["scenes"].bands == [3, 2, 1]


# ------------------------------------------------------------------ (b) old bundles

def test_old_bundle_loads_with_an_unknown_contract():
    from samsp import load_bundle

    # the road model was committed before contracts (the crack model was retrained with one)
    assert "input" not in json.loads((ROADS / "bundle.json").read_text())
    bundle = load_bundle(str(ROADS))
    assert bundle.meta.input is None
    assert describe_input(None) == "contract unknown"


def test_contract_is_strict(tmp_path):
    from samsp import BundleError, InputContract, SamSP, build_sam, save_bundle

    with pytest.raises(ValueError, match="extra"):
        InputContract.model_validate({"labels": "x", "dtype": "uint8", "channels": 3,
                                      "radiometry": {"mode": "identity"}, "colour": "red"})
    with pytest.raises(BundleError, match="input"):
        save_bundle(SamSP(build_sam("vit_micro")), str(tmp_path / "b"),
                    {"input": {"labels": "x", "dtype": "uint8", "channels": 0,
                               "radiometry": {"mode": "identity"}}})


# ------------------------------------------------------------------ (c) names

def test_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMSP_MODELS", raising=False)
    assert resolve_bundle("samsp-crack-tiny") == str(CRACK)
    # paths and URIs pass as given
    assert resolve_bundle("some/where") == "some/where"
    assert resolve_bundle("s3://bucket/models/x") == "s3://bucket/models/x"
    (tmp_path / "here").mkdir()  # an existing path is a path, not a name
    assert resolve_bundle("here") == "here"

    extra, empty = tmp_path / "extra", tmp_path / "empty"
    _fake_bundle(extra / "mine")
    _fake_bundle(extra / "samsp-crack-tiny")  # the repository's own comes first
    empty.mkdir()
    monkeypatch.setenv("SAMSP_MODELS", f"{empty}:{extra},s3://no-such-bucket/models")
    assert resolve_bundle("mine") == str(extra / "mine")
    assert resolve_bundle("samsp-crack-tiny") == str(CRACK)

    monkeypatch.setenv("SAMSP_MODELS", f"{empty}")
    with pytest.raises(BundleNotFoundError) as err:
        resolve_bundle("nowhere")
    msg = str(err.value)
    assert "\n" not in msg and "'nowhere'" in msg
    assert str(REPO / "models") in msg and str(empty) in msg and "SAMSP_MODELS" in msg


@pytest.mark.s3
def test_names_resolve_in_an_s3_root(s3_env, monkeypatch):
    from ingest import storage

    root = f"s3://{s3_env.bucket}/models"
    storage.write_bytes(f"{root}/remote/bundle.json", b"{}")
    monkeypatch.setenv("SAMSP_MODELS", root)
    assert resolve_bundle("remote") == f"{root}/remote"
    assert {"name": "remote", "uri": f"{root}/remote", "root": root,
            "shadowed": False} in find_bundles()


def test_jobs_answer_an_unknown_name_with_exit_2(tmp_path, monkeypatch, capsys):
    from jobs import evaluate, segment, sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAMSP_MODELS", raising=False)
    common = ["--input", "x.tif", "--output", str(tmp_path / "out"), "--model", "nowhere"]
    assert segment.main(common) == 2
    assert sweep.main(common) == 2
    assert evaluate.main(["--model", "nowhere", "--data", str(tmp_path)]) == 2
    assert "no bundle named 'nowhere'" in capsys.readouterr().err


# ------------------------------------------------------------------ (d) fine-tune from a bundle

def _fixed_batch(size: int):
    import torch

    from jobs.training.synthetic import synth_item
    from samsp.preprocess import prepare_targets

    images, masks = zip(*[synth_item(i, size, 3, (2, 5)) for i in range(2)])
    target, valid = prepare_targets(torch.from_numpy(np.stack(masks)), size)
    return torch.from_numpy(np.stack(images)), target, valid


def _loss(cfg, model, batch) -> float:
    import torch

    from jobs.training.model import training_loss
    from samsp.preprocess import prepare_batch

    images, target, valid = batch
    sam = model.sam
    x, _ = prepare_batch(images, model.image_size, sam.pixel_mean.flatten().tolist(),
                         sam.pixel_std.flatten().tolist())
    model.eval()
    with torch.no_grad():
        return float(training_loss(cfg, model(x, valid=valid), target, valid).total)


@pytest.mark.parametrize("ref", ["models/samsp-crack-tiny", "samsp-crack-tiny",
                                 "models/samsp-crack-tiny/model.safetensors"])
def test_finetune_starts_from_the_bundle(ref, monkeypatch):
    import torch

    from jobs.training.model import build_model, settle_model
    from samsp import load_bundle

    monkeypatch.chdir(REPO)
    cfg = load_config(TrainConfig, None, [f"model.checkpoint={ref}"])
    settled, base = settle_model(cfg)
    m = settled.model
    assert (m.type, m.image_size, m.detail_branch, m.detail_width, m.detail_stride) == \
        ("vit_tiny", 256, True, 32, 2)
    meta = json.loads((CRACK / "bundle.json").read_text())
    assert m.checkpoint == str(CRACK) and base["threshold"] == meta["threshold"]
    assert m.threshold == meta["prompt_threshold"] == 0.5  # self-prompts keep theirs
    model, bundle = build_model(cfg), load_bundle(str(CRACK)).model
    mine, theirs = model.state_dict(), bundle.state_dict()
    assert set(mine) == set(theirs) and any(k.startswith("detail.") for k in mine)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    batch = _fixed_batch(256)
    assert _loss(settled, model, batch) == pytest.approx(_loss(settled, bundle, batch), abs=1e-6)


def test_finetune_refuses_a_contradicting_config_and_unknown_names(monkeypatch):
    from jobs.training.model import TrainError, settle_model

    monkeypatch.chdir(REPO)
    with pytest.raises(TrainError, match="model.type=vit_micro does not fit"):
        settle_model(load_config(TrainConfig, "configs/train_tiny.yaml",
                                 ["model.checkpoint=samsp-crack-tiny"]))
    with pytest.raises(TrainError, match="detail_stride=4 does not fit"):
        settle_model(load_config(TrainConfig, None, ["model.checkpoint=samsp-crack-tiny",
                                                     "model.detail_stride=4"]))
    with pytest.raises(TrainError, match="no bundle named 'no-such-model'"):
        settle_model(load_config(TrainConfig, None, ["model.checkpoint=no-such-model"]))


def test_finetuned_bundle_carries_threshold_and_labels(tmp_path):
    """Export of a run fine-tuned from a bundle: its output threshold, self-prompt threshold and
    labels carry over unless the config sets them; the contract comes from the new data."""
    import torch
    from safetensors.torch import save_file

    from jobs.training import driver
    from jobs.training.model import MODEL_FILE, STATE_FILE, build_model, checkpoint_state
    from samsp import SamSP, build_sam, save_bundle

    torch.manual_seed(0)
    contract = {"labels": "pothole", "dtype": "uint16", "channels": 3,
                "radiometry": {"mode": "stretch", "percentiles": [2, 98]}, "gsd_m": 0.1}
    save_bundle(SamSP(build_sam("vit_micro")), str(tmp_path / "base"),
                {"threshold": 0.7, "prompt_threshold": 0.4, "input": contract})
    for sets, expect in (([], (0.7, 0.4, "pothole")),
                         (["model.threshold=0.6", "model.labels=hole"], (0.6, None, "hole"))):
        cfg = load_config(TrainConfig, None, [f"model.checkpoint={tmp_path / 'base'}",
                                              f"run.storage_path={tmp_path / 'runs'}", *sets])
        facts = driver.preflight(cfg)
        assert driver.kept_line(facts["base"]).startswith("model.checkpoint: fine-tuning")
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir(exist_ok=True)
        save_file(checkpoint_state(build_model(facts["cfg"]), True), ckpt / MODEL_FILE)
        torch.save({"history": "[]"}, ckpt / STATE_FILE)
        meta = driver.export_bundle(facts["cfg"], str(ckpt), str(tmp_path / "out"), facts,
                                    {"epoch": 1, "val_dice": 0.5})
        assert (meta["threshold"], meta["prompt_threshold"], meta["input"]["labels"]) == expect
        assert meta["input"]["dtype"] == "uint8" and meta["input"]["gsd_m"] is None  # new data


# ------------------------------------------------------------------ (e) python -m jobs.models

def test_models_lists_the_committed_bundles(tmp_path):
    extra = tmp_path / "extra"
    shutil.copytree(ROADS, extra / "roads-copy")
    env = dict(os.environ, SAMSP_MODELS=str(extra))
    proc = subprocess.run([sys.executable, "-m", "jobs.models"], cwd=tmp_path, env=dict(
        env, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(" | ")[0]: line for line in proc.stdout.splitlines()}
    assert {"samsp-crack-tiny", "samsp-roads-tiny", "roads-copy"} <= set(lines)
    crack, roads = lines["samsp-crack-tiny"], lines["samsp-roads-tiny"]
    threshold = json.loads((CRACK / "bundle.json").read_text())["threshold"]
    for part in ("vit_tiny 256px", "K=1 box", f"threshold {threshold:g}", "crack",
                 "the demo's crack model", str(CRACK)):
        assert part in crack, crack
    assert "contract unknown" in roads and "contract unknown" not in crack
    filled = json.loads((CRACK / "bundle.json").read_text()).get("small_images") == "fill"
    assert ("small photos filled" in crack) == filled and "small photos" not in roads


def test_models_prints_one_bundle(capsys):
    from jobs import models

    assert models.main(["samsp-roads-tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == 0.35
    assert models.main(["no-such-model"]) == 2
    assert "no bundle named" in capsys.readouterr().err
