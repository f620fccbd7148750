"""Signed asset hrefs never reach the output (issue 32): an item whose single-band assets are
presigned URLs is stacked into a VRT held in memory -- its XML is the scene's input, GDAL opens it
as a dataset name -- while ``<output>/<id>/source.vrt`` keeps the same VRT with the hrefs'
identities only (ingest.stac.assets.item_scene_uri). The assets are served on loopback by an
HTTP server (its own process: GDAL reads it from this one) that answers 403 without the right
``X-Amz-Signature``; the segment job runs on the local engine, as in tests/test_stac_job.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from xml.sax.saxutils import escape

import numpy as np
import pystac
import pytest
from rasterio.windows import Window

from ingest import open_scene
from ingest.errors import CorruptSceneError
from ingest.stac.assets import ItemAssets, item_scene_uri, stack_vrt
from ingest.trust import (has_secret, in_memory_vrt_name, redact_text, redact_uri, uri_identity,
                          vrt_name_element)
from tests.test_stac_input import H, W, _cog
from tests.test_stac_job import MAY1, bundle, rows, run_job  # noqa: F401 - bundle: a fixture

SIG1, SIG2 = "sigAAAA1111secret", "sigBBBB2222secret"  # tonight's signature, tomorrow's
CREDENTIAL = "AKIAEXAMPLECREDENTIAL"
KEYS = ("B04", "B03", "B02")
VRT = "source.vrt"

# Serves a folder; every request must carry one of the signatures (argv[2], comma-separated).
SERVER = r"""
import http.server, sys
from urllib.parse import parse_qs, urlsplit
folder, signatures = sys.argv[1], sys.argv[2].split(",")
class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=folder, **kw)
    def _signed(self):
        if parse_qs(urlsplit(self.path).query).get("X-Amz-Signature", [""])[0] not in signatures:
            self.send_error(403)
            return False
        self.path = urlsplit(self.path).path
        return True
    def do_GET(self):
        if self._signed():
            super().do_GET()
    def do_HEAD(self):
        if self._signed():
            super().do_HEAD()
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def signed(base: str, key: str, signature: str) -> str:
    return (f"{base}/{key}.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL}"
            f"%2F20260501%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260501T000000Z"
            f"&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Three single-band COGs behind the signing server, and their stack as one local COG."""
    tmp = tmp_path_factory.mktemp("signed")
    served = tmp / "served"
    served.mkdir()
    rgb = np.random.default_rng(7).integers(0, 255, (3, H, W), dtype=np.uint8)
    for i, key in enumerate(KEYS):
        _cog(served / f"{key}.tif", rgb[i:i + 1])
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(served), f"{SIG1},{SIG2}"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", tmp=tmp, rgb=rgb,
                              stacked=_cog(tmp / "rgb.tif", rgb))
    finally:
        proc.terminate()
        proc.wait(10)


def _hrefs(assets, signature: str) -> tuple[str, ...]:
    return tuple("/vsicurl/" + signed(assets.url, k, signature) for k in KEYS)


# ----------------------------------------------------------------------------- units

def test_in_memory_vrt_is_written_down_as_its_name_never_as_xml():
    xml = (f'<VRTDataset rasterXSize="2" rasterYSize="2">\n  {vrt_name_element("/out/a&b/x.vrt")}\n'
           f'  <SourceFilename>/vsicurl/https://h/B04.tif?X-Amz-Signature=S1&amp;'
           f'X-Amz-Credential=C1</SourceFilename>\n</VRTDataset>\n')
    assert redact_uri(xml) == "/out/a&b/x.vrt" == uri_identity(xml)
    line = redact_text(f"read CorruptSceneError: {xml}: HTTP 403")
    assert line == "read CorruptSceneError: /out/a&b/x.vrt\n: HTTP 403"
    # cut short (a bounded message): still no XML; without its name, a fixed word
    assert redact_text("e: " + xml[:120]) == "e: /out/a&b/x.vrt"
    assert redact_text("e: " + xml[:30]) == "e: in-memory VRT"
    assert in_memory_vrt_name(xml[:30]) == "in-memory VRT"
    # an error naming it keeps the reason, not 400 characters of XML
    assert str(CorruptSceneError(f"{xml}: read failed (HTTP 403)")) == \
        "/out/a&b/x.vrt : read failed (HTTP 403)"


def test_secrets_in_hrefs_are_found_and_redacted():
    assert has_secret(signed("https://h", "B04", "s")) and has_secret("https://u:p@h/x.tif")
    assert has_secret("/vsis3/KEY:SECRET@bucket/k.tif") and has_secret("/vsicurl/http://h/x?sig=1")
    for plain in ("/data/a.tif", "s3://b/k@1.tif", "/vsis3/b/k@1.tif", "https://h/x.tif?band=2&b"):
        assert not has_secret(plain), plain
    assert redact_uri("/vsis3/KEY:SECRET@bucket/k.tif") == "/vsis3/bucket/k.tif"
    assert redact_text("open '/vsis3/KEY:SECRET@bucket/k.tif' failed") == \
        "open '/vsis3/bucket/k.tif' failed"


