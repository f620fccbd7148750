"""What an input may point at, and what of a URI may be written down.

Inputs named on the command line are the operator's own; hrefs found in a STAC catalog are not:
a catalog can name an absolute local path, a ``../../..`` path outside itself, an instance
metadata endpoint or a VRT that reads a private file. :class:`InputPolicy` says which schemes,
S3 buckets/prefixes, http(s) hosts and local roots an input may reach; :func:`check_uri` applies
it to a URI, :func:`resolve_href` to an href read from a catalog (relative hrefs must stay
inside the catalog's own folder). Hosts that resolve to loopback, link-local, private or other
non-public addresses are refused unless listed by name (tests list ``127.0.0.1``).

:func:`redact_uri` is the one place that decides what of a URI is written to a log or an
output: no userinfo (``s3://KEY:SECRET@bucket``) and no signature or credential query
parameters (presigned S3/GCS/Azure URLs). :func:`uri_identity` is what names a scene: the
redacted URI without the volatile query parameters a re-signed URL changes every night.

An input may also be an in-memory VRT -- the VRT XML itself as GDAL's dataset name -- when the
hrefs it stacks are signed (``ingest.stac.assets.item_scene_uri``): such an input is written
down as the file its XML names (:func:`vrt_name_element`), never as the XML.
"""
from __future__ import annotations

import ipaddress
import os
import posixpath
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .errors import SceneError
from .redact import (has_secret, in_memory_vrt_name, is_in_memory_vrt, redact_text,  # noqa: F401
                     redact_uri, uri_identity, vrt_name_element)

# GDAL raster drivers an href from a catalog may open as: plain raster formats only. VRT and the
# XML family can name other files (and so read anything the worker can reach).
REMOTE_DRIVERS = ("GTiff", "COG", "PNG", "JPEG", "JP2OpenJPEG", "WEBP", "Zarr", "netCDF", "HDF5")


class UntrustedInputError(SceneError):
    """The input points somewhere the input policy does not allow."""


@dataclass(frozen=True)
class InputPolicy:
    """Where inputs may come from. An empty tuple means "any" for ``s3`` and ``hosts``; local
    paths are allowed anywhere for inputs given by the operator, and for catalog hrefs only
    inside the catalog's folder or a listed ``local_roots`` entry."""

    schemes: tuple[str, ...] = ("file", "s3", "http", "https")
    s3: tuple[str, ...] = ()            # "bucket" or "bucket/prefix"
    hosts: tuple[str, ...] = ()         # "host" or "host:port"; listed hosts skip address checks
    local_roots: tuple[str, ...] = ()   # folders catalog hrefs may name

    def allows_scheme(self, scheme: str) -> bool:
        return scheme in self.schemes


def split_scheme(uri: str) -> tuple[str, str]:
    """``("s3", "bucket/key")``, ``("https", "host/path")``, ``("file", "/abs/path")``; GDAL's
    ``/vsis3/`` and ``/vsicurl/`` prefixes are read as the schemes they stand for, every other
    ``/vsi...`` prefix as the scheme ``vsi`` (no policy allows it)."""
    if uri.startswith("/vsis3/"):
        return "s3", uri[len("/vsis3/"):]
    if uri.startswith("/vsicurl/"):
        return split_scheme(uri[len("/vsicurl/"):])
    if uri.startswith("/vsi"):
        # any other GDAL virtual file system (/vsicurl_streaming/, /vsicurl?url=, /vsizip/
        # around a URL, /vsigs/, ...) reads what a plain path would not: never a "file"
        return "vsi", uri
    parts = urlsplit(uri)
    if parts.scheme and len(parts.scheme) > 1:  # "C:" is a drive, not a scheme
        return parts.scheme.lower(), uri.split("://", 1)[-1]
    return "file", uri


