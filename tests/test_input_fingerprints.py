"""Input fingerprints that notice a changed input (jobs.segmentation.record): a local file
rewritten with its size and mtime put back, an http(s) input (HEAD: ETag, Last-Modified, size),
a STAC item stacked into a VRT (its assets, not the VRT), and records stored by the earlier
version (size + mtime only) that must still match after an upgrade."""
from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import json
import logging
import os
import threading
import time
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jobs.segmentation.record import (choose_store, http_fingerprint, input_fingerprint,
                                      records_match, stacked_fingerprint)


def _rewrite_keeping_size_and_mtime(path: Path, data: bytes, *, rename: bool) -> None:
    """New content of the same size, its mtime put back (``touch -r``): what size + mtime miss."""
    st = os.stat(path)
    assert len(data) == st.st_size and data != path.read_bytes()
    time.sleep(0.05)  # file times tick coarsely (a jiffy): the rewrite must come after one
    if rename:  # written as a new file + rename (most writers)
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:       # written in place, same inode
        with open(path, "r+b") as f:
            f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


# ----------------------------------------------------------------------------- local files

@pytest.mark.parametrize("rename", [False, True], ids=["in-place", "new+rename"])
def test_local_rewrite_with_mtime_put_back_is_a_new_version(tmp_path, rename):
    path = tmp_path / "a.bin"
    path.write_bytes(b"a" * 64)
    before = input_fingerprint(str(path))
    assert set(before) == {"size", "mtime_ns", "ctime_ns", "inode"}
    assert input_fingerprint(str(path)) == before  # reading it changes nothing
    _rewrite_keeping_size_and_mtime(path, b"b" * 64, rename=rename)
    after = input_fingerprint(str(path))
    assert (after["size"], after["mtime_ns"]) == (before["size"], before["mtime_ns"])
    assert after["ctime_ns"] != before["ctime_ns"]
    assert (after["inode"] != before["inode"]) == rename
    assert not records_match({"input": before}, {"input": after})


def test_local_store_keeps_the_newest_ctime(tmp_path):
    store = tmp_path / "s.zarr"
    (store / "c").mkdir(parents=True)
    chunk = store / "c" / "0"
    chunk.write_bytes(b"x" * 16)
    before = input_fingerprint(str(store))
    assert set(before) == {"files", "size", "mtime_ns", "ctime_ns"} and before["files"] == 1
    _rewrite_keeping_size_and_mtime(chunk, b"y" * 16, rename=True)
    after = input_fingerprint(str(store))
    assert {k: after[k] for k in ("files", "size", "mtime_ns")} == \
        {k: before[k] for k in ("files", "size", "mtime_ns")}
    assert after["ctime_ns"] > before["ctime_ns"]


# ----------------------------------------------------------------------------- legacy records

RECORD = {"bundle_sha256": "ab" * 32, "threshold": 0.5, "tiling": {"tile": 128, "overlap": 16}}


def test_a_record_of_the_earlier_version_still_matches(tmp_path):
    """Size + mtime_ns without ctime_ns/inode: the same input (no recompute after an upgrade);
    any key both have must be equal, and nothing but the new keys may be missing."""
    new = dict(RECORD, input={"size": 10, "mtime_ns": 5, "ctime_ns": 7, "inode": 3})
    legacy = dict(RECORD, input={"size": 10, "mtime_ns": 5})
    assert records_match(legacy, new) and records_match(new, new)
    assert records_match(dict(RECORD, input={"files": 2, "size": 10, "mtime_ns": 5}),
                         dict(RECORD, input={"files": 2, "size": 10, "mtime_ns": 5, "ctime_ns": 9}))
    for stored in ({"size": 10, "mtime_ns": 6},                      # another mtime
                   {"size": 11, "mtime_ns": 5},                      # another size
                   {"size": 10, "mtime_ns": 5, "ctime_ns": 8},       # a new key, another value
                   {"size": 10},                                     # mtime missing too
                   {"size": 10, "mtime_ns": 5, "etag": "x"},         # a key the new one lacks
                   None):                                            # no fingerprint
        assert not records_match(dict(RECORD, input=stored), new), stored
    assert not records_match(dict(legacy, threshold=0.9), new)  # the rest must be equal
    assert not records_match(None, new)