def test_signed_hrefs_stack_in_memory_and_read_as_the_stacked_cog(assets, tmp_path):
    items = ItemAssets("it", KEYS, _hrefs(assets, SIG1))
    vrt = tmp_path / "it" / "source.vrt"
    uri = item_scene_uri(items, str(vrt))
    assert uri.startswith("<VRTDataset") and redact_uri(uri) == str(vrt)
    got, ref = open_scene(uri), open_scene(assets.stacked)
    np.testing.assert_array_equal(got.read(Window(0, 0, W, H))[0], ref.read(Window(0, 0, W, H))[0])
    # the file: the same VRT, each href as its identity (no secret, nothing a re-signing changes)
    text = vrt.read_text()
    assert SIG1 not in text and CREDENTIAL not in text and "X-Amz" not in text
    want = uri
    for href in items.hrefs:
        want = want.replace(escape(href), escape(uri_identity(href)))
    assert text == want and f"/vsicurl/{assets.url}/B04.tif<" in text
    with pytest.raises(urllib.error.HTTPError, match="403"):  # unsigned, the server refuses
        urllib.request.urlopen(f"{assets.url}/B04.tif", timeout=10)
    # signed again tomorrow: the file is left as it is
    mtime = vrt.stat().st_mtime_ns
    again = item_scene_uri(ItemAssets("it", KEYS, _hrefs(assets, SIG2)), str(vrt))
    assert SIG2 in again and vrt.stat().st_mtime_ns == mtime
    # unsigned hrefs: the file is the VRT itself, as before
    local = ItemAssets("it", KEYS, tuple(str(assets.tmp / "served" / f"{k}.tif") for k in KEYS))
    assert item_scene_uri(local, str(tmp_path / "plain.vrt")) == str(tmp_path / "plain.vrt")
    assert (tmp_path / "plain.vrt").read_text() == stack_vrt(local)


# ----------------------------------------------------------------------------- the job

def _catalog(path: Path, assets, signature: str) -> Path:
    geom = {"type": "Polygon", "coordinates": [[[15, 36], [15.1, 36], [15.1, 36.1], [15, 36.1],
                                                [15, 36]]]}
    item = pystac.Item("signed", geom, [15, 36, 15.1, 36.1], MAY1, {}, collection="s2")
    for key in KEYS:
        item.add_asset(key, pystac.Asset(signed(assets.url, key, signature),
                                         media_type=pystac.MediaType.COG, roles=["data"]))
    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [item.to_dict(include_self_link=False)]}))
    return path


def _leaks(out: Path, text: str, secrets) -> list:
    found = [(str(p), s) for p in out.rglob("*") if p.is_file()
             for s in secrets if s.encode() in p.read_bytes()]
    return found + [("log", s) for s in secrets if s in text]


@pytest.mark.slow
def test_segment_job_reads_signed_assets_and_leaves_no_secret(assets, bundle, tmp_path):  # noqa: F811
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost")
    for name in ("RAY_ADDRESS", "SAMSP_SEGMENT_KILL_AFTER_TILES"):
        env.pop(name, None)
    out = tmp_path / "out"
    args = ["--stac", _catalog(tmp_path / "items.json", assets, SIG1), "--assets", ",".join(KEYS),
            "--input", assets.stacked, "--set", "input.allow.hosts=[127.0.0.1]",
            "--set", "output.stac=true"]
    res = run_job(out, bundle, args, env)
    assert res.rc == 0 and res.summary["ok"] == 2, res.out[-3000:]
    row = rows(out)["signed"]
    assert row["status"] == "ok" and row["input"] == str(out / "signed" / VRT)
    for name in ("mask.tif", "prob.tif"):  # read through the signed hrefs: the stacked COG's mask
        assert (out / "signed" / name).read_bytes() and (out / "rgb" / name).exists()
        np.testing.assert_array_equal(_band(out / "signed" / name), _band(out / "rgb" / name))
    secrets = (SIG1, CREDENTIAL, "X-Amz-Signature", "X-Amz-Credential")
    assert not _leaks(out, res.out, secrets) and "<VRTDataset" not in res.out  # nor the XML

    # tomorrow's catalog, signed again: the same scene (its identity is source.vrt), done
    again = run_job(out, bundle, ["--stac", _catalog(tmp_path / "items.json", assets, SIG2),
                                  *args[2:]], env)
    assert again.rc == 0 and again.summary["skipped"] == 2, again.out[-3000:]
    assert not _leaks(out, again.out, (SIG2, *secrets))


def _band(path):
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)
