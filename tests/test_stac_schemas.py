"""The segmentation job's STAC output validates against the STAC JSON schemas (issue 33), offline.

Every ``item.json`` and the ``collection.json`` of a real job run (the local engine, as in
tests/test_stac_output.py), plus items of the cases that run does not produce (no CRS, a CRS with
no exact code, a source item), are checked against the core schema of their type and the schema
of every extension they declare -- what stac-validator does -- with jsonschema and with pystac's
own validator (what ``Item.validate()`` runs). The schemas are the copies under
tests/fixtures/stac_schemas/ (see its README): nothing is downloaded, and a declared schema with
no copy is an error.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import numpy as np
import pystac
import pytest
from affine import Affine
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match
from pystac.validation import JsonSchemaSTACValidator, validate_dict
from rasterio.crs import CRS
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from tests.test_stac_output import bundle, results  # noqa: F401 - module fixtures: the job run

SCHEMAS = Path(__file__).resolve().parent / "fixtures" / "stac_schemas"
CORE = {"Feature": "item", "Collection": "collection", "Catalog": "catalog"}
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
UTC = dt.timezone.utc


def local_copy(uri: str) -> Path:
    """``https://host/path#frag`` -> ``tests/fixtures/stac_schemas/host/path``."""
    url = urlsplit(urldefrag(uri).url)
    return SCHEMAS / url.netloc / url.path.lstrip("/")


def load_schema(uri: str) -> dict:
    path = local_copy(uri)
    if not path.is_file():  # never fall back to the network: name what is missing instead
        raise LookupError(f"no offline copy of {uri} (expected {path.relative_to(SCHEMAS.parent)})")
    return json.loads(path.read_text())


def _retrieve(uri: str) -> Resource:
    try:
        return Resource.from_contents(load_schema(uri))
    except LookupError as err:
        raise NoSuchResource(ref=uri) from err


REGISTRY = Registry(retrieve=_retrieve)


def schema_uris(doc: dict) -> list[str]:
    """The core schema of the document's type and version, then every declared extension."""
    kind = CORE[doc["type"]]
    core = (f"https://schemas.stacspec.org/v{doc['stac_version']}/{kind}-spec/json-schema/"
            f"{kind}.json")
    return [core, *doc.get("stac_extensions", [])]


def schema_errors(doc: dict) -> list[str]:
    """One line per violation (empty: valid); a schema with no offline copy is one too."""
    errors = []
    for uri in schema_uris(doc):
        try:
            validator = Draft7Validator(load_schema(uri), registry=REGISTRY,
                                        format_checker=Draft7Validator.FORMAT_CHECKER)
            found = list(validator.iter_errors(doc))
        except (LookupError, NoSuchResource) as err:
            errors.append(f"{uri}: {err}")
            continue
        for err in found:  # best_match descends anyOf/oneOf to the branch that nearly fit
            detail = best_match([err])
            where = "/".join(map(str, detail.absolute_path)) or "<root>"
            errors.append(f"{uri}: {where}: {detail.message[:300]}")
    return errors


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's validator reading schemas from the local copies only (its default fetches any
    schema outside the core over HTTP)."""

    def _get_schema(self, schema_uri: str) -> dict:
        return self.schema_cache.setdefault(schema_uri, load_schema(schema_uri))


def assert_valid(path: Path) -> dict:
    doc = json.loads(path.read_text())
    errors = schema_errors(doc)
    assert not errors, f"{path}:\n" + "\n".join(errors)
    validate_dict(doc, href=str(path), validator=OfflineValidator())  # raises when invalid
    return doc


def test_schema_copies_are_complete_and_where_their_id_says():
    """Every ``$ref`` between the copies resolves to a copy (validation can never need the
    network), and each copy's ``$id`` is the URL it stands for."""
    for path in sorted(SCHEMAS.rglob("*.json")):
        schema = json.loads(path.read_text())
        schema_id = schema.get("$id", "")
        if "json-schema/common" not in schema_id:  # stac-spec 1.1.0's common.json says "commonjson"
            assert local_copy(schema_id) == path, (path, schema_id)
        base = f"https://{path.relative_to(SCHEMAS).as_posix()}"
        for ref in _refs(schema):
            target = urldefrag(urljoin(schema_id or base, ref)).url
            if target and not target.startswith("http://json-schema.org/"):  # jsonschema has these
                assert local_copy(target).is_file(), f"{path.name}: {ref} -> {target}"


