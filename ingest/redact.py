"""What of a URI may be written down: the one place that decides it (``ingest.trust`` re-exports
these for the callers that check inputs too; ``ingest.errors`` uses them so that no error
message carries a secret).

:func:`redact_uri`: no userinfo (``s3://KEY:SECRET@bucket``) and no signature or credential query
parameters (presigned S3/GCS/Azure URLs). :func:`uri_identity` is what names a scene: the
redacted URI without the volatile query parameters a re-signed URL changes every night. An input
may also be an in-memory VRT -- the VRT XML itself as GDAL's dataset name -- when the hrefs it
stacks are signed (``ingest.stac.assets.item_scene_uri``): it is written down as the file its
XML names (:func:`vrt_name_element`), never as the XML. No imports from the rest of ``ingest``.
"""
from __future__ import annotations

import re
from html import unescape
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

# Query parameters that carry a secret (signature, credential, token) in presigned URLs.
SECRET_PARAMS = frozenset(p.lower() for p in (
    "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "AWSAccessKeyId",
    "x-amz-security-token", "X-Goog-Signature", "X-Goog-Credential", "GoogleAccessId", "sig",
    "token", "access_token", "api_key", "apikey", "key", "password", "secret"))
# Query parameters that change when the same object is signed again (not part of its identity).
VOLATILE_PARAMS = SECRET_PARAMS | frozenset(p.lower() for p in (
    "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Algorithm", "Expires",
    "X-Goog-Date", "X-Goog-Expires", "X-Goog-SignedHeaders", "X-Goog-Algorithm", "se", "st",
    "sp", "sv", "sr", "spr", "skoid", "sktid", "skt", "ske", "sks", "skv"))

def redact_uri(uri: str) -> str:
    """``uri`` as it may be logged or stored: without userinfo and without secret query
    parameters (their names are kept out too, so a log shows nothing was signed); an in-memory
    VRT as the name its XML gives (:func:`in_memory_vrt_name`)."""
    if isinstance(uri, str) and is_in_memory_vrt(uri):
        return in_memory_vrt_name(uri)
    if not isinstance(uri, str) or ("@" not in uri and "?" not in uri):
        return uri
    if uri.startswith("/vsis3/"):  # GDAL's form of s3://KEY:SECRET@bucket/key: no scheme
        bucket, sep, key = uri[len("/vsis3/"):].partition("/")
        return "/vsis3/" + bucket.rsplit("@", 1)[-1] + sep + key
    prefix = ""
    for vsi in ("/vsicurl/", "/vsis3/"):
        if uri.startswith(vsi):
            prefix, uri = vsi, uri[len(vsi):]
    parts = urlsplit(uri)
    if not (parts.scheme and len(parts.scheme) > 1):
        return prefix + uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in SECRET_PARAMS])
    return prefix + urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_secret(uri: str) -> bool:
    """Whether :func:`redact_uri` takes something out of ``uri``: userinfo or a secret query
    parameter (a query it only re-encodes is no secret)."""
    if not isinstance(uri, str) or ("@" not in uri and "?" not in uri):
        return False
    if uri.startswith("/vsis3/"):
        return "@" in uri[len("/vsis3/"):].split("/", 1)[0]
    parts = urlsplit(uri.removeprefix("/vsicurl/"))
    if not (parts.scheme and len(parts.scheme) > 1):
        return False
    return "@" in parts.netloc or any(k.lower() in SECRET_PARAMS for k, _ in
                                      parse_qsl(parts.query, keep_blank_values=True))


# --------------------------------------------------------------------------- in-memory VRTs
# GDAL opens a VRT's XML given as the dataset name, so a VRT whose hrefs are signed can travel
# with the scene (driver memory, Ray rows) instead of being written where outputs are published.
# Its XML names the file standing for it in outputs and logs (the VRT with its hrefs redacted),
# in a metadata item GDAL reads as plain dataset metadata.
VRT_NAME_ITEM = '<Metadata domain="samsp"><MDI key="written_as">{}</MDI></Metadata>'
_VRT_NAME = re.compile(r'<Metadata domain="samsp"><MDI key="written_as">([^<]*)</MDI>')
#: a VRT's XML in a text, to its end or to the end of the text (a message cut short)
VRT_IN_TEXT = re.compile(r"<VRTDataset\b.*?(?:</VRTDataset>|\Z)", re.S)
UNNAMED_VRT = "in-memory VRT"


def is_in_memory_vrt(uri: str) -> bool:
    """Whether ``uri`` is a VRT's XML (what GDAL opens as such: it starts with the element)."""
    return uri.lstrip().startswith("<VRTDataset")


def vrt_name_element(name: str) -> str:
    """The element an in-memory VRT carries to be written down as ``name`` (XML-escaped)."""
    return VRT_NAME_ITEM.format(escape(name))


def in_memory_vrt_name(xml: str) -> str:
    """What stands for an in-memory VRT in a log or an output: the name its XML carries, else
    (a VRT from elsewhere, or XML cut before the name) a fixed word -- never the XML."""
    found = _VRT_NAME.search(xml)
    return redact_uri(unescape(found.group(1))) if found else UNNAMED_VRT


URL_IN_TEXT = re.compile(r"(?:/vsi(?:curl|s3)/)?[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+"
                         r"|/vsis3/[^\s'\"<>]+")


def redact_text(text: str) -> str:
    """Every URL in ``text`` (a log line, an error message) passed through :func:`redact_uri`,
    and every in-memory VRT's XML replaced by its name (first: its hrefs are XML-escaped)."""
    if "<VRTDataset" in text:
        text = VRT_IN_TEXT.sub(lambda m: in_memory_vrt_name(m.group(0)), text)
    if "://" not in text and "/vsis3/" not in text:
        return text
    return URL_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


def uri_identity(uri: str) -> str:
    """What names an input across runs: :func:`redact_uri` without volatile query parameters,
    so the same object signed again tomorrow is the same scene."""
    clean = redact_uri(uri)
    if "?" not in clean:
        return clean
    parts = urlsplit(clean)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in VOLATILE_PARAMS])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


__all__ = ["SECRET_PARAMS", "VOLATILE_PARAMS", "redact_uri", "redact_text", "uri_identity",
           "has_secret", "is_in_memory_vrt", "vrt_name_element", "in_memory_vrt_name"]
