"""Labels from vector layers (ingest/labels): window-by-window rasterisation equals one
rasterisation of the whole layer, across CRSs and formats; lines buffered in metres; ignore
areas and the AOI invalid; bbox reads; one-line errors naming the file; the training planner
and loader on a GeoJSON label; the SpaceNet tile against its provided mask."""
from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.windows import Window

import ingest
from ingest.labels import LabelOptions, LabelSourceError, VectorLabels, is_vector_label
from jobs.training.config import TrainConfig
from jobs.training.data import DataError, ItemLoader, plan_data
from tests.conftest import shared_data

UTM = "EPSG:32633"  # the image's CRS; labels come in EPSG:4326
ORIGIN = (500_000.0, 5_000_300.0)
H, W, RES = 260, 300, 0.5


def _transform():
    return from_origin(*ORIGIN, RES, RES)


def _write_image(path, crs=UTM, transform=None):
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", height=H, width=W, count=3, dtype="uint8",
                       crs=crs, transform=transform or _transform()) as dst:
        dst.write(rng.integers(1, 255, (3, H, W), dtype=np.uint8))
    return str(path)


def _features_utm() -> gpd.GeoDataFrame:
    """Buildings (class 1/2), centre-lines, an ignore patch, in the image's CRS (metres)."""
    x0, y1 = ORIGIN
    rng = np.random.default_rng(1)
    geoms, cls, ign = [], [], []
    for _ in range(14):
        cx, cy = x0 + rng.uniform(5, 145), y1 - rng.uniform(5, 125)
        w, h = rng.uniform(3, 14, 2)
        geoms.append(shapely.affinity.rotate(shapely.box(cx - w, cy - h, cx + w, cy + h),
                                             rng.uniform(0, 90)))
        cls.append(int(rng.integers(1, 3)))
        ign.append(0)
    geoms += [shapely.LineString([(x0 + 2, y1 - 20), (x0 + 90, y1 - 60), (x0 + 149, y1 - 61)]),
              shapely.LineString([(x0 + 70, y1 - 1), (x0 + 75, y1 - 129)])]
    cls += [3, 3]
    ign += [0, 0]
    geoms.append(shapely.box(x0 + 100, y1 - 110, x0 + 130, y1 - 80))  # "unsure" area
    cls.append(1)
    ign.append(1)
    return gpd.GeoDataFrame({"cls": cls, "unsure": ign}, geometry=geoms, crs=UTM)


def _write_labels(gdf, path, **kw):
    path = str(path)
    if path.endswith(".parquet"):
        gdf.to_parquet(path, **kw)
    else:
        gdf.to_file(path)
    return path


def _expected(gdf_utm, *, buffer_m=0.0, class_field=None, ignore=False, aoi=None):
    """Hand rasterisation of the whole layer on the whole scene (the reference)."""
    g = gdf_utm.copy()
    lines = g.geom_type.isin(["LineString", "MultiLineString"])
    if buffer_m:
        g.loc[lines, "geometry"] = g.loc[lines].buffer(buffer_m)
    keep = g[g["unsure"] == 0] if ignore else g
    vals = keep[class_field].to_numpy() if class_field else np.ones(len(keep), int)
    order = np.argsort(vals, kind="stable")
    label = rasterize(zip(keep.geometry.values[order], vals[order].tolist()), out_shape=(H, W),
                      transform=_transform(), dtype="uint8")
    valid = np.ones((H, W), bool)
    if ignore:
        valid &= rasterize(((geom, 1) for geom in g[g["unsure"] == 1].geometry),
                           out_shape=(H, W), transform=_transform(), dtype="uint8") == 0
    if aoi is not None:
        valid &= rasterize(((geom, 1) for geom in aoi.geometry), out_shape=(H, W),
                           transform=_transform(), dtype="uint8") == 1
    label[~valid] = 0
    return label, valid


def _mosaic(labels: VectorLabels, tile: int = 64):
    """Read the scene window by window (shifted edge tiles overlap: must agree too)."""
    label = np.full((H, W), 99, np.uint8)
    valid = np.zeros((H, W), bool)
    for t in ingest.TileGrid(H, W, tile, 0):
        lab, val = labels.read(t.read_window)
        r0, c0 = int(t.read_window.row_off), int(t.read_window.col_off)
        seen = label[r0:r0 + tile, c0:c0 + tile]
        assert ((seen == 99) | (seen == lab)).all()
        label[r0:r0 + tile, c0:c0 + tile] = lab
        valid[r0:r0 + tile, c0:c0 + tile] = val
    return label, valid


@pytest.mark.parametrize("ext", [".geojson", ".parquet", ".fgb", ".gpkg"])
def test_windows_equal_the_whole_layer_across_crs_and_formats(tmp_path, ext):
    utm = _features_utm()
    path = _write_labels(utm.to_crs("EPSG:4326"), tmp_path / f"labels{ext}")
    assert is_vector_label(path)
    # the reference reprojects what the file holds (4326 coordinates) back to the image CRS
    back = gpd.read_file(path).to_crs(UTM) if ext != ".parquet" else \
        gpd.read_parquet(path).to_crs(UTM)
    opts = LabelOptions(class_field="cls", line_buffer_m=2.5)
    labels = VectorLabels(path, opts, UTM, _transform(), H, W)
    assert labels.check()["features_in_scene"] == len(utm)
    label, valid = _mosaic(labels)
    exp_label, _ = _expected(back, buffer_m=2.5, class_field="cls")
    assert valid.all() and (exp_label == 3).sum() > 500  # buffered roads are there
    np.testing.assert_array_equal(label, exp_label)
    # burn value, no buffer: the 1-px lines GDAL draws
    labels = VectorLabels(path, LabelOptions(burn=7), UTM, _transform(), H, W)
    label, _ = _mosaic(labels, tile=100)
    np.testing.assert_array_equal(label, _expected(back)[0] * 7)


