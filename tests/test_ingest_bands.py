"""ingest.bands: red/green/blue of many-band scenes from colour interpretation and band names
(Sentinel-2 stacks land on B04/B03/B02), and open_scene's rgb_by_name on real GeoTIFFs."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from ingest import open_scene
from ingest.bands import rgb_bands

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


@pytest.mark.parametrize("names, expected", [
    (S2, [4, 3, 2]),
    ([n.replace("B0", "B") for n in S2], [4, 3, 2]),  # B4-style with B8A: still Sentinel-2
    (["coastal", "blue", "green", "red", "nir"], [4, 3, 2]),
    (["Red (B4)", "Green (B3)", "Blue (B2)", "NIR"], [1, 2, 3]),
    (["B1", "B2", "B3", "B4", "B5", "B7"], None),  # Landsat 5/7: B4 is near-infrared
    (["red", "red", "green", "blue"], None),  # ambiguous
    ([None, None, None, None], None),
    ([], None),
])
def test_rgb_from_band_names(names, expected):
    found = rgb_bands(names)
    assert (found[0] if found else None) == expected


def test_colour_interpretation_comes_first():
    ci = ["gray", "blue", "green", "red", "undefined"]
    assert rgb_bands(["a", "b", "c", "d", "e"], ci) == ([4, 3, 2], "colour interpretation")
    assert rgb_bands(S2, ["undefined"] * 13) == ([4, 3, 2], "Sentinel-2 band names")


def _stack(path, names):
    data = np.stack([np.full((8, 8), 100 * (i + 1), np.uint16) for i in range(len(names))])
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=len(names),
                       dtype="uint16", crs="EPSG:32633", transform=from_origin(0, 80, 10, 10)) as ds:
        ds.write(data)
        for i, name in enumerate(names, start=1):
            ds.set_band_description(i, name)
        ds.colorinterp = [ColorInterp.undefined] * len(names)
    return str(path)


def test_open_scene_picks_sentinel2_rgb_only_when_asked(tmp_path):
    path = _stack(tmp_path / "s2.tif", S2)
    scene = open_scene(path, rgb_by_name=True)
    assert scene.bands == (4, 3, 2) and scene.count == 3
    assert "Sentinel-2" in scene.band_choice
    data, _ = scene.read(rasterio.windows.Window(0, 0, 2, 2))
    assert data[:, 0, 0].tolist() == [400, 300, 200]
    plain = open_scene(path)  # without it: every band, as before
    assert plain.count == 13 and plain.band_choice is None
    assert open_scene(path, bands=[1, 2, 3], rgb_by_name=True).bands == (1, 2, 3)  # explicit wins
    unnamed = open_scene(_stack(tmp_path / "x.tif", [""] * 5), rgb_by_name=True)
    assert unnamed.count == 5 and unnamed.band_choice is None