def check_uri(uri: str, policy: InputPolicy, *, catalog: str | None = None) -> str:
    """``uri`` when the policy allows it, else :class:`UntrustedInputError` (one line, the URI
    redacted). ``catalog``: the URI of the catalog the href came from (None: an operator's
    input), which makes local paths outside the catalog's folder and ``local_roots`` refused."""
    scheme, rest = split_scheme(uri)
    shown = redact_uri(uri)
    if not policy.allows_scheme(scheme):
        raise UntrustedInputError(f"{shown}: scheme {scheme!r} is not allowed "
                                  f"(input.allow.schemes: {', '.join(policy.schemes)})")
    if scheme == "s3":
        _check_s3(rest, policy, shown)
    elif scheme in ("http", "https"):
        _check_host(uri.split("/vsicurl/", 1)[-1], policy, shown)
    elif scheme == "file" and catalog is not None:
        _check_local(rest, catalog, policy, shown)
    return uri


def _check_s3(rest: str, policy: InputPolicy, shown: str) -> None:
    if not policy.s3:
        return
    path = rest.strip("/")
    if not any(path == p.strip("/") or path.startswith(p.strip("/") + "/") for p in policy.s3):
        raise UntrustedInputError(f"{shown}: S3 location not in input.allow.s3")


def _check_host(url: str, policy: InputPolicy, shown: str) -> None:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    named = {h.lower() for h in policy.hosts}
    if host in named or (parts.port and f"{host}:{parts.port}" in named):
        return
    if policy.hosts:
        raise UntrustedInputError(f"{shown}: host {host!r} not in input.allow.hosts")
    for address in resolve_host(host):
        if not address.is_global:
            raise UntrustedInputError(
                f"{shown}: host {host!r} is a non-public address ({address}); "
                f"list it in input.allow.hosts to allow it")


def resolve_host(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` resolves to (a literal address is itself); [] when it does not
    resolve (the read then fails on its own, with its own error)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def _check_local(path: str, catalog: str, policy: InputPolicy, shown: str) -> None:
    cat_scheme, cat_rest = split_scheme(catalog)
    real = os.path.realpath(path)
    roots = [os.path.realpath(r) for r in policy.local_roots]
    if cat_scheme == "file":
        roots.append(os.path.dirname(os.path.realpath(cat_rest)))
    if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        return
    if cat_scheme != "file":
        raise UntrustedInputError(f"{shown}: a remote catalog may not name a local path "
                                  f"(outside input.allow.local_roots)")
    raise UntrustedInputError(f"{shown}: local path outside the catalog's folder "
                              f"and input.allow.local_roots")


def resolve_href(href: str, catalog: str, policy: InputPolicy) -> str:
    """An href read from the catalog at ``catalog``, made absolute against it and checked.

    A relative href must stay inside the catalog's folder (``../`` out of it is refused) and
    takes the catalog's scheme; an absolute one is checked as it is."""
    scheme, _ = split_scheme(href)
    if scheme == "file" and not href.startswith(("/", "file://")) and "://" not in href:
        base = catalog.rsplit("/", 1)[0] if "/" in catalog else "."
        joined = posixpath.normpath(posixpath.join(_path_part(base), href))
        if not (joined + "/").startswith(_path_part(base).rstrip("/") + "/"):
            raise UntrustedInputError(f"{redact_uri(href)}: relative href leaves the catalog's "
                                      f"folder")
        href = _with_path(base, joined)
    elif href.startswith("file://"):
        href = href[len("file://"):]
    return check_uri(href, policy, catalog=catalog)


def _path_part(uri: str) -> str:
    parts = urlsplit(uri)
    return parts.path if parts.scheme and len(parts.scheme) > 1 else uri


def _with_path(base: str, path: str) -> str:
    parts = urlsplit(base)
    if parts.scheme and len(parts.scheme) > 1:
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return path


__all__ = ["InputPolicy", "UntrustedInputError", "REMOTE_DRIVERS", "check_uri", "resolve_href",
           "redact_uri", "redact_text", "uri_identity", "resolve_host", "split_scheme",
           "has_secret", "is_in_memory_vrt", "vrt_name_element", "in_memory_vrt_name"]