def test_legacy_records_skip_done_scenes_and_resume_stores(tmp_path):
    """The status board (skip a done scene) and choose_store (resume its store) both take a
    record stored by the earlier version; a real change of size or mtime is still one."""
    from ingest import MaskWriter
    from jobs.segmentation.record import RECORD_KEY
    from jobs.segmentation.status import StatusBoard

    scene = tmp_path / "s.tif"
    scene.write_bytes(b"0" * 32)
    new = dict(RECORD, input=input_fingerprint(str(scene)))
    legacy = dict(RECORD, input={k: new["input"][k] for k in ("size", "mtime_ns")})
    out = str(tmp_path / "out")
    old_run = StatusBoard(out, "run-old", 60)
    old_run.claim("s", str(scene), legacy, force=False)
    assert old_run.finish("s", {"id": "s", "input": str(scene), "status": "ok", "record": legacy})
    _, got = StatusBoard(out, "run-new", 60).claim("s", str(scene), new, force=False)
    assert got.kind == "skipped"
    moved = dict(new, input=dict(new["input"], mtime_ns=new["input"]["mtime_ns"] + 1))
    assert StatusBoard(out, "run-moved", 60).claim("s", str(scene), moved, False)[1].kind == "claimed"

    live = f"{out}/s"
    MaskWriter(f"{live}/mask.zarr", height=20, width=20, chunk=16, attrs={RECORD_KEY: legacy})
    assert choose_store(live, new, force=False, on_change="fail").mode == "a"
    with pytest.raises(Exception, match="input"):
        choose_store(live, moved, force=False, on_change="fail")


# ----------------------------------------------------------------------------- http(s)

class _Server:
    """A loopback http server over one folder: ETag (sha1 of the bytes), Last-Modified and
    Content-Length; names under ``signed/`` refuse HEAD (403) like a presigned GET URL."""

    def __init__(self, root: Path):
        from jobs.runtime.ports import free_port

        self.root, self.requests = root, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool):
                owner.requests.append((self.command, self.path))
                name = self.path.split("?", 1)[0].lstrip("/")
                path = owner.root / name.removeprefix("signed/")
                if not path.is_file():
                    return self.send_error(404)
                if name.startswith("signed/") and self.command == "HEAD":
                    return self.send_error(403)
                data = path.read_bytes()
                ranged = self.headers.get("Range") == "bytes=0-0"
                self.send_response(206 if ranged else 200)
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Last-Modified", formatdate(path.stat().st_mtime, usegmt=True))
                if ranged:
                    self.send_header("Content-Range", f"bytes 0-0/{len(data)}")
                self.send_header("Content-Length", str(1 if ranged else len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data[:1] if ranged else data)

            def do_HEAD(self):  # noqa: N802 - http.server's names
                self._answer(body=False)

            def do_GET(self):  # noqa: N802
                self._answer(body=True)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    srv = _Server(tmp_path)
    yield srv
    srv.stop()


def test_http_input_has_etag_last_modified_and_size(server, tmp_path):
    path = tmp_path / "scene.tif"
    path.write_bytes(b"a" * 100)
    url = f"{server.url}/scene.tif"
    first = input_fingerprint(url)
    assert first == {"etag": hashlib.sha1(b"a" * 100).hexdigest(), "size": 100,
                     "last_modified": formatdate(path.stat().st_mtime, usegmt=True)}
    assert server.requests == [("HEAD", "/scene.tif")]  # one HEAD, no body read
    assert input_fingerprint("/vsicurl/" + url) == first  # GDAL's form: the same object
    _rewrite_keeping_size_and_mtime(path, b"b" * 100, rename=False)
    changed = input_fingerprint(url)
    assert changed["etag"] != first["etag"] and changed["size"] == 100
    path.write_bytes(b"c" * 150)
    assert input_fingerprint(url)["size"] == 150


def test_http_input_signed_for_get_only_is_asked_for_one_byte(server, tmp_path):
    (tmp_path / "scene.tif").write_bytes(b"z" * 70)
    got = http_fingerprint(f"{server.url}/signed/scene.tif?X-Amz-Signature=s3cr3t")
    assert got["size"] == 70 and got["etag"] == hashlib.sha1(b"z" * 70).hexdigest()
    assert [m for m, _ in server.requests] == ["HEAD", "GET"]


def test_http_input_without_an_answer_has_no_fingerprint(server, caplog):
    from jobs.runtime.ports import free_port

    caplog.set_level(logging.WARNING, logger="samsp.segment")
    assert input_fingerprint(f"{server.url}/gone.tif?X-Amz-Signature=s3cr3t") is None
    assert input_fingerprint(f"http://127.0.0.1:{free_port()}/x.tif?token=s3cr3t") is None
    assert input_fingerprint(f"http://user:s3cr3t@127.0.0.1:{server.port}/x.tif") is None
    assert len(caplog.records) == 3 and "s3cr3t" not in caplog.text  # logged, redacted
    assert "gone.tif" in caplog.text and "HTTPError" in caplog.text


# ----------------------------------------------------------------------------- stacked items

def _band_tif(path: Path, band: np.ndarray) -> str:
    """One single-band asset, uncompressed: other pixels give a file of the same size."""
    import rasterio
    from affine import Affine

    with rasterio.open(path, "w", driver="GTiff", height=band.shape[0], width=band.shape[1],
                       count=1, dtype=band.dtype, crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 4000000)) as dst:
        dst.write(band, 1)
    return str(path)


