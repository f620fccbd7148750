"""Storage helpers: one way to reach local files and S3 from fsspec, zarr and GDAL.

Credentials and endpoint always come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``,
``AWS_REGION``), so the same code runs against AWS, MinIO or the SeaweedFS used in tests. When no
keys are in the environment, boto's normal chain (profiles, instance roles) applies.

* fsspec/s3fs: :func:`storage_options` passes the endpoint explicitly as
  ``client_kwargs.endpoint_url`` (recent botocore also reads ``AWS_ENDPOINT_URL`` itself; being
  explicit keeps older stacks working).
* GDAL: :func:`gdal_env` translates ``AWS_ENDPOINT_URL=http://host:port`` into
  ``AWS_S3_ENDPOINT=host:port``, ``AWS_HTTPS=NO`` and ``AWS_VIRTUAL_HOSTING=FALSE``; keys stay in
  the process environment where GDAL reads them (``rasterio.Env(AWS_ACCESS_KEY_ID=...)`` raises),
  and no boto3 session is built for them (see :func:`gdal_env`).
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ingest import s3_retry

# GDAL's block cache defaults to 5 % of RAM: reading every tile of a big scene would then grow
# RSS with the scene. Cap it unless the user chose a value -- once, for the process: set as a
# rasterio.Env option instead, every Env enter/exit resized (flushed) the cache, so overlapping
# tiles decoded their blocks again (measured: 2.7 s vs 0.52 s to read every tile of an 8192²
# COG) and decimated reads could fall back to the full resolution. 32 MB holds the two block
# rows a row of tiles touches in an 8192-wide RGB COG with 512 blocks (reads as fast as 64 MB,
# 30 MB less RSS per process; 16 MB was 2x slower); raise GDAL_CACHEMAX for wider scenes.
DEFAULT_GDAL_CACHEMAX_MB = 32
os.environ.setdefault("GDAL_CACHEMAX", str(DEFAULT_GDAL_CACHEMAX_MB))


#: The hidden temp files of atomic local writes (``write_bytes``, ``put_file``, COGs).
TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")

def is_s3(uri: str | os.PathLike) -> bool:
    """True for ``s3://bucket/key`` (and GDAL's ``/vsis3/bucket/key``)."""
    s = str(uri)
    return s.startswith("s3://") or s.startswith("/vsis3/")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    s = str(uri)
    if s.startswith("/vsis3/"):
        s = "s3://" + s[len("/vsis3/"):]
    parsed = urlparse(s)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def to_s3_uri(uri: str) -> str:
    bucket, key = split_s3(uri)
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def gdal_path(uri: str | os.PathLike) -> str:
    """Path GDAL opens: ``/vsis3/bucket/key`` for S3 (the form that also works for writes)."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return f"/vsis3/{bucket}/{key}"
    s = str(uri)
    if s.startswith("file://"):
        s = s[len("file://"):]
    return s


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI: the one path join of the project.

    Parts lose their outer slashes, so ``join(out, "/x/")`` stays under ``out`` as ``out/x``.
    """
    clean = [p.strip("/") for p in parts]
    if is_s3(uri):
        return posixpath.join(to_s3_uri(uri).rstrip("/"), *clean)
    return posixpath.join(str(uri), *clean)