def _refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str) and not node["$ref"].startswith("#"):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_job_items_and_collection_validate(results):  # noqa: F811 - the imported fixture
    collection = assert_valid(results.out / "collection.json")
    items = [assert_valid(results.out / sid / "item.json") for sid in results.inputs]
    assert collection["type"] == "Collection" and len(items) == 2
    # the collection declares the processing extension because its items use it; the field
    # the extension's schema then asks of a collection is the items' software, summarised
    assert PROCESSING in collection["stac_extensions"]
    softwares = collection["summaries"]["processing:software"]
    assert all(it["properties"]["processing:software"] in softwares for it in items)
    assert softwares[0]["samsp"] and softwares[0]["torch"]


def test_collection_declaring_processing_without_a_field_is_caught():
    """What issue 33 reported: the checker must see it (else a pass above means nothing)."""
    doc = pystac.Collection("c", "d", pystac.Extent(
        pystac.SpatialExtent([[0.0, 0.0, 1.0, 1.0]]),
        pystac.TemporalExtent([[dt.datetime(2026, 1, 1, tzinfo=UTC), None]]))).to_dict(
        include_self_link=False)
    doc["stac_extensions"] = [PROCESSING]
    assert any(e.startswith(PROCESSING) for e in schema_errors(doc))
    with pytest.raises(pystac.errors.STACValidationError):
        validate_dict(doc, validator=OfflineValidator())
    doc["stac_extensions"] = ["https://stac-extensions.github.io/nope/v9.9.9/schema.json"]
    assert any("no offline copy" in e for e in schema_errors(doc))


def _scene(tmp: Path, sid: str, crs, transform: Affine, source=None):
    from ingest import MaskWriter
    from ingest.stac.catalog import write_item
    from ingest.stac.items import SceneResult, result_item

    writer = MaskWriter(str(tmp / sid / "mask.zarr"), height=32, width=32, crs=crs,
                        transform=transform, chunk=16)
    for win in writer.chunk_windows():
        writer.write(win, prob=np.zeros((16, 16), np.float32), mask=np.zeros((16, 16), np.uint8))
    writer.to_cog(tmp / sid / "mask.tif")
    write_item(result_item(SceneResult(
        id=sid, out_dir=str(tmp / sid), height=32, width=32,
        crs=CRS.from_user_input(crs) if crs else None, transform=transform,
        outputs=("mask.zarr", "mask.tif"), run_datetime=dt.datetime(2026, 1, 2, tzinfo=UTC),
        software={"samsp": "0.1.0", "torch": "2.9"}, source=source)))


def test_items_the_job_run_does_not_cover_validate(tmp_path):
    """No CRS (null geometry), a CRS with no exact code (``proj:wkt2``), a source item with a
    datetime interval (``derived_from``); the catalog over them still validates."""
    from ingest.stac.items import SourceItem
    from ingest.stac.catalog import publish_catalog

    _scene(tmp_path, "plain", None, Affine.identity())
    _scene(tmp_path, "wkt", "+proj=utm +zone=18 +ellps=intl +towgs84=-87,-98,-121,0,0,0,0 "
           "+units=m", Affine(10, 0, 300000, 0, -10, 500000))
    _scene(tmp_path, "sourced", "EPSG:32633", Affine(10, 0, 500000, 0, -10, 4000000),
           SourceItem(href="https://stac.example/collections/s2/items/a", collection="s2",
                      start_datetime=dt.datetime(2026, 5, 1, tzinfo=UTC),
                      end_datetime=dt.datetime(2026, 5, 2, tzinfo=UTC)))
    publish_catalog(str(tmp_path), "cases")
    docs = {sid: assert_valid(tmp_path / sid / "item.json") for sid in ("plain", "wkt", "sourced")}
    assert docs["plain"]["geometry"] is None and docs["wkt"]["properties"].get("proj:code") is None
    collection = assert_valid(tmp_path / "collection.json")
    assert collection["summaries"]["processing:software"] == [{"samsp": "0.1.0", "torch": "2.9"}]


def test_collection_without_processing_values_drops_the_declaration():
    from ingest.stac.catalog import summarize_processing

    collection = pystac.Collection("c", "d", pystac.Extent(
        pystac.SpatialExtent([[0.0, 0.0, 1.0, 1.0]]),
        pystac.TemporalExtent([[dt.datetime(2026, 1, 1, tzinfo=UTC), None]])))
    collection.stac_extensions.append(PROCESSING)
    item = pystac.Item("i", None, None, dt.datetime(2026, 1, 1, tzinfo=UTC), {})
    summarize_processing(collection, [item])
    assert PROCESSING not in collection.stac_extensions
    assert not schema_errors(collection.to_dict(include_self_link=False))