def test_stacked_item_fingerprint_follows_its_assets(tmp_path):
    from ingest.trust import InputPolicy
    from jobs.segmentation.stac_config import StacInputConfig
    from jobs.segmentation.stac_input import VRT_NAME, StacInput
    from tests.test_stac_input import _item

    rgb = np.random.default_rng(1).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    bands = {key: (_band_tif(tmp_path / f"{key}.tif", rgb[i]), common)
             for key, common, i in (("B04", "red", 0), ("B03", "green", 1), ("B02", "blue", 2))}
    hrefs = [bands[k][0] for k in ("B04", "B03", "B02")]
    when = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    srv = _Server(tmp_path)
    try:
        # an asset on a host the policy refuses (loopback): the item is no scene, and its
        # fingerprint requests nothing
        items = [_item("good", when, 15.0, bands),
                 _item("refused", when, 15.0, {**bands, "B02": (f"{srv.url}/B02.tif", "blue")})]
        for item in items:
            item.set_self_href(str(tmp_path / f"{item.id}.json"))
        cfg = StacInputConfig(source=str(tmp_path / "items.json"), assets=["red", "green", "blue"])
        stac = StacInput(cfg, str(tmp_path / "out"), items, None, policy=InputPolicy())
        inputs, _ = stac.add_scenes([], {}, {}, workers=2)
        vrt = str(tmp_path / "out" / "good" / VRT_NAME)
        assert vrt in inputs and len(inputs) == 2
        assert stac.fingerprint(next(u for u in inputs if u != vrt)) is None
        assert srv.requests == []
    finally:
        srv.stop()

    first = stac.fingerprint(vrt)
    assert [a["href"] for a in first["assets"]] == hrefs
    assert first == stacked_fingerprint(hrefs, "bilinear")
    assert all(a["input"] == input_fingerprint(a["href"]) for a in first["assets"])
    vrt_mtime = os.stat(vrt).st_mtime_ns
    other = Path(_band_tif(tmp_path / "other.tif", 255 - rgb[2]))
    _rewrite_keeping_size_and_mtime(Path(hrefs[2]), other.read_bytes(), rename=True)
    assert stac.fingerprint(vrt) != first  # one asset changed, not the VRT:
    assert os.stat(vrt).st_mtime_ns == vrt_mtime
    assert stac.fingerprint(vrt)["assets"][:2] == first["assets"][:2]
    assert stacked_fingerprint(hrefs, "nearest") != stacked_fingerprint(hrefs, "bilinear")


def test_stacked_fingerprint_names_assets_without_their_signature():
    seen = []
    got = stacked_fingerprint(["/vsicurl/https://h.example/b4.tif?X-Amz-Signature=s3cr3t&v=2"],
                              "bilinear", fingerprint=lambda h: seen.append(h) or {"etag": "e"})
    assert seen == ["/vsicurl/https://h.example/b4.tif?X-Amz-Signature=s3cr3t&v=2"]  # the real URL
    assert got == {"assets": [{"href": "/vsicurl/https://h.example/b4.tif?v=2",
                               "input": {"etag": "e"}}], "resampling": "bilinear"}


# ----------------------------------------------------------------------------- the job

@pytest.mark.slow
def test_segment_job_recomputes_a_scene_rewritten_with_its_mtime_put_back(tmp_path):
    """A done scene is skipped while its file is unchanged and recomputed once its content
    changed behind an unchanged size and mtime (the earlier version skipped it)."""
    from ingest.synthetic import make_geotiff
    from tests.test_segment import job_env, make_bundle, run_job

    src = tmp_path / "in"
    src.mkdir()
    scene = Path(make_geotiff(str(src / "a.tif"), 100, 120, seed=4))
    other = Path(make_geotiff(str(tmp_path / "b.tif"), 100, 120, seed=9))
    model = make_bundle(str(tmp_path / "micro"))
    env = job_env(SimpleNamespace(env=dict))
    out = str(tmp_path / "out")

    def run():
        res = run_job([str(scene)], out, model, env,
                      extra=["--set", "pipeline.engine=local", "--set", "predict.num_actors=1"])
        assert res.rc == 0, res.out[-3000:]
        return res, json.loads(res.out.strip().splitlines()[-1])

    tiles = run()[1]["tiles_computed"]
    again = run()[1]
    assert (again["skipped"], again["tiles_computed"]) == (1, 0)
    _rewrite_keeping_size_and_mtime(scene, other.read_bytes(), rename=False)
    res, summary = run()
    assert (summary["ok"], summary["tiles_computed"]) == (1, tiles) and tiles > 0, res.out[-3000:]
    assert "input (fingerprint)" in res.out
