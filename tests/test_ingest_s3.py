"""ingest against a real SeaweedFS S3 server: storage helpers, scenes, S3 error types."""
from __future__ import annotations

import os
import pickle
import uuid

import numpy as np
import pytest
from rasterio.windows import Window

import ingest
from ingest import storage, synthetic
from ingest.convert import scene_to_zarr

pytestmark = pytest.mark.s3


def _prefix(server) -> str:
    return f"s3://{server.bucket}/test-ingest-s3/{uuid.uuid4().hex[:10]}"


def test_gdal_env_translates_aws_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    opts = storage._gdal_options()
    assert opts["AWS_S3_ENDPOINT"] == "127.0.0.1:8333"
    assert opts["AWS_HTTPS"] == "NO" and opts["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in opts), "keys stay in os.environ"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example.org")
    opts = storage._gdal_options()
    assert opts["AWS_S3_ENDPOINT"] == "minio.example.org" and opts["AWS_HTTPS"] == "YES"
    with storage.gdal_env() as env:  # a real rasterio.Env accepts them
        assert not any("SECRET" in k or "ACCESS_KEY" in k for k in env.options)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert "AWS_S3_ENDPOINT" not in storage._gdal_options()


def test_gdal_env_region_of_the_aws_profile(monkeypatch, tmp_path):
    """Keys from the environment, no region variable: the profile's region in the AWS config
    file (what rasterio's boto3 session used to hand GDAL); a region variable wins, as in
    storage_options; without keys GDAL's own chain reads the file."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_DEFAULT_PROFILE", "AWS_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "aws_config"
    config.write_text("[default]\nregion = eu-west-3\n[profile other]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    assert storage._gdal_options()["AWS_REGION"] == "eu-west-3"
    monkeypatch.setenv("AWS_PROFILE", "other")
    assert storage.gdal_env().options["AWS_REGION"] == "ap-south-1"
    config.write_text("[profile other]\nregion = us-west-2\n")
    os.utime(config, ns=(0, 10**18))  # a new mtime even on coarse clocks
    assert storage._gdal_options()["AWS_REGION"] == "us-west-2"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "sa-east-1")
    assert storage._gdal_options()["AWS_REGION"] == "sa-east-1"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "ca-central-1")
    assert "AWS_REGION" not in storage._gdal_options()  # GDAL reads the variable itself
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert "AWS_REGION" not in storage._gdal_options()


def test_s3_window_reads_build_no_boto3_session(s3_env, local_cog, monkeypatch):
    """Reading windows of an S3 COG builds no rasterio AWSSession / boto3 session per read
    (rasterio's default Env builds one per Env when AWS keys are set, rasterio#3331: most of a
    window read's time), in the calling thread and in a thread pool (GDAL's config is per
    thread), and the pixels are the file's; the keys still come from the environment."""
    import boto3
    from rasterio import session as rio_session

    uri = _prefix(s3_env) + "/scene_cog.tif"
    storage.put_file(local_cog, uri)
    remote = ingest.open_scene(uri)
    local = ingest.open_scene(local_cog)
    made = []

    def spy(cls, name):
        real = cls.__init__

        def counting(self, *a, **kw):
            made.append(name)
            real(self, *a, **kw)

        monkeypatch.setattr(cls, "__init__", counting)

    spy(rio_session.AWSSession, "AWSSession")
    spy(boto3.session.Session, "boto3.Session")
    windows = [Window(c, r, 256, 256) for r in (0, 256, 400, 515) for c in (0, 256, 512, 700, 757)]
    assert len(windows) == 20
    got = [remote.read(w) for w in windows]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        got_threads = list(pool.map(remote.read, windows))
    assert made == [], f"{len(made)} sessions built for {2 * len(windows)} window reads: {made[:4]}"
    for w, (a, va), (t, vt) in zip(windows, got, got_threads):
        b, vb = local.read(w)
        assert np.array_equal(a, b) and np.array_equal(va, vb), w
        assert np.array_equal(t, b) and np.array_equal(vt, vb), w
    # the keys are read from os.environ when a file opens (a new object: GDAL caches what it
    # read of one it already opened)
    other = _prefix(s3_env) + "/other.tif"
    storage.put_file(local_cog, other)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ingest.S3AccessError) as info:
        ingest.open_scene(other)
    assert "not-the-secret" not in str(info.value)


def test_storage_options_from_env(s3_env):
    opts = storage.storage_options("s3://b/k")
    assert opts["key"] == s3_env.key and opts["secret"] == s3_env.secret
    assert opts["client_kwargs"]["endpoint_url"] == s3_env.endpoint
    assert storage.storage_options("/local/path") == {}