def s3_endpoint_url() -> str | None:
    """The S3 endpoint from the AWS environment (``http://127.0.0.1:8333`` for a local server);
    None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def s3_credentials() -> dict[str, str]:
    """``{"key", "secret"[, "token"]}`` from the AWS environment; {} when no key pair is set
    (the client's default chain -- profile, instance role -- then applies)."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (key and secret):
        return {}
    token = os.environ.get("AWS_SESSION_TOKEN")
    return {"key": key, "secret": secret, **({"token": token} if token else {})}


def arrow_filesystem(uri: str):
    """``(path, pyarrow.fs.S3FileSystem)`` for an s3:// URI, from the same environment as
    :func:`storage_options` (pyarrow does not read ``AWS_ENDPOINT_URL`` itself). The filesystem
    pickles with its settings, so processes on other nodes reach the same store."""
    import pyarrow.fs as pafs  # only Ray Train's checkpoint storage needs pyarrow's S3 client

    path = uri[len("s3://"):].strip("/")
    kwargs: dict[str, Any] = {}
    creds = s3_credentials()
    if creds:
        kwargs.update(access_key=creds["key"], secret_key=creds["secret"],
                      session_token=creds.get("token"))
    region = s3_region()
    if region:
        kwargs["region"] = region
    endpoint = s3_endpoint_url()
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        if not host:
            scheme, host = "https", endpoint
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        kwargs.setdefault("region", "us-east-1")
    return path, pafs.S3FileSystem(**kwargs)


def storage_options(uri: str | None = None, *, listings_cache: bool = False) -> dict[str, Any]:
    """fsspec/s3fs/zarr ``storage_options`` from the AWS environment ({} for local paths).

    The listings cache is off by default: several processes write to the same prefixes and a
    cached listing would hide their chunks.
    """
    if uri is not None and not is_s3(uri):
        return {}
    opts: dict[str, Any] = dict(s3_credentials())
    if not opts and os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
        opts["anon"] = True
    client_kwargs: dict[str, Any] = {}
    endpoint = s3_endpoint_url()
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = s3_region()
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    opts["config_kwargs"] = s3_retry.botocore_config()  # ingest/s3_retry.py: one policy
    if not listings_cache:
        opts["use_listings_cache"] = False
    return opts


def fs_for(uri: str | os.PathLike):
    """``(filesystem, path)`` for a local path or an s3:// URI (path without the scheme)."""
    import fsspec

    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        fs = fsspec.filesystem("s3", **storage_options(str(uri)))
        return fs, f"{bucket}/{key}".rstrip("/")
    s = str(uri)
    if s.startswith("file://"):
        s = s[len("file://"):]
    return fsspec.filesystem("file"), os.path.abspath(s)


def _gdal_options(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        **s3_retry.gdal_config(),  # the same retries as s3fs/botocore (ingest/s3_retry.py)
        "CPL_VSIL_USE_TEMP_FILE_FOR_RANDOM_WRITE": "YES",
    }
    endpoint = s3_endpoint_url()
    if endpoint and "AWS_S3_ENDPOINT" not in os.environ:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        opts["AWS_S3_ENDPOINT"] = parsed.netloc + parsed.path.rstrip("/")
        opts["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        # Custom endpoints (MinIO, SeaweedFS, Ceph) use path-style addressing.
        opts["AWS_VIRTUAL_HOSTING"] = os.environ.get("AWS_VIRTUAL_HOSTING", "FALSE")
    region = s3_region() or _config_file_region()
    if region and "AWS_REGION" not in os.environ:
        opts["AWS_REGION"] = region
    if extra:
        opts.update(extra)
    return opts


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """``os.environ`` updated with ``values`` inside the block and restored after it (e.g. the
    credentials of an S3 server started at run time, for what starts or reads inside)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_config_region_cache: tuple[tuple, str | None] = ((), None)


def _config_file_region() -> str | None:
    """The region of the AWS profile in the AWS config file, where the keys come from the
    environment and no ``AWS_REGION``/``AWS_DEFAULT_REGION`` is set: what the boto3 session that
    rasterio's default Env built used to hand GDAL (GDAL itself only reads that file's region
    for the profile's own keys). Read again only when the file or the profile changes."""
    global _config_region_cache
    if not s3_credentials():
        return None  # GDAL's own chain (profile, instance role) applies, region included
    path = os.environ.get("AWS_CONFIG_FILE") or os.path.join(os.path.expanduser("~"), ".aws", "config")
    profile = os.environ.get("AWS_DEFAULT_PROFILE") or os.environ.get("AWS_PROFILE") or "default"
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return None
    key = (path, mtime, profile)
    if _config_region_cache[0] == key:
        return _config_region_cache[1]
    import configparser

    region = None
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
        for section in (f"profile {profile}", profile):
            if parser.has_option(section, "region"):
                region = parser.get(section, "region").strip() or None
                break
    except (configparser.Error, OSError, UnicodeDecodeError):
        region = None
    _config_region_cache = (key, region)
    return region


def gdal_env(**options: Any):
    """A ``rasterio.Env`` for GDAL /vsis3/ reads and writes from the AWS environment.

    Keys/secrets are *not* passed as Env options (rasterio refuses them there); GDAL reads them
    from ``os.environ``. Extra GDAL config options may be given as keyword arguments; ``.options``
    holds the GDAL options (never a key), e.g. for pyogrio's GDAL.

    Cheap enough to enter around every window read (~0.1 ms): the Env gets a
    ``DummySession``. rasterio's default session would build a boto3 session on every Env
    whenever ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` are set (rasterio >= 1.4.1,
    rasterio#3331: 5-10 ms, most of a 256-px window read from S3) only to copy those same keys
    from ``os.environ`` into GDAL's config. GDAL reads ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_NO_SIGN_REQUEST`` and ``AWS_PROFILE``
    from the process environment itself, when it opens a file (so :func:`environ` blocks still
    apply), exactly as it already did without keys in the environment; the region comes from
    :func:`_gdal_options`. GDAL's config is per thread: every thread enters its own Env.
    """
    import rasterio
    from rasterio.session import DummySession

    return rasterio.Env(session=DummySession(), **_gdal_options(options))


# ---------------------------------------------------------------- small file operations


def exists(uri: str | os.PathLike) -> bool:
    fs, path = fs_for(uri)
    return bool(fs.exists(path))


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = fs_for(uri)
    with s3_retry.naming(str(uri)), fs.open(path, "rb") as f:
        return f.read()


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole object atomically (local: temp file + rename; S3: a single PUT)."""
    write_many({os.fspath(uri): data})


def write_many(items: dict[str, bytes]) -> None:
    """Write many whole objects, each atomically (local: temp file + rename per file; S3: one
    PUT per object, issued concurrently)."""
    if not items:
        return
    first = next(iter(items))
    if is_s3(first):
        fs, _ = fs_for(first)
        with s3_retry.naming(first if len(items) == 1 else f"{first} (+{len(items) - 1} more)"):
            fs.pipe({fs_for(uri)[1]: data for uri, data in items.items()})
        return
    made: set[str] = set()
    for uri, data in items.items():
        path = gdal_path(uri)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        tmp = f"{parent}/.{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def check_writable(uri: str) -> None:
    """Write and delete a small probe object under ``uri`` (local folder or s3:// prefix):
    OSError/PermissionError here, before any work, instead of a failure halfway through."""
    probe = join(uri, f".samsp-write-probe-{uuid.uuid4().hex[:8]}")
    write_bytes(probe, b"probe")
    fs, path = fs_for(probe)
    fs.rm(path)


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete the temp files a killed writer left in a local ``folder`` (``.NAME.tmp-XXXXXXXX``,
    never visible under NAME). Call only while holding the folder's lease: a live writer's temp
    file would be deleted too. S3 writes are single PUTs and leave none."""
    if is_s3(folder) or not os.path.isdir(gdal_path(folder)):
        return []
    root = gdal_path(folder)
    gone = []
    for name in os.listdir(root):
        if TEMP_NAME.match(name):
            try:
                os.unlink(os.path.join(root, name))
                gone.append(name)
            except OSError:
                pass
    return gone


def read_many(uris: list[str]) -> dict[str, bytes | None]:
    """Whole objects by URI (None where there is no such object); S3 fetches run concurrently."""
    if not uris:
        return {}
    if is_s3(uris[0]):
        fs, _ = fs_for(uris[0])
        paths = {fs_for(u)[1]: u for u in uris}
        got = fs.cat(list(paths), on_error="return")
        out: dict[str, bytes | None] = {}
        for path, uri in paths.items():
            value = got.get(path)
            if isinstance(value, FileNotFoundError) or value is None:
                out[uri] = None
            elif isinstance(value, BaseException):
                raise s3_retry.S3Failure(s3_retry.describe(uri, value)) from value
            else:
                out[uri] = value
        return out
    out = {}
    for uri in uris:
        try:
            with open(gdal_path(uri), "rb") as f:
                out[uri] = f.read()
        except FileNotFoundError:
            out[uri] = None
    return out


def put_file(local_path: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Move/upload a finished local file to ``uri`` without a half-written file being visible.

    Local: copy next to the destination under a hidden temp name, then ``os.replace``.
    S3: an object only appears once its (multipart) upload completes.
    """
    if is_s3(uri):
        fs, path = fs_for(uri)
        with s3_retry.naming(str(uri)):
            fs.put_file(str(local_path), path)
        return
    dst = Path(gdal_path(uri))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        try:
            os.link(local_path, tmp)  # same filesystem: no copy
        except OSError:
            import shutil

            shutil.copyfile(local_path, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def listdir(uri: str | os.PathLike) -> list[str]:
    """Entries directly under ``uri`` as full URIs/paths, sorted."""
    fs, path = fs_for(uri)
    names = fs.ls(path, detail=False)
    return sorted(_as_uri(uri, n) for n in names if n.rstrip("/") != path.rstrip("/"))


def glob(pattern: str) -> list[str]:
    """Glob a local or s3:// pattern; returns full URIs/paths, sorted."""
    fs, path = fs_for(pattern)
    return sorted(_as_uri(pattern, n) for n in fs.glob(path))


def remove(uri: str | os.PathLike, recursive: bool = False) -> None:
    fs, path = fs_for(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def _as_uri(like: str | os.PathLike, path: str) -> str:
    return f"s3://{path}" if is_s3(like) else path


def local_tempdir(prefix: str = "samsp-ingest-", dir: str | None = None) -> str:
    """A temp directory for intermediates (``SAMSP_TMPDIR`` overrides the system default)."""
    return tempfile.mkdtemp(prefix=prefix, dir=dir or os.environ.get("SAMSP_TMPDIR"))


__all__ = [
    "is_s3", "split_s3", "gdal_path", "join", "storage_options", "fs_for", "gdal_env",
    "exists", "read_bytes", "write_bytes", "put_file", "listdir", "glob", "remove",
    "local_tempdir",
]