def test_ignore_areas_and_aoi_are_invalid(tmp_path):
    utm = _features_utm()
    path = _write_labels(utm.to_crs("EPSG:4326"), tmp_path / "labels.fgb")
    back = gpd.read_file(path).to_crs(UTM)
    x0, y1 = ORIGIN
    aoi = gpd.GeoDataFrame(geometry=[shapely.Polygon([(x0 - 5, y1 + 5), (x0 + 120, y1 + 5),
                                                      (x0 + 60, y1 - 140), (x0 - 5, y1 - 140)])],
                           crs=UTM)
    aoi_path = _write_labels(aoi.to_crs("EPSG:3857"), tmp_path / "aoi.gpkg")  # a third CRS
    aoi_back = gpd.read_file(aoi_path).to_crs(UTM)
    labels = VectorLabels(path, LabelOptions(ignore_field="unsure", line_buffer_m=1.0,
                                             aoi=aoi_path), UTM, _transform(), H, W)
    facts = labels.check()
    assert facts["aoi"] == aoi_path
    label, valid = _mosaic(labels)
    exp_label, exp_valid = _expected(back, buffer_m=1.0, ignore=True, aoi=aoi_back)
    np.testing.assert_array_equal(valid, exp_valid)
    np.testing.assert_array_equal(label, exp_label)
    assert not valid[:, -20:].any() and not label[~valid].any()
    # the ignore patch (x 100..130 m, y 80..110 m down) is invalid inside the AOI too
    assert not valid[170:210, 210:250].any()
    # ignore_value without ignore_field compares the class: class 3 (roads) = ignore
    labels = VectorLabels(path, LabelOptions(class_field="cls", ignore_value=3), UTM,
                          _transform(), H, W)
    label, valid = labels.read(Window(0, 0, W, H))
    roads = rasterize(back[back["cls"] == 3].geometry, out_shape=(H, W), transform=_transform())
    assert not valid[roads == 1].any() and valid[roads == 0].mean() > 0.99
    # AOI coverage of windows: planning drops what lies outside
    cover = VectorLabels(path, LabelOptions(aoi=aoi_path), UTM, _transform(), H, W)
    frac = cover.aoi_coverage([Window(0, 0, 64, 64), Window(W - 64, H - 64, 64, 64)])
    assert frac[0] == pytest.approx(1.0) and frac[1] == pytest.approx(0.0)


def test_lines_buffer_in_metres_on_a_geographic_image(tmp_path):
    """An image in EPSG:4326: buffering happens in the scene centre's UTM zone."""
    utm = _features_utm()
    lines = utm[utm.geom_type == "LineString"]
    path = _write_labels(lines.to_crs("EPSG:4326"), tmp_path / "roads.geojson")
    b = lines.to_crs("EPSG:4326").total_bounds
    transform = from_origin(b[0] - 1e-4, b[3] + 1e-4, 5e-6, 5e-6)
    labels = VectorLabels(path, LabelOptions(line_buffer_m=3.0), "EPSG:4326", transform, H, W)
    label, _ = labels.read(Window(0, 0, W, H))
    wide = lines.buffer(3.0).to_crs("EPSG:4326")  # 33N is the centre's zone too
    exp = rasterize(wide, out_shape=(H, W), transform=transform, dtype="uint8")
    assert (label == exp).mean() > 0.999 and exp.sum() > 1000