def test_s3fs_honours_aws_endpoint_url_env(s3_env):
    """Recent botocore reads AWS_ENDPOINT_URL itself; we still pass it explicitly."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert f"{s3_env.bucket}/.ready" in fs.ls(s3_env.bucket)


def test_storage_helpers_on_s3_and_local(s3_env, tmp_path):
    for root in (_prefix(s3_env), str(tmp_path / "store")):
        a = storage.join(root, "a.bin")
        storage.write_bytes(a, b"hello")
        storage.write_bytes(storage.join(root, "sub", "b.bin"), b"x")
        assert storage.exists(a) and storage.read_bytes(a) == b"hello"
        assert not storage.exists(storage.join(root, "nope"))
        listing = storage.listdir(root)
        assert a in listing and storage.join(root, "sub") in listing
        assert storage.glob(storage.join(root, "*.bin")) == [a]
        local = tmp_path / "payload.bin"
        local.write_bytes(b"payload")
        dst = storage.join(root, "put", "p.bin")
        storage.put_file(local, dst)
        assert storage.read_bytes(dst) == b"payload"
        storage.remove(root, recursive=True)
        assert not storage.exists(a)


@pytest.fixture(scope="module")
def local_cog(tmp_path_factory):
    path = tmp_path_factory.mktemp("s3src") / "scene_cog.tif"
    return synthetic.make_geotiff(str(path), 771, 1013, count=3, cog=True)


def test_open_cog_on_s3_matches_local(s3_env, local_cog):
    uri = _prefix(s3_env) + "/scene_cog.tif"
    storage.put_file(local_cog, uri)
    remote = ingest.open_scene(uri, require_crs=True)
    local = ingest.open_scene(local_cog)
    assert remote.crs == local.crs and remote.transform == local.transform
    assert remote.has_overviews
    for win in (Window(0, 0, 256, 256), Window(900, 700, 256, 256)):
        a, va = remote.read(win)
        b, vb = local.read(win)
        assert np.array_equal(a, b) and np.array_equal(va, vb)
    clone = pickle.loads(pickle.dumps(remote))  # Ray tasks get a pickled scene
    assert np.array_equal(clone.read(Window(10, 10, 64, 64))[0], local.read(Window(10, 10, 64, 64))[0])
    # the /vsis3/ spelling is accepted and normalised
    assert ingest.open_scene(storage.gdal_path(uri)).uri == uri


def test_open_zarr_on_s3(s3_env, local_cog):
    local = ingest.open_scene(local_cog)
    uri = scene_to_zarr(local, _prefix(s3_env) + "/scene.zarr", chunk=256)
    remote = ingest.open_scene(uri, require_crs=True)
    assert remote.crs == local.crs and remote.transform == local.transform
    win = Window(-16, 600, 300, 300)
    assert np.array_equal(remote.read(win)[0], local.read(win)[0])


def test_s3_missing_key_and_wrong_credentials(s3_env, local_cog, monkeypatch, tmp_path):
    prefix = _prefix(s3_env)
    with pytest.raises(ingest.MissingSceneError, match="no such S3 key"):
        ingest.open_scene(prefix + "/missing.tif")
    with pytest.raises(ingest.MissingSceneError, match="no such Zarr"):
        ingest.open_scene(prefix + "/missing.zarr")
    # objects that exist, read with a wrong secret
    tif = prefix + "/secret.tif"
    storage.put_file(local_cog, tif)
    zarr_uri = scene_to_zarr(ingest.open_scene(local_cog), prefix + "/secret.zarr", chunk=512)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    out = prefix + "/out/mask.zarr"
    for uri in (tif, zarr_uri):
        with pytest.raises(ingest.S3AccessError, match="S3 refused access") as info:
            scene = ingest.open_scene(uri)
            ingest.MaskWriter(out, like=scene, chunk=256)  # never reached
        assert "not-the-secret" not in str(info.value) and "\n" not in str(info.value)
        assert isinstance(info.value, PermissionError)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret)
    assert not storage.exists(out), "nothing written after a failed open"


def test_s3_corrupt_and_non_raster_objects(s3_env, tmp_path, local_cog):
    prefix = _prefix(s3_env)
    storage.write_bytes(prefix + "/notes.tif", b"plain text, not a raster\n")
    with pytest.raises(ingest.UnsupportedFormatError, match="not a raster"):
        ingest.open_scene(prefix + "/notes.tif")
    full = tmp_path / "plain.tif"
    synthetic.make_geotiff(str(full), 600, 600, count=3, tiled=False)
    blob = full.read_bytes()
    storage.write_bytes(prefix + "/cut.tif", blob[: len(blob) // 2])
    with pytest.raises(ingest.CorruptSceneError, match="truncated or corrupt"):
        ingest.open_scene(prefix + "/cut.tif")
