"""The input trust policy and URI redaction (ingest/trust.py), at their edges."""
from __future__ import annotations

import pytest

from ingest.trust import (InputPolicy, UntrustedInputError, check_uri, redact_text, redact_uri,
                          resolve_href, uri_identity)

SIGNED = ("https://bucket.s3.amazonaws.com/scenes/a.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIAEXAMPLE%2F20261206%2Fus-east-1%2Fs3%2Faws4_request"
          "&X-Amz-Date=20261206T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
          "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE&X-Amz-Signature=abcdef0123456789&band=2")


def test_redact_drops_userinfo_and_signatures_keeps_the_rest():
    assert redact_uri("s3://KEY:SECRET@bucket/k.tif") == "s3://bucket/k.tif"
    assert redact_uri("https://user:pw@host:8443/x.tif") == "https://host:8443/x.tif"
    red = redact_uri(SIGNED)
    for secret in ("AKIAEXAMPLE", "FwoGZXIvYXdzEXAMPLE", "abcdef0123456789", "Signature",
                   "Credential", "Security-Token"):
        assert secret not in red
    assert red.startswith("https://bucket.s3.amazonaws.com/scenes/a.tif?") and "band=2" in red
    assert redact_uri("/vsicurl/" + SIGNED).startswith("/vsicurl/https://bucket")
    # plain paths and URIs pass through untouched
    for plain in ("/data/a.tif", "s3://b/k.tif", "relative/x.tif", "https://h/x.tif"):
        assert redact_uri(plain) == plain


def test_a_resigned_url_keeps_its_identity():
    again = SIGNED.replace("20261206T000000Z", "20261207T000000Z").replace("abcdef", "fedcba")
    assert uri_identity(SIGNED) == uri_identity(again)
    assert uri_identity(SIGNED) == "https://bucket.s3.amazonaws.com/scenes/a.tif?band=2"
    assert uri_identity(SIGNED.replace("a.tif", "b.tif")) != uri_identity(SIGNED)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/latest/meta-data/", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/x.tif", "http://10.0.0.5/x.tif", "http://localhost/x.tif",
    "/vsicurl/http://169.254.169.254/x.tif"])
def test_non_public_addresses_are_refused_unless_listed(url):
    with pytest.raises(UntrustedInputError, match="non-public address"):
        check_uri(url, InputPolicy())
    host = url.split("//", 2)[-1].split("/")[0].rsplit(":", 1)[0] if "[" not in url else "::1"
    listed = InputPolicy(hosts=(host.strip("[]"),))
    assert check_uri(url, listed) == url


def test_schemes_buckets_and_hosts_are_checked():
    with pytest.raises(UntrustedInputError, match="scheme 'ftp'"):
        check_uri("ftp://h/x.tif", InputPolicy())
    only = InputPolicy(s3=("good/prefix",))
    assert check_uri("s3://good/prefix/x.tif", only)
    assert check_uri("/vsis3/good/prefix/sub/x.tif", only)
    for bad in ("s3://good/prefixed/x.tif", "s3://other/prefix/x.tif"):
        with pytest.raises(UntrustedInputError, match="input.allow.s3"):
            check_uri(bad, only)
    with pytest.raises(UntrustedInputError, match="not in input.allow.hosts"):
        check_uri("https://evil.example/x.tif", InputPolicy(hosts=("data.example",)))
    # GDAL's other virtual file systems would reach hosts the checks never saw
    for vsi in ("/vsicurl_streaming/http://127.0.0.1:9/x.tif", "/vsicurl?url=http://10.0.0.5/x",
                "/vsizip//vsicurl/http://127.0.0.1/a.zip/x.tif", "/vsigs/bucket/x.tif"):
        with pytest.raises(UntrustedInputError, match="scheme 'vsi' is not allowed"):
            check_uri(vsi, InputPolicy())
    # an unresolvable public-looking host is not refused here: its read fails on its own
    assert check_uri("https://nonexistent.invalid/x.tif", InputPolicy())


def test_catalog_hrefs_stay_inside_the_catalog(tmp_path):
    cat = tmp_path / "cat"
    (cat / "items").mkdir(parents=True)
    catalog = str(cat / "items" / "a.json")
    assert resolve_href("./a.tif", catalog, InputPolicy()) == str(cat / "items" / "a.tif")
    for bad in ("../../../etc/passwd", "../x.tif", "/etc/passwd", "file:///etc/passwd"):
        with pytest.raises(UntrustedInputError):
            resolve_href(bad, catalog, InputPolicy())
    # a listed local root widens it
    assert resolve_href("/etc/hostname", catalog, InputPolicy(local_roots=("/etc",)))
    # a remote catalog may name neither local paths nor its own parent folders
    remote = "https://stac.example/cat/items/a.json"
    with pytest.raises(UntrustedInputError, match="remote catalog"):
        resolve_href("/etc/passwd", remote, InputPolicy())
    with pytest.raises(UntrustedInputError, match="leaves the catalog"):
        resolve_href("../../secret.tif", remote, InputPolicy())
    assert resolve_href("/etc/hostname", remote, InputPolicy(local_roots=("/etc",)))
    assert resolve_href("b.tif", remote, InputPolicy(hosts=("stac.example",))) == \
        "https://stac.example/cat/items/b.tif"
    # the operator's own inputs may be anywhere on disk
    assert check_uri("/etc/hostname", InputPolicy()) == "/etc/hostname"


def test_refusals_are_one_line_and_redacted():
    with pytest.raises(UntrustedInputError) as info:
        check_uri("http://KEY:SECRET@127.0.0.1/x.tif?X-Amz-Signature=zzz", InputPolicy())
    text = str(info.value)
    assert "\n" not in text and "SECRET" not in text and "zzz" not in text


def test_redact_text_finds_every_url_in_a_line():
    line = (f"scene a: reading {SIGNED} failed; retry s3://AKIA:SECRET@b/k.tif "
            f"or '/vsicurl/{SIGNED}' (see https://docs.example/x)")
    red = redact_text(line)
    assert "abcdef0123456789" not in red and "SECRET" not in red and "AKIA" not in red
    assert "s3://b/k.tif" in red and "https://docs.example/x" in red and red.startswith("scene a:")
    assert redact_text("no url here") == "no url here"
