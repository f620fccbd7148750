"""Training on a mixture of data sets: per-member splits and validation limits, sampling by
weight (not by size), validation scored per member with the mean as the selection score, and the
grey/shadow augmentation that stands in for other cameras, and ``--set`` into the members'
list. No Ray here: the training loop itself is exercised by tests/test_train.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from jobs.training.augment import augment, grey_and_shadow, small_image
from jobs.training.config import TrainConfig
from jobs.training.data import TrainDataset, ValDataset, plan_data
from jobs.training.mixture import pick_item, spread_subset
from jobs.training.validation import val_scores, validate


def _pairs(root, n, size=(24, 32), value=100):
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((*size, 3), value, np.uint8)).save(root / "img" / f"{i:04d}.png")
        m = np.zeros(size, np.uint8)
        m[4:8, :] = 255
        Image.fromarray(m).save(root / "lab" / f"{i:04d}.png")


def _member(root, name, weight=1.0, val=None, val_limit=None):
    src = {"kind": "pairs", "root": str(root), "image_dir": "img", "mask_dir": "lab"}
    out = {"name": name, "weight": weight, "source": src, "val_limit": val_limit}
    if val:
        out["val_source"] = dict(src, root=str(val))
    return out


def _plan(members, **mixture):
    cfg = TrainConfig.model_validate({"data": {"source": {"kind": "mixture", "members": members,
                                                          **mixture}}})
    return plan_data(cfg.data.model_dump(mode="json"))


def test_mixture_plan_splits_each_member_and_limits_validation(tmp_path):
    _pairs(tmp_path / "big", 40, value=50)
    _pairs(tmp_path / "small", 8, value=200)
    _pairs(tmp_path / "small_val", 30, value=201)
    plan = _plan([_member(tmp_path / "big", "big"),
                  _member(tmp_path / "small", "small", val=tmp_path / "small_val", val_limit=5)])
    assert [g["name"] for g in plan["groups"]] == ["big", "small"]
    groups = {(it["group"], it["key"].split("/")[0]) for it in plan["train"] + plan["val"]}
    assert groups == {(0, "big"), (1, "small")}
    # big: its own 15 % split; small: all 8 train, 5 of its 30 validation images.
    assert sum(it["group"] == 0 for it in plan["val"]) == 6
    assert sum(it["group"] == 1 for it in plan["train"]) == 8
    small_val = [it for it in plan["val"] if it["group"] == 1]
    assert len(small_val) == 5 and all("/val/" in it["key"] for it in small_val)
    assert plan == _plan([_member(tmp_path / "big", "big"),
                          _member(tmp_path / "small", "small", val=tmp_path / "small_val",
                                  val_limit=5)])  # deterministic
    assert plan["summary"]["groups"][1]["val_items"] == 5


def test_mixture_config_errors_are_plain():
    with pytest.raises(ValidationError, match="unique"):
        TrainConfig.model_validate({"data": {"source": {"kind": "mixture", "members": [
            {"name": "a", "source": {"kind": "synthetic"}},
            {"name": "a", "source": {"kind": "synthetic"}}]}}})
    with pytest.raises(ValidationError, match="each member its own val_source"):
        TrainConfig.model_validate({"data": {
            "source": {"kind": "mixture", "members": [{"name": "a",
                                                       "source": {"kind": "synthetic"}}]},
            "val_source": {"kind": "synthetic"}}})


def test_samples_follow_the_weights_not_the_sizes(tmp_path):
    _pairs(tmp_path / "big", 60, value=50)
    _pairs(tmp_path / "small", 6, value=200)
    plan = _plan([_member(tmp_path / "big", "big", weight=1.0),
                  _member(tmp_path / "small", "small", weight=1.0)], samples_per_epoch=400)
    ds = TrainDataset(plan, 16, TrainConfig().augment.model_dump() | {"scale": (1.0, 1.0)},
                      seed=3)
    assert len(ds) == 400
    # Colour tells the member: 50 (big) or 200 (small); jitter is +-20 %.
    small = sum(float(ds[i][0].float().mean()) > 125 for i in range(len(ds)))
    assert 160 <= small <= 240  # ~1/2 although the small set has 6 of 66 items
    assert torch.equal(ds[7][0], ds[7][0])  # reproducible in (seed, epoch, i)


def test_pick_item_edges():
    rng = np.random.default_rng(0)
    by_group = [[0, 1, 2], [], [3]]
    picks = [pick_item(by_group, [1.0, 5.0, 1.0], rng) for _ in range(300)]
    assert set(picks) <= {0, 1, 2, 3}  # an empty group is never drawn, whatever its weight
    assert 100 <= picks.count(3) <= 200
    with pytest.raises(ValueError):
        pick_item([[], []], [1.0, 1.0], rng)
    items = [{"key": f"k{i}"} for i in range(10)]
    assert spread_subset(items, None, 0) is items and spread_subset(items, 20, 0) is items
    sub = spread_subset(items, 4, 0)
    assert len(sub) == 4 and sub == [it for it in items if it in sub]  # original order
    assert sub != items[:4] or spread_subset(items, 4, 1) != items[:4]  # a spread, not a head


class _Constant(torch.nn.Module):
    """Stands in for the model in ``validate``: predicts the same mask for every image."""

    iterations = 0

    def train(self, mode=True):
        return self


def test_validation_counts_every_member_once(tmp_path):
    _pairs(tmp_path / "a", 30)
    _pairs(tmp_path / "b", 12)
    plan = _plan([_member(tmp_path / "a", "a"), _member(tmp_path / "b", "b")])
    plan["val"] = [it for it in plan["val"] if it["group"] == 0][:4] + \
        [it for it in plan["val"] if it["group"] == 1][:1]
    val_ds = ValDataset(plan)

    def window(img, valid=None):  # perfect on member a, empty on member b
        probs = np.zeros((1, *img.shape[1:]), np.float32)
        if img[0, 0, 0] == 100 and window.calls < 4:
            probs[0, 4:8, :] = 1
        window.calls += 1
        return probs

    window.calls = 0
    rows = validate(_Constant(), val_ds, range(len(val_ds)), window, 0.5)
    scores = val_scores(rows, val_ds.group_names, 1, ())
    assert scores["val_dice_a"] == pytest.approx(1.0) and scores["val_dice_b"] == pytest.approx(0)
    assert scores["val_images_a"] == 4 and scores["val_images_b"] == 1
    assert scores["val_dice"] == pytest.approx(0.5)  # the mean of members, not of 5 images
    assert scores["val_images"] == 5


def test_single_source_scores_are_the_image_mean():
    # One group: [dice_p0, iou_p0, images] summed over 3 images -> plain means, no group keys.
    scores = val_scores([2.4, 1.5, 3.0], ["all"], 1, ())
    assert scores == {"val_images": 3, "val_dice_p0": pytest.approx(0.8),
                      "val_iou_p0": pytest.approx(0.5), "val_dice": pytest.approx(0.8),
                      "val_iou": pytest.approx(0.5)}


def test_grey_and_shadow_augmentation():
    rng = np.random.default_rng(0)
    img = np.stack([np.full((32, 32), v, np.uint8) for v in (200, 120, 40)])
    valid = np.ones((32, 32), bool)
    valid[:, 28:] = False
    img[:, ~valid] = 0
    off = grey_and_shadow(img, valid, {"grayscale": 0.0, "shadow": 0.0}, rng)
    assert off is img  # off: untouched, and no random numbers drawn
    grey = grey_and_shadow(img, valid, {"grayscale": 1.0, "shadow": 0.0}, rng)
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()
    assert grey[0, 0, 0] == 120 and (grey[:, ~valid] == 0).all()
    shaded = grey_and_shadow(img, valid, {"grayscale": 0.0, "shadow": 1.0}, rng)
    assert (shaded <= img).all() and (shaded[:, valid] < img[:, valid]).any()
    assert shaded[0][valid].min() < 200 * 0.8  # a real shadow (35-75 %) somewhere
    assert (shaded[:, ~valid] == 0).all()


def test_small_image_padding_is_the_inference_frame():
    """A crop cut to a small image keeps a top-left part and pads bottom/right with invalid
    zeros: what an image smaller than the window looks like to the model at inference."""
    rng = np.random.default_rng(1)
    img = np.full((3, 40, 40), 90, np.uint8)
    mask = np.ones((40, 40), bool)
    valid = np.ones((40, 40), bool)
    off = small_image(img, mask, valid, {"small_image": 0.0}, rng)
    assert off[0] is img
    sizes = set()
    for _ in range(20):
        ci, cm, cv = small_image(img, mask, valid, {"small_image": 1.0, "small_image_min": 0.5},
                                 rng)
        h, w = int(cv[:, 0].sum()), int(cv[0].sum())
        assert 20 <= h <= 40 and 20 <= w <= 40
        assert cv[:h, :w].all() and cv.sum() == h * w  # one top-left block
        assert (ci[:, ~cv] == 0).all() and (ci[:, cv] == 90).all()
        assert (cm == cv).all()  # labels only where there is image
        sizes.add((h, w))
    assert len(sizes) > 5
    # through the whole augmentation, a config with small_image: 1 always pads
    aug = {"scale": (1.0, 1.0), "hflip": False, "vflip": False, "rot90": False, "brightness": 0,
           "contrast": 0, "saturation": 0, "gamma": 0, "small_image": 1.0,
           "small_image_min": 0.3}
    for _ in range(5):
        _, _, cv = augment(img, mask, valid, 32, aug, rng)
        h, w = int(cv[:, 0].sum()), int(cv[0].sum())
        assert cv[0, 0] and cv.sum() == h * w and min(h, w) >= 10


def test_set_reaches_into_a_members_list(tmp_path):
    from jobs.runtime.config import ConfigError, load_config

    cfg = load_config(TrainConfig, "configs/train_cracks_mixture_cpu.yaml",
                      ["data.source.members.1.weight=2.5", "data.source.members.0.val_limit=7"])
    members = cfg.data.source.members
    assert (members[1].name, members[1].weight, members[0].val_limit) == ("crack500", 2.5, 7)
    with pytest.raises(ConfigError, match="'9' is not an index of a list of 4"):
        load_config(TrainConfig, "configs/train_cracks_mixture_cpu.yaml",
                    ["data.source.members.9.weight=1"])
    with pytest.raises(ConfigError, match="inside 'epochs', which is not a section"):
        load_config(TrainConfig, "configs/train_cracks_mixture_cpu.yaml", ["train.epochs.x=1"])


def test_val_cut_scores_a_members_images_again_as_small_photos(tmp_path):
    """``val_cut: 3``: the member's validation images are scored a second time, cut into 3x3
    crops that each run alone and are stitched back (group ``a_cut3``, one more score in the
    mean): a model that paints blobs on small photos loses there, and only there."""
    _pairs(tmp_path / "a", 30)
    _pairs(tmp_path / "b", 12)
    plan = _plan([dict(_member(tmp_path / "a", "a"), val_cut=3), _member(tmp_path / "b", "b")])
    assert [g["name"] for g in plan["groups"]] == ["a", "a_cut3", "b"]
    assert plan["groups"][1]["weight"] == 0 and plan["groups"][1]["train_items"] == 0
    cut = [it for it in plan["val"] if it["group"] == 1]
    whole = [it for it in plan["val"] if it["group"] == 0]
    assert len(cut) == len(whole) > 0 and all(it["cut"] == 3 for it in cut)
    assert len({it["key"] for it in plan["val"]}) == len(plan["val"])
    assert all(it["group"] != 1 for it in plan["train"])
    val_ds = ValDataset(plan)
    sizes = []

    def window(img, valid=None):  # right on whole images; a blob on anything smaller
        sizes.append(img.shape[1:])
        probs = np.zeros((1, *img.shape[1:]), np.float32)
        if img.shape[1:] == (24, 32):
            probs[0, 4:8, :] = 1
        else:
            probs[0] = 1
        return probs

    rows = validate(_Constant(), val_ds, range(len(val_ds)), window, 0.5)
    scores = val_scores(rows, val_ds.group_names, 1, ())
    assert scores["val_dice_a"] == pytest.approx(1.0) == scores["val_dice_b"]
    assert scores["val_dice_a_cut3"] == pytest.approx(2 * 4 * 32 / (4 * 32 + 24 * 32))
    assert scores["val_dice"] == pytest.approx((2 + scores["val_dice_a_cut3"]) / 3)
    assert sorted(set(sizes)) == [(8, 10), (8, 11), (24, 32)]  # 3x3 crops of 24 x 32


def test_val_cut_copies_count_once_and_leave_training_alone(tmp_path):
    """The cut group's copies are not more images: the summary counts each validation image
    once, the evaluator's ``--sweep-on val`` scores each once, a copy shares its image's cache
    entry, and a one-member mixture keeps cycling its items as it did without ``val_cut``."""
    from jobs.evaluation.data import validation_items

    _pairs(tmp_path / "a", 30)
    plain = _plan([_member(tmp_path / "a", "a")])
    cut = _plan([dict(_member(tmp_path / "a", "a"), val_cut=3)])
    assert cut["summary"]["val_items"] == plain["summary"]["val_items"] == len(plain["val"])
    assert cut["summary"]["val_keys_sha1"] == plain["summary"]["val_keys_sha1"]
    aug = TrainConfig().augment.model_dump() | {"scale": (1.0, 1.0)}
    drawn = [TrainDataset(p, 16, aug, seed=3).draw(0, i)[0] for p in (plain, cut)
             for i in range(8)]
    assert drawn[:8] == drawn[8:]
    val_ds = ValDataset(cut)
    copies = [i for i in range(len(val_ds)) if val_ds.cut(i)]
    val_ds[copies[0]]
    val_ds[copies[0] - len(copies)]      # its whole image: the same cache entry
    assert len(val_ds.loader._cache) == 1

    class Meta:
        provenance = {"config": TrainConfig.model_validate({"data": {"source": {
            "kind": "mixture", "members": [dict(_member(tmp_path / "a", "a"), val_cut=3)]}}}
        ).model_dump(mode="json")}

    items, _ = validation_items(Meta)
    assert len(items) == len(plain["val"]) and not any(it.get("cut") for it in items)


def test_val_cut_settings_that_would_mislead_are_refused():
    member = {"name": "a", "source": {"kind": "synthetic"}}
    with pytest.raises(ValidationError, match="val_cut is 0"):
        TrainConfig.model_validate({"data": {"source": {"kind": "mixture", "members": [
            dict(member, val_cut=1)]}}})
    with pytest.raises(ValidationError, match="unique"):
        TrainConfig.model_validate({"data": {"source": {"kind": "mixture", "members": [
            dict(member, val_cut=3), dict(member, name="a_cut3")]}}})


def test_a_members_own_empty_crops_applies_to_its_samples_only(tmp_path):
    """``empty_crops`` on one member: its crops are crack-free, the other member's keep their
    object (the augment section's 0), and its group records the setting."""
    _pairs(tmp_path / "clean", 6, size=(96, 96), value=50)
    _pairs(tmp_path / "plain", 6, size=(32, 32), value=200)  # every crop holds its object
    plan = _plan([dict(_member(tmp_path / "clean", "clean"), empty_crops=1.0),
                  _member(tmp_path / "plain", "plain")], samples_per_epoch=60)
    assert plan["groups"][0]["empty_crops"] == 1.0 and "empty_crops" not in plan["groups"][1]
    aug = TrainConfig().augment.model_dump() | {"scale": (1.0, 1.0), "min_positive": 0.01,
                                                "empty_crops_search": "windows"}
    ds = TrainDataset(plan, 32, aug, seed=1)
    by_member = {True: [], False: []}
    for i in range(len(ds)):
        img, mask, _ = ds[i]
        by_member[float(img.float().mean()) < 125].append(bool(mask.any()))
    assert by_member[True] and not any(by_member[True])      # crack-free where asked
    assert by_member[False] and all(by_member[False])         # the row of positives kept