def _spy_reads(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` (a layer reader) by one that logs ``(bbox, features read)``."""
    calls, real = [], getattr(module, name)

    def spy(path, **kw):
        out = real(path, **kw)
        calls.append((kw.get("bbox"), len(out)))
        return out

    monkeypatch.setattr(module, name, spy)
    return calls


def test_reads_use_a_bbox_per_window(tmp_path, monkeypatch):
    import pyogrio

    utm = _features_utm()
    gj = _write_labels(utm.to_crs("EPSG:4326"), tmp_path / "labels.geojson")
    calls = _spy_reads(monkeypatch, pyogrio, "read_dataframe")
    labels = VectorLabels(gj, LabelOptions(), UTM, _transform(), H, W)
    _mosaic(labels)
    assert len(calls) == 25 and all(bbox is not None for bbox, _ in calls)
    assert max(n for _, n in calls) < len(utm) and min(n for _, n in calls) < 5

    from ingest.labels import VectorLayer

    seen, real = [], VectorLayer._read_covered

    def spy(self, info, bbox, cols):
        out = real(self, info, bbox, cols)
        seen.append((bbox, len(out[0])))
        return out

    monkeypatch.setattr(VectorLayer, "_read_covered", spy)
    for covering in (True, False):  # with a bbox covering column / scanned in batches
        pq = _write_labels(utm.to_crs("EPSG:4326"), tmp_path / f"c{covering}.parquet",
                           write_covering_bbox=covering)
        labels = VectorLabels(pq, LabelOptions(), UTM, _transform(), H, W)
        assert labels.layer.info().indexed is covering
        counts = [len(labels.features(rasterio.windows.bounds(t.read_window, _transform()))[0])
                  for t in ingest.TileGrid(H, W, 64, 0)]
        assert max(counts) < len(utm)
    assert len(seen) == 25 and all(bbox is not None for bbox, _ in seen)  # the covering file


def _random_layer(n: int, seed: int) -> gpd.GeoDataFrame:
    """Polygons, lines and points of all sizes (some huge) over the test scene, plus a missing
    and an empty geometry, in EPSG:4326."""
    x0, y1 = ORIGIN
    rng = np.random.default_rng(seed)
    geoms, unsure = [], []
    for i in range(n):
        cx, cy = x0 + rng.uniform(-20, 170), y1 - rng.uniform(-20, 150)
        s = rng.choice([0.5, 4.0, 30.0, 150.0], p=[0.3, 0.5, 0.17, 0.03])
        unsure.append(int(s < 10 and rng.random() < 0.15))
        if i % 3 == 0:
            geoms.append(shapely.LineString([(cx, cy), (cx + s, cy - s / 2)]))
        elif i % 7 == 0:
            geoms.append(shapely.Point(cx, cy))
        else:
            geoms.append(shapely.box(cx - s, cy - s, cx + s * rng.uniform(0.2, 1), cy + s))
    geoms[5], geoms[11] = None, shapely.Polygon()
    return gpd.GeoDataFrame({"cls": rng.integers(1, 5, n), "unsure": unsure},
                            geometry=geoms, crs=UTM).to_crs("EPSG:4326")


def test_parquet_row_group_pruning_reads_what_geopandas_reads(tmp_path, monkeypatch):
    """The covering path (row groups chosen by their statistics, rows by their covering,
    streamed in record batches) returns the rows ``geopandas.read_parquet(bbox=...)`` returns,
    in the same order, for random bboxes -- many small row groups, a file of one row group,
    batches smaller than a row group, missing/empty geometries."""
    import ingest.labels.layer as layer_mod
    from ingest.labels import VectorLayer
    from ingest.labels.layer import row_groups_meeting

    layer_gdf = _random_layer(300, 2)
    rng = np.random.default_rng(3)
    xmin, ymin, xmax, ymax = layer_gdf.total_bounds
    for rows, batch in ((16, 65_536), (10_000, 65_536), (10_000, 7), (16, 5)):
        monkeypatch.setattr(layer_mod, "SCAN_BATCH_ROWS", batch)
        path = str(tmp_path / f"rg{rows}_{batch}.parquet")
        layer_gdf.to_parquet(path, write_covering_bbox=True, row_group_size=rows)
        layer = VectorLayer(path)
        assert layer.info().covering and layer._covering == ("bbox", ("xmin", "ymin", "xmax",
                                                                       "ymax"))
        pruned = []
        for _ in range(60):
            w, h = rng.uniform(0, 0.6) * (xmax - xmin), rng.uniform(0, 0.6) * (ymax - ymin)
            x, y = rng.uniform(xmin - w, xmax), rng.uniform(ymin - h, ymax)
            bbox = (x, y, x + w, y + h)
            geoms, attrs = layer.read_arrays(bbox, ["cls"])
            ref = gpd.read_parquet(path, columns=["geometry", "cls"], bbox=bbox)
            assert len(geoms) == len(attrs) == len(ref)
            assert list(attrs.columns) == ["cls"]
            np.testing.assert_array_equal(attrs["cls"].to_numpy(), ref["cls"].to_numpy())
            assert (shapely.to_wkb(geoms) == shapely.to_wkb(ref.geometry.values)).all()
            got = layer.read(bbox, ["cls"])  # the GeoDataFrame, CRS set
            assert got.crs == ref.crs and len(got) == len(ref)
            pruned.append(len(layer.row_groups(bbox)))
        groups = layer._parquet_file().metadata.num_row_groups
        assert max(pruned) <= groups and (rows > 300 or min(pruned) < groups)
        assert layer.count((xmin, ymin, xmax, ymax)) == len(gpd.read_parquet(
            path, bbox=(xmin, ymin, xmax, ymax)))
        assert len(layer.read_arrays((0.0, 0.0, 1.0, 1.0), [])[0]) == 0  # far away: nothing
    stats = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [np.nan] * 4])  # no statistics: read
    assert row_groups_meeting(stats, (0.5, 0.5, 2, 2)).tolist() == [0, 2]
    assert row_groups_meeting(stats, (1, 1, 5, 5)).tolist() == [0, 1, 2]  # touching counts


@pytest.mark.parametrize("ext", [".parquet", ".gpkg"])
def test_aoi_with_holes_and_windows_inside_one_polygon(tmp_path, ext):
    """Windows wholly inside one AOI polygon skip its rasterisation (and, while inside the same
    polygon, its read); the result still equals the whole AOI rasterised -- holes, a second
    polygon, all_touched, a GeoParquet and a GeoPackage AOI."""
    x0, y1 = ORIGIN
    outer = shapely.Polygon([(x0 - 5, y1 + 5), (x0 + 140, y1 + 5), (x0 + 100, y1 - 100),
                             (x0 - 5, y1 - 100)], holes=[[(x0 + 40, y1 - 40), (x0 + 50, y1 - 40),
                                                          (x0 + 50, y1 - 50), (x0 + 40, y1 - 50)]])
    aoi = gpd.GeoDataFrame(geometry=[outer, shapely.box(x0 + 20, y1 - 128, x0 + 60, y1 - 105)],
                           crs=UTM)
    aoi_path = _write_labels(aoi.to_crs("EPSG:4326"), tmp_path / f"aoi{ext}",
                             **({"write_covering_bbox": True} if ext == ".parquet" else {}))
    aoi_back = (gpd.read_parquet(aoi_path) if ext == ".parquet" else
                gpd.read_file(aoi_path)).to_crs(UTM)
    layer = _random_layer(200, 4)
    path = _write_labels(layer, tmp_path / "labels.parquet", write_covering_bbox=True)
    back = gpd.read_parquet(path).to_crs(UTM)
    back = back[~back.geometry.isna() & ~back.geometry.is_empty]
    for touched in (False, True):
        labels = VectorLabels(path, LabelOptions(class_field="cls", ignore_field="unsure",
                                                 line_buffer_m=1.5, aoi=aoi_path,
                                                 all_touched=touched), UTM, _transform(), H, W)
        reads, real = [], labels.aoi.read_arrays

        def spy(bbox, columns, real=real, reads=reads):
            reads.append(bbox)
            return real(bbox, columns)

        labels.aoi.read_arrays = spy
        label, valid = _mosaic(labels, tile=32)
        # the reference, by hand (rasterize on the whole scene)
        g = back.copy()
        lines = ~g.geom_type.isin(["Polygon", "MultiPolygon"])
        g.loc[lines, "geometry"] = g.loc[lines].buffer(1.5)
        keep = g[g["unsure"] == 0]
        vals = keep["cls"].to_numpy()
        order = np.argsort(vals, kind="stable")

        def burn(shapes):
            return rasterize(shapes, out_shape=(H, W), transform=_transform(), dtype="uint8",
                             all_touched=touched)

        exp_label = burn(zip(keep.geometry.values[order], vals[order].tolist()))
        exp_valid = burn((geom, 1) for geom in g[g["unsure"] == 1].geometry) == 0
        exp_valid &= burn((geom, 1) for geom in aoi_back.geometry) == 1
        exp_label[~exp_valid] = 0
        np.testing.assert_array_equal(valid, exp_valid)
        np.testing.assert_array_equal(label, exp_label)
        n_windows = len(list(ingest.TileGrid(H, W, 32, 0)))
        assert 0 < len(reads) < n_windows  # windows inside the outer polygon: no AOI read
        assert exp_valid.any() and not exp_valid.all()


def test_vector_labels_pickle_after_reading(tmp_path):
    """A reader that has read (an open ParquetFile, transformers, an AOI polygon kept) pickles
    -- without them -- and reads the same windows after (Ray ships readers to processes)."""
    import pickle

    utm = _features_utm()
    path = _write_labels(utm.to_crs("EPSG:4326"), tmp_path / "labels.parquet",
                         write_covering_bbox=True)
    x0, y1 = ORIGIN
    aoi_path = _write_labels(gpd.GeoDataFrame(geometry=[shapely.box(x0, y1 - 100, x0 + 120, y1)],
                                              crs=UTM), tmp_path / "aoi.parquet",
                             write_covering_bbox=True)
    labels = VectorLabels(path, LabelOptions(line_buffer_m=2.0, aoi=aoi_path), UTM,
                          _transform(), H, W)
    first = [labels.read(Window(c, r, 64, 64)) for c, r in ((0, 0), (64, 0), (200, 150))]
    assert labels.layer._pf is not None and labels._aoi_inside is not None
    again = pickle.loads(pickle.dumps(labels))
    assert again.layer._pf is None and again._aoi_inside is None
    for (lab, val), (c, r) in zip(first, ((0, 0), (64, 0), (200, 150))):
        lab2, val2 = again.read(Window(c, r, 64, 64))
        np.testing.assert_array_equal(lab, lab2)
        np.testing.assert_array_equal(val, val2)


def test_window_reads_build_no_aws_session_and_burn_like_rasterize(tmp_path, monkeypatch):
    """With AWS keys in the environment (an S3 worker), reading windows builds no rasterio
    AWSSession (each is a boto3 session, 10-20 ms: rasterio#3331) and burns, in windows of
    many shapes (more than the burner keeps), what ``rasterize`` into a new array burns."""
    from rasterio import session as rio_session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    made, real_init = [], rio_session.AWSSession.__init__

    def counting(self, *a, **kw):
        made.append(1)
        real_init(self, *a, **kw)

    monkeypatch.setattr(rio_session.AWSSession, "__init__", counting)
    utm = _features_utm()
    path = _write_labels(utm.to_crs("EPSG:4326"), tmp_path / "labels.parquet",
                         write_covering_bbox=True)
    back = gpd.read_parquet(path).to_crs(UTM)
    labels = VectorLabels(path, LabelOptions(class_field="cls", all_touched=True), UTM,
                          _transform(), H, W)
    labels.read(Window(0, 0, 8, 8))  # opened: the layer, its CRS, transformers
    made.clear()
    order = np.argsort(back["cls"].to_numpy(), kind="stable")
    windows = [(0, 0, 64, 64), (30, 17, 100, 50), (200, 100, 100, 160), (5, 5, 7, 300),
               (120, 40, 64, 64), (0, 0, W, H), (250, 200, 50, 60)]
    got = [labels.read(Window(*win))[0] for win in windows]
    assert not made  # (the reference below, outside read, makes one per rasterize call)
    for lab, (c, r, w, h) in zip(got, windows):
        exp = rasterize(zip(back.geometry.values[order], back["cls"].to_numpy()[order].tolist()),
                        out_shape=(h, w), dtype="uint8", all_touched=True,
                        transform=rasterio.windows.transform(Window(c, r, w, h), _transform()))
        np.testing.assert_array_equal(lab, exp)


def _one_line_naming(err, path):
    text = str(err.value)
    assert "\n" not in text and str(path) in text, text
    return text


def test_errors_are_one_line_and_name_the_file(tmp_path):
    utm = _features_utm()

    def make(path, crs=UTM):
        return VectorLabels(str(path), LabelOptions(), crs, _transform(), H, W)

    missing = tmp_path / "absent.fgb"
    with pytest.raises(LabelSourceError) as err:
        make(missing).check()
    assert "not found" in _one_line_naming(err, missing)
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [\n{"broken\n')
    with pytest.raises(LabelSourceError) as err:
        make(broken).check()
    assert "cannot read" in _one_line_naming(err, broken)
    no_crs = _write_labels(utm.set_crs(None, allow_override=True), tmp_path / "nocrs.fgb")
    with pytest.raises(LabelSourceError) as err:
        make(no_crs).check()
    assert "no CRS" in _one_line_naming(err, no_crs)
    far = utm.copy()
    far["geometry"] = far.translate(50_000, 0)
    far_path = _write_labels(far.to_crs("EPSG:4326"), tmp_path / "far.gpkg")
    with pytest.raises(LabelSourceError) as err:
        make(far_path).check()
    assert "no feature inside the scene" in _one_line_naming(err, far_path)
    plain = tmp_path / "plain.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"a": [1]}), plain)
    with pytest.raises(LabelSourceError) as err:
        make(plain).check()
    assert "not GeoParquet" in _one_line_naming(err, plain)
    good = _write_labels(utm, tmp_path / "good.fgb")
    with pytest.raises(LabelSourceError) as err:
        VectorLabels(good, LabelOptions(class_field="kind"), UTM, _transform(), H, W).check()
    assert "no attribute 'kind'" in _one_line_naming(err, good)
    with pytest.raises(LabelSourceError, match="image has no CRS"):
        make(good, crs=None)


def _raster_cfg(image, label, **pair):
    return TrainConfig.model_validate({"data": {"source": {
        "kind": "raster", "tile": 64, "pairs": [dict(image=image, label=label, **pair)]},
        "split": {"val_fraction": 0.2}}}).data.model_dump(mode="json")


def test_planning_and_loading_a_geojson_label(tmp_path):
    image = _write_image(tmp_path / "scene.tif")
    utm = _features_utm()
    path = _write_labels(utm.to_crs("EPSG:4326"), tmp_path / "labels.geojson")
    back = gpd.read_file(path).to_crs(UTM)
    plan = plan_data(_raster_cfg(image, path, line_buffer_m=2.0, ignore_field="unsure"))
    summary = plan["summary"]
    assert summary["labels"][0]["features_in_scene"] == len(utm)
    assert summary["split"]["kind"] == "random"
    exp_label, exp_valid = _expected(back, buffer_m=2.0, ignore=True)
    loader = ItemLoader(plan["scenes"])
    for item in plan["train"] + plan["val"]:
        img, mask, valid = loader.load(item)
        col, row, w, h = item["window"]
        np.testing.assert_array_equal(mask, exp_label[row:row + h, col:col + w] > 0)
        np.testing.assert_array_equal(valid, exp_valid[row:row + h, col:col + w])
        assert img.shape == (3, h, w)
    json.dumps(plan)  # the plan travels to the workers as JSON
    # the same through a plan with a label raster still works as before (raster burnt here)
    lab_tif = tmp_path / "labels.tif"
    with rasterio.open(lab_tif, "w", driver="GTiff", height=H, width=W, count=1, dtype="uint8",
                       crs=UTM, transform=_transform()) as dst:
        dst.write(exp_label[None])
    plan = plan_data(_raster_cfg(image, str(lab_tif)))
    assert plan["scenes"][0]["labels"] is None
    item = plan["train"][0]
    _, mask, _ = ItemLoader(plan["scenes"]).load(item)
    col, row, w, h = item["window"]
    np.testing.assert_array_equal(mask, exp_label[row:row + h, col:col + w] > 0)


def test_planning_errors_name_the_pair_and_file(tmp_path):
    image = _write_image(tmp_path / "scene.tif")
    far = _features_utm()
    far["geometry"] = far.translate(0, 90_000)
    path = _write_labels(far, tmp_path / "elsewhere.geojson")
    with pytest.raises(DataError, match=r"raster pair 0: labels .*elsewhere.geojson: no feature"):
        plan_data(_raster_cfg(image, path))
    with rasterio.open(tmp_path / "plain.tif", "w", driver="GTiff", height=H, width=W, count=1,
                       dtype="uint8") as dst:
        dst.write(np.ones((1, H, W), np.uint8))
    with pytest.raises(DataError, match="has no CRS, so vector labels"):
        plan_data(_raster_cfg(str(tmp_path / "plain.tif"), path))
    with pytest.raises(Exception, match="only for vector labels"):
        _raster_cfg(image, str(tmp_path / "plain.tif"), burn=3)


def _drawn_windows(plan, epochs=3, per_item=4) -> list[dict]:
    """The training windows a run's samples come from over ``epochs`` (TrainDataset.draw)."""
    from jobs.training.data import TrainDataset

    ds = TrainDataset(plan, 32, TrainConfig().augment.model_dump(), 0, per_item, cache=False)
    return [plan["train"][ds.draw(e, i)[0]] for e in range(epochs) for i in range(len(ds))]


def test_positive_fraction_draws_windows_with_labels(tmp_path):
    """data.source.positive_fraction: 1 -> every window drawn holds a positive pixel; off ->
    some do not; 0.5 -> half the samples; the flags agree with the loaded masks, for a GeoJSON
    and for the same labels as a label raster; the plan's summary records the setting."""
    image = _write_image(tmp_path / "scene.tif")
    x0, y1 = ORIGIN  # two buildings, top-left: most 64 px windows hold none
    gdf = gpd.GeoDataFrame({"cls": [1, 1]}, crs=UTM, geometry=[
        shapely.box(x0 + 8, y1 - 30, x0 + 20, y1 - 10),
        shapely.box(x0 + 40, y1 - 50, x0 + 52, y1 - 38)])
    path = _write_labels(gdf.to_crs("EPSG:4326"), tmp_path / "few.geojson")
    lab_tif = tmp_path / "few.tif"
    with rasterio.open(lab_tif, "w", driver="GTiff", height=H, width=W, count=1, dtype="uint8",
                       crs=UTM, transform=_transform()) as dst:
        dst.write(_expected(gpd.read_file(path).to_crs(UTM).assign(unsure=0))[0][None])

    def cfg(label, fraction):
        return TrainConfig.model_validate({"data": {"source": {
            "kind": "raster", "tile": 64, "positive_fraction": fraction,
            "pairs": [{"image": image, "label": label}]},
            "split": {"val_fraction": 0.2, "seed": 3}}}).data.model_dump(mode="json")

    def has_positive(loader, item) -> bool:
        return bool(loader.load(item)[1].any())

    off = plan_data(cfg(path, None))
    assert "sampling" not in off["summary"] and off["positive_fraction"] is None
    assert all("positive" not in it for it in off["train"])  # the plan is as it was
    loader = ItemLoader(off["scenes"])
    drawn_off = [has_positive(loader, it) for it in _drawn_windows(off)]
    assert not all(drawn_off) and any(drawn_off)

    for label in (path, str(lab_tif)):
        plan = plan_data(cfg(label, 1.0))
        loader = ItemLoader(plan["scenes"])
        flags = [it["positive"] for it in plan["train"]]
        assert flags == [has_positive(loader, it) for it in plan["train"]]
        assert 0 < sum(flags) < len(flags)
        assert plan["summary"]["sampling"] == {
            "positive_fraction": 1.0, "train_windows": len(flags),
            "positive_windows": sum(flags), "applied": True, "fallback": None}
        assert all(has_positive(loader, it) for it in _drawn_windows(plan))
        json.dumps(plan)
    half = plan_data(cfg(path, 0.5))
    drawn = [it["positive"] for it in _drawn_windows(half, epochs=1)]
    assert sum(drawn) == round(len(drawn) / 2)


def test_positive_fraction_without_positive_windows_falls_back(tmp_path, caplog):
    image = _write_image(tmp_path / "scene.tif")
    x0, y1 = ORIGIN  # an "unsure" patch only: features in the scene, no positive pixel
    gdf = gpd.GeoDataFrame({"unsure": [1]}, crs=UTM,
                           geometry=[shapely.box(x0 + 8, y1 - 30, x0 + 20, y1 - 10)])
    path = _write_labels(gdf, tmp_path / "unsure.geojson")
    data = _raster_cfg(image, path, ignore_field="unsure")
    data["source"]["positive_fraction"] = 0.7
    with caplog.at_level("WARNING", logger="samsp.train"):
        plan = plan_data(data)
    facts = plan["summary"]["sampling"]
    assert facts["positive_windows"] == 0 and not facts["applied"]
    assert "is not applied" in facts["fallback"] and facts["fallback"] in caplog.text
    n = len(plan["train"])
    assert [it["key"] for it in _drawn_windows(plan, epochs=1, per_item=2)] == \
        [plan["train"][i % n]["key"] for i in range(2 * n)]


def test_labels_from_s3(tmp_path, s3_env):
    import fsspec

    utm = _features_utm()
    fs = fsspec.filesystem("s3", **s3_env.storage_options())
    for name in ("labels.fgb", "labels.parquet"):
        local = _write_labels(utm.to_crs("EPSG:4326"), tmp_path / name,
                              **({"write_covering_bbox": True} if name.endswith("parquet") else {}))
        fs.put(local, f"{s3_env.bucket}/labels/{name}")
        labels = VectorLabels(f"s3://{s3_env.bucket}/labels/{name}", LabelOptions(), UTM,
                              _transform(), H, W)
        assert labels.check()["features_in_scene"] == len(utm)
        label, _ = labels.read(Window(0, 0, W, H))
        here = VectorLabels(local, LabelOptions(), UTM, _transform(), H, W)
        np.testing.assert_array_equal(label, here.read(Window(0, 0, W, H))[0])
        assert label.sum() > 1000


def test_spacenet_footprints_match_the_provided_mask():
    base = shared_data("spacenet", "buildings_SN4_Atlanta")
    with rasterio.open(base / "sample_geotiff.tif") as src:
        crs, transform, h, w = src.crs, src.transform, src.height, src.width
    with rasterio.open(base / "sample_fp_mask_from_geojson.tif") as src:
        provided = src.read(1) > 0
    labels = VectorLabels(str(base / "geotiff_labels.geojson"), LabelOptions(), crs, transform,
                          h, w)
    assert labels.check()["features_in_scene"] == 43
    label = np.zeros((h, w), bool)
    for t in ingest.TileGrid(h, w, 256, 0):
        r0, c0 = int(t.read_window.row_off), int(t.read_window.col_off)
        label[r0:r0 + 256, c0:c0 + 256] = labels.read(t.read_window)[0] > 0
    assert (label == provided).mean() >= 0.99


def test_scenes_config_checks(capsys):
    shared_data("spacenet", "buildings_SN4_Atlanta")
    from jobs import train

    assert train.main(["--config", "configs/train_scenes_cpu.yaml", "--check"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["data"]
    assert data["split"]["kind"] == "spatial" and data["split"]["val_windows"] > 0
    assert data["labels"][0]["features_in_scene"] == 43


def test_ingest_labels_imports_no_torch_or_ray():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, ingest.labels; "
            "bad = [m for m in ('torch', 'ray', 'samsp', 'jobs') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])


def test_many_scene_readers_share_open_files_and_burn_datasets(tmp_path):
    """A scene listing's readers (one VectorLabels per scene, all over one GeoParquet file):
    50 of them, on distinct grids, reading a window each (of 6 shapes) keep one open
    ParquetFile and at most 4 burn datasets between them -- memory does not grow with scenes
    -- and each window equals ``rasterize`` of the whole layer on its transform; more files
    than the cache keeps: at most OPEN_PARQUET_FILES stay open."""
    import gc
    import shutil

    import pyarrow.parquet as pq

    from ingest.labels import layer as layer_mod
    from ingest.labels import rasterize as rasterize_mod

    def open_files() -> int:  # ParquetFile objects alive in the process
        gc.collect()
        return sum(type(o) is pq.ParquetFile for o in gc.get_objects())

    layer_mod._PARQUET_FILES.clear()
    path = _write_labels(_random_layer(300, 7), tmp_path / "shared.parquet",
                         write_covering_bbox=True, row_group_size=40)
    back = gpd.read_parquet(path).to_crs(UTM)
    back = back[~back.geometry.isna() & ~back.geometry.is_empty]
    order = np.argsort(back["cls"].to_numpy(), kind="stable")
    shapes = list(zip(back.geometry.values[order], back["cls"].to_numpy()[order].tolist()))
    sizes = [(64, 64), (32, 48), (80, 40), (16, 16), (100, 30), (48, 32)]
    readers, got = [], []
    for k in range(50):
        x0, y1 = ORIGIN[0] + 1.5 * k - 20, ORIGIN[1] - 1.25 * k + 10
        transform = from_origin(x0, y1, RES, RES)
        labels = VectorLabels(path, LabelOptions(class_field="cls", all_touched=k % 2 == 1),
                              UTM, transform, H, W)
        w, h = sizes[k % len(sizes)]
        window = Window((7 * k) % (W - w), (5 * k) % (H - h), w, h)
        got.append((labels.read(window)[0], window, transform, k % 2 == 1))
        readers.append(labels)
        assert len(rasterize_mod._BURNER._datasets) <= rasterize_mod._Burner.MAX_SHAPES
    assert all(not hasattr(r, "_burner") for r in readers)
    assert len(layer_mod._PARQUET_FILES) == 1
    assert len({id(r.layer._pf) for r in readers}) == 1 and readers[0].layer._pf is not None
    assert open_files() <= layer_mod.OPEN_PARQUET_FILES  # not one per reader
    for lab, window, transform, touched in got:
        exp = rasterize(shapes, out_shape=(int(window.height), int(window.width)),
                        dtype="uint8", all_touched=touched,
                        transform=rasterio.windows.transform(window, transform))
        np.testing.assert_array_equal(lab, exp)
    # more files than the cache keeps: the least recently used dropped, reads still right
    first = None
    for k in range(layer_mod.OPEN_PARQUET_FILES + 4):
        copy = shutil.copy(path, tmp_path / f"copy{k}.parquet")
        labels = VectorLabels(copy, LabelOptions(class_field="cls"), UTM, _transform(), H, W)
        lab = labels.read(Window(0, 0, 64, 64))[0]
        first = lab if first is None else first
        np.testing.assert_array_equal(lab, first)
        assert len(layer_mod._PARQUET_FILES) <= layer_mod.OPEN_PARQUET_FILES
    assert open_files() <= layer_mod.OPEN_PARQUET_FILES
    assert readers[0].layer._pf is None  # dropped from the cache: opened again on a read
    np.testing.assert_array_equal(readers[0].read(got[0][1])[0], got[0][0])
    # a file written again at the same path is opened again (not read with its old footer)
    again = tmp_path / "rewritten.parquet"
    _write_labels(_random_layer(300, 7), again, write_covering_bbox=True)
    before = VectorLabels(str(again), LabelOptions(), UTM, _transform(), H, W)
    assert before.read(Window(0, 0, W, H))[0].any()
    _write_labels(_random_layer(300, 7).iloc[:0], again, write_covering_bbox=True)
    after = VectorLabels(str(again), LabelOptions(), UTM, _transform(), H, W)
    assert not after.read(Window(0, 0, W, H))[0].any()


@pytest.mark.parametrize("touched", [False, True])
def test_invalid_aoi_polygons_are_rasterised_not_taken_as_inside(tmp_path, touched):
    """A hand-drawn AOI may be invalid: a bow-tie, a ring that laps a region twice (GDAL's
    even-odd fill leaves the twice-covered square unburnt). A window "inside" such a polygon
    does not take the shortcut (it is rasterised), and the windows equal the whole AOI
    rasterised on the scene."""
    x0, y1 = ORIGIN
    lapped = shapely.Polygon([(x0 - 5, y1 - 100), (x0 + 100, y1 - 100), (x0 + 100, y1 + 5),
                              (x0 - 5, y1 + 5), (x0 - 5, y1 - 100), (x0 + 20, y1 - 80),
                              (x0 + 80, y1 - 80), (x0 + 80, y1 - 20), (x0 + 20, y1 - 20),
                              (x0 + 20, y1 - 80), (x0 - 5, y1 - 100)])
    # (off the pixel corners: all_touched burns a line through a corner by rounding, window
    # and scene alike only off them)
    bowtie = shapely.Polygon([(x0 + 100.3, y1 - 135.1), (x0 + 155.2, y1 + 5.3),
                              (x0 + 155.2, y1 - 135.1), (x0 + 100.3, y1 + 5.3)])
    assert not shapely.is_valid(lapped) and not shapely.is_valid(bowtie)
    aoi = gpd.GeoDataFrame(geometry=[lapped, bowtie], crs=UTM)
    aoi_path = str(tmp_path / "aoi.gpkg")
    aoi.to_file(aoi_path)
    aoi_back = gpd.read_file(aoi_path)
    # polygons (unbuffered lines through pixel corners: all_touched rounds them per window)
    buildings = _features_utm()
    buildings = buildings[buildings.geom_type == "Polygon"]
    labels_path = _write_labels(buildings, tmp_path / "labels.fgb")
    labels = VectorLabels(labels_path, LabelOptions(aoi=aoi_path, all_touched=touched), UTM,
                          _transform(), H, W)
    label, valid = _mosaic(labels, tile=32)
    assert labels._aoi_inside is None  # no valid polygon held a window

    def burn(geoms):
        return rasterize(((g, 1) for g in geoms), out_shape=(H, W), transform=_transform(),
                         dtype="uint8", all_touched=touched)

    exp_valid = burn(aoi_back.geometry) == 1
    exp_label = burn(buildings.geometry)
    exp_label[~exp_valid] = 0
    np.testing.assert_array_equal(valid, exp_valid)
    np.testing.assert_array_equal(label, exp_label)
    assert exp_valid.any() and not exp_valid[60:140, 60:140].any()  # the lapped square
    # the same windows through a valid AOI still take the shortcut
    valid_aoi = str(tmp_path / "valid.gpkg")
    gpd.GeoDataFrame(geometry=[shapely.box(x0 - 5, y1 - 100, x0 + 100, y1 + 5)],
                     crs=UTM).to_file(valid_aoi)
    plain = VectorLabels(labels_path, LabelOptions(aoi=valid_aoi, all_touched=touched), UTM,
                         _transform(), H, W)
    _mosaic(plain, tile=32)
    assert plain._aoi_inside is not None


def test_positive_windows_read_scene_by_scene_and_name_the_image(tmp_path, monkeypatch):
    """positive_windows opens each scene once, reads its items, closes it before the next
    (items of scenes interleaved: the flags keep the items' order); a label read error names
    the scene's image, its secrets redacted."""
    from jobs.training import raster_source

    image = _write_image(tmp_path / "scene.tif")
    path = _write_labels(_features_utm(), tmp_path / "labels.geojson")
    plan = plan_data(_raster_cfg(image, path))
    scenes = [plan["scenes"][0], dict(plan["scenes"][0], threshold=254)]  # 2nd: no positive
    windows = [it["window"] for it in plan["train"]]
    items = [{"scene": k % 2, "window": windows[k // 2]} for k in range(2 * len(windows))]
    events, real_open = [], raster_source.open_raster

    def opening(meta):
        scene, label, radiometry = real_open(meta)
        events.append(("open", meta["threshold"]))
        real_close = scene.close

        def close():
            events.append(("close", meta["threshold"]))
            real_close()

        scene.close = close
        return scene, label, radiometry

    monkeypatch.setattr(raster_source, "open_raster", opening)
    flags = raster_source.positive_windows(items, scenes)
    assert events == [("open", 0), ("close", 0), ("open", 254), ("close", 254)]
    assert flags[1::2] == [False] * len(windows)
    assert flags[0::2] == raster_source.positive_windows(
        [{"scene": 0, "window": w} for w in windows], scenes[:1]) and any(flags)

    def broken(self, window):
        raise LabelSourceError(f"labels {self.uri}: cannot read features: boom")

    monkeypatch.setattr(VectorLabels, "read", broken)
    secret = "s3://AKIAKEY:SECRETKEY@bucket/scenes/one.tif"
    monkeypatch.setattr(raster_source, "open_raster",
                        lambda meta: real_open(dict(meta, image=image)))
    with pytest.raises(DataError) as err:
        raster_source.positive_windows(items[:1], [dict(scenes[0], image=secret)])
    text = str(err.value)
    assert text.startswith("scene s3://bucket/scenes/one.tif: labels ") and "boom" in text
    assert "SECRETKEY" not in text and "raster pair" not in text


def test_item_loader_keeps_the_recently_used_scenes(monkeypatch):
    """The loader's opened scenes are bounded (a scene listing may hold thousands): the 16
    most recently used kept, an evicted one opened again when used again."""
    from jobs.training import data as data_mod

    opened = []
    monkeypatch.setattr(data_mod, "open_raster", lambda meta: opened.append(meta["n"]) or
                        (meta["n"],))
    loader = ItemLoader([{"n": n} for n in range(40)], cache=False)
    for n in range(40):
        assert loader._scene(n) == (n,)
        assert loader._scene(0) == (0,)  # used again and again: kept
    assert len(loader._open) == 16 and 0 in loader._open
    assert opened == list(range(40))
    loader._scene(1)  # evicted long ago: opened again
    assert opened[-1] == 1 and len(loader._open) == 16


def test_readers_of_one_labels_file_parse_its_crs_once(tmp_path):
    """A scene listing plans one reader per scene over ONE labels file: its CRS is parsed once
    per process thread, not once per scene (that was two thirds of planning a scene)."""
    from ingest.labels.layer import VectorLayer, _parsed_crs

    uri = str(tmp_path / "l.parquet")
    gpd.GeoDataFrame({"v": [1]}, geometry=[shapely.box(0, 0, 1, 1)],
                     crs="EPSG:32633").to_parquet(uri, write_covering_bbox=True)
    _parsed_crs.cache_clear()
    crss = [VectorLayer(uri).crs() for _ in range(5)]
    assert all(c == crss[0] for c in crss) and crss[0].to_epsg() == 32633
    info = _parsed_crs.cache_info()
    assert info.misses == 2 and info.hits == 8  # the file's PROJJSON, then its WKT
