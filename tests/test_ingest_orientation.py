"""EXIF orientation: every one of the 8 values turns pixels exactly as photo viewers do."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from ingest.orientation import (ORIENTATIONS, orient, orientation_from_tags, oriented_shape,
                                read_orientation)


def _stored(h=5, w=7):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_orient_equals_pils_exif_transpose(orientation):
    stored = _stored()
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(img))
    got = orient(np.moveaxis(stored, -1, 0), orientation)  # bands first, as scenes read
    assert np.array_equal(np.moveaxis(got, 0, -1), expected)
    assert got.shape[1:] == oriented_shape(5, 7, orientation)
    assert np.array_equal(orient(stored[..., 0], orientation), expected[..., 0])  # masks too


def test_orientation_tags_and_a_real_rotated_jpeg(tmp_path):
    assert orientation_from_tags({}) == 1
    assert orientation_from_tags({"EXIF_Orientation": "6"}) == 6
    assert orientation_from_tags({"EXIF_Orientation": "9"}) == 1  # not a valid value
    assert orientation_from_tags({"EXIF_Orientation": "x"}) == 1
    img = Image.fromarray(_stored(40, 100))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "portrait.jpg", exif=exif.tobytes())
    assert read_orientation(str(tmp_path / "portrait.jpg")) == 6
    img.save(tmp_path / "plain.jpg")
    assert read_orientation(str(tmp_path / "plain.jpg")) == 1
