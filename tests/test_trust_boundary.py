"""Hostile catalog hrefs against the segment job (issue 32, trust policy), end to end: a static
ItemCollection naming a good asset beside an absolute local path outside the catalog, a
``../`` path out of it, an instance-metadata-style URL on loopback and an http "tif" that is a
VRT reading a private local raster. A loopback HTTP listener stands in for the metadata endpoint
and the VRT host, and records every request it gets."""
from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pystac
import pytest

from tests.conftest import png_bomb
from tests.test_stac_input import H, W, _cog
from tests.test_stac_job import MAY1, bundle, env, rows, run_job  # noqa: F401 - fixtures

pytestmark = [pytest.mark.s3, pytest.mark.slow]


class Listener:
    """A loopback HTTP server answering ``/evil.tif`` with a VRT, 404 elsewhere."""

    def __init__(self, vrt: bytes):
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool):
                outer.paths.append(self.path)
                if self.path.startswith("/evil.tif"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(vrt)))
                    self.end_headers()
                    if body:
                        self.wfile.write(vrt)
                else:
                    self.send_response(404)
                    self.end_headers()

            def do_GET(self):  # noqa: N802 - http.server's name
                self._answer(True)

            def do_HEAD(self):  # noqa: N802
                self._answer(False)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _item(item_id: str, href: str) -> dict:
    geom = {"type": "Polygon", "coordinates": [[[15, 36], [15.1, 36], [15.1, 36.1], [15, 36.1],
                                                [15, 36]]]}
    item = pystac.Item(item_id, geom, [15, 36, 15.1, 36.1], MAY1, {}, collection="s2")
    item.add_asset("visual", pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
    return item.to_dict(include_self_link=False)


@pytest.fixture
def hostile(tmp_path):
    rng = np.random.default_rng(3)
    cat = tmp_path / "catalog"
    private = tmp_path / "private"
    cat.mkdir()
    private.mkdir()
    _cog(cat / "good.tif", rng.integers(0, 255, (3, H, W), dtype=np.uint8))
    secret = _cog(private / "secret.tif", rng.integers(0, 255, (3, H, W), dtype=np.uint8))
    vrt = (f'<VRTDataset rasterXSize="{W}" rasterYSize="{H}"><VRTRasterBand dataType="Byte" '
           f'band="1"><SimpleSource><SourceFilename>{secret}</SourceFilename><SourceBand>1'
           f'</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>').encode()
    listener = Listener(vrt)
    items = [_item("good", "./good.tif"), _item("absolute", secret),
             _item("dotdot", "../private/secret.tif"),
             _item("metadata", f"{listener.url}/latest/meta-data/x.tif"),
             _item("vrt", f"{listener.url}/evil.tif")]
    (cat / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    try:
        yield cat / "items.json", listener, tmp_path
    finally:
        listener.close()


def test_hostile_hrefs_fail_alone_and_reach_nothing(bundle, env, hostile):  # noqa: F811
    catalog, listener, tmp = hostile
    res = run_job(tmp / "out", bundle, ["--stac", catalog, "--assets", "visual"], env)
    assert res.rc == 1, res.out[-3000:]
    got = rows(tmp / "out")
    assert got["good"]["status"] == "ok" and res.summary["ok"] == 1
    reasons = {"absolute": "outside the catalog's folder", "dotdot": "outside the catalog's folder",
               "metadata": "non-public address", "vrt": "non-public address"}
    for sid, reason in reasons.items():
        assert got[sid]["status"] == "failed" and reason in got[sid]["error"], got[sid]
        assert "\n" not in got[sid]["error"]
        assert not (tmp / "out" / sid / "quicklook.png").exists()
    assert listener.paths == []  # not one request reached the loopback "metadata endpoint"


def test_a_listed_host_still_cannot_serve_a_vrt(bundle, env, hostile):  # noqa: F811
    catalog, listener, tmp = hostile
    res = run_job(tmp / "out", bundle, ["--stac", catalog, "--assets", "visual",
                                        "--set", "input.allow.hosts=[127.0.0.1]"], env)
    assert res.rc == 1, res.out[-3000:]
    got = rows(tmp / "out")
    assert got["vrt"]["status"] == "failed" and "not a readable raster" in got["vrt"]["error"]
    assert got["good"]["status"] == "ok"
    assert not (tmp / "out" / "vrt" / "quicklook.png").exists()
    assert all(p.startswith(("/evil.tif", "/latest/meta-data/")) for p in listener.paths)


def test_a_lying_header_fails_alone_before_any_read(tmp_path):
    """A 1 KB GeoTIFF header claiming 200,000 x 200,000 pixels: refused from its header."""
    import rasterio
    from rasterio.transform import from_origin

    import ingest

    path = tmp_path / "huge.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200_000, height=200_000, count=1,
                       dtype="uint8", crs="EPSG:32633", transform=from_origin(0, 0, 1, 1),
                       tiled=True, sparse_ok=True, compress="deflate"):
        pass  # nothing written: a sparse file, a few KB on disk
    assert path.stat().st_size < 8 << 20  # tile offsets only: a few MB
    with pytest.raises(ingest.SceneTooLargeError, match="40,000,000,000 pixels"):
        ingest.open_scene(str(path), max_pixels=10_000_000_000)
    assert ingest.open_scene(str(path), max_pixels=None, check_empty=False).width == 200_000


def test_planning_a_store_without_overviews_has_a_time_budget(tmp_path):
    """A 16-KB Zarr store declaring 40,000 x 40,000 px (no chunk written, no overviews): its
    low-resolution pass walks every window. The budget stops it with a reason, in about the
    budget, and planning a normal scene under the same settings still works."""
    import time

    import zarr

    import ingest
    from ingest.synthetic import make_geotiff
    from jobs.segmentation.config import SegmentConfig
    from jobs.segmentation.scene import plan_scene

    store = tmp_path / "huge.zarr"
    zarr.open_group(str(store), mode="w").create_array(
        "band_data", shape=(1, 40_000, 40_000), dtype="uint8", fill_value=7, chunks=(1, 4096, 4096),
        dimension_names=("band", "y", "x"))
    cfg = SegmentConfig.model_validate({"pipeline": {"plan_timeout_s": 0.3},
                                        "input": {"require_crs": False}})
    t0 = time.monotonic()
    with pytest.raises(ingest.SceneTimeoutError, match="ran out of its time budget"):
        plan_scene("huge", str(store), str(tmp_path / "out"), cfg, tile=256, overlap=32)
    assert time.monotonic() - t0 < 10  # the whole walk would take minutes
    good = make_geotiff(str(tmp_path / "good.tif"), 300, 300)
    assert len(plan_scene("good", good, str(tmp_path / "out"), cfg, tile=256, overlap=32).tiles)


def test_a_png_bomb_is_refused_from_its_header(tmp_path):
    import ingest

    bomb = png_bomb(tmp_path / "bomb.png")
    with pytest.raises(ingest.SceneTooLargeError, match="60000x60000"):
        ingest.open_scene(bomb, max_pixels=150_000_000, check_empty=False)


def test_a_presigned_input_leaves_no_secret_in_outputs_or_logs(s3_env, bundle, env, tmp_path):  # noqa: F811
    """A presigned GET URL as --input: the scene is read through it, and neither its signature
    nor its credential reaches status.json, the index, stats.json, the report or the log."""
    import boto3
    from botocore.config import Config
    from urllib.parse import parse_qs, urlsplit

    from ingest import storage

    rgb = np.random.default_rng(4).integers(0, 255, (3, H, W), dtype=np.uint8)
    storage.put_file(_cog(tmp_path / "signed.tif", rgb), f"s3://{s3_env.bucket}/signed/scene.tif")
    client = boto3.client("s3", endpoint_url=s3_env.endpoint, region_name="us-east-1",
                          aws_access_key_id=s3_env.key,
                          aws_secret_access_key=s3_env.secret,
                          config=Config(signature_version="s3v4"))
    url = client.generate_presigned_url("get_object", ExpiresIn=3600, Params={
        "Bucket": s3_env.bucket, "Key": "signed/scene.tif"})
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    out = tmp_path / "out"
    res = run_job(out, bundle, ["--input", url, "--set", "output.stac=true"], env)
    assert res.rc == 0 and res.summary["ok"] == 1, res.out[-3000:]
    assert rows(out)["scene"]["input"] == url.split("?")[0] + "?" + "&".join(
        p for p in urlsplit(url).query.split("&") if p.split("=")[0] in
        ("X-Amz-Algorithm", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders"))
    secrets = (signature, "X-Amz-Signature", "X-Amz-Credential", s3_env.key)
    assert not [s for s in secrets if s in res.out]
    leaks = [(str(p), s) for p in out.rglob("*") if p.is_file()
             for s in secrets if s.encode() in p.read_bytes()]
    assert not leaks, leaks


def test_a_broken_or_outside_link_in_a_static_catalog_exits_2_with_one_line(bundle, env, tmp_path):  # noqa: F811
    for child in ("./missing/catalog.json", "../../elsewhere/catalog.json"):
        root = pystac.Catalog("root", "a catalog with one bad child link")
        root.add_link(pystac.Link("child", child, media_type="application/json"))
        cat = tmp_path / "cat" / "catalog.json"
        cat.parent.mkdir(exist_ok=True)
        cat.write_text(json.dumps(root.to_dict(include_self_link=False)))
        out = tmp_path / "out"
        res = run_job(out, bundle, ["--stac", cat], env, timeout=120)
        assert res.rc == 2, res.out[-2000:]
        errors = [ln for ln in res.out.splitlines() if " ERROR " in ln]
        assert len(errors) == 1 and "a link cannot be followed" in errors[0], res.out[-2000:]
        assert "Traceback" not in res.out
