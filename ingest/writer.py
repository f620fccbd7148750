"""Chunk-aligned, georeferenced mask output: a Zarr v3 store, then a COG.

Store layout (``<uri>`` is a local directory or ``s3://bucket/prefix.zarr``)::

    zarr.json            group (Zarr v3; ``zarr_format=2`` for GDAL < 3.11); attrs["samsp"] = {height, width, chunk, nodata, prob_encoding, ...}
    prob/                uint8 [y, x], chunk = core size; 0..254 = round(p * 254), 255 = nodata;
                         CF scale_factor 1/254, add_offset 0, _FillValue 255 (xarray decodes p, NaN)
    mask/                uint8 [y, x], chunk = core size; 0/1, 255 = nodata (CF _FillValue, flags)
    _samsp/written/      uint8 [chunk_row, chunk_col], 1x1 chunks: 1 once a chunk's data is stored
                         (a sub-group: xarray lists no sub-group's arrays as data variables)
    spatial_ref, x, y    CF georeferencing (see ``ingest.georef``), read by rioxarray and GDAL

Stores made before format version 3 keep their markers in a top-level ``written/`` array; they are
read and resumed as they are (``attrs["samsp"]["markers"]`` names the array, absent = ``written``).
:meth:`MaskWriter.finish` (run when every chunk is written) brings the data arrays' CF attributes
up to date and consolidates the metadata, so ``xr.open_zarr(uri, decode_coords="all")`` opens the
store in one read, with no warning, as probabilities and with the scene CRS and transform.

Each core window of a :class:`ingest.TileGrid` with ``tile - overlap == chunk`` is exactly one
chunk (edge chunks are partial), so any number of processes can ``write`` different tiles with no
coordination: every chunk is its own object/file (local writes are atomic renames, S3 PUTs are
atomic). The ``written`` marker is stored *after* the data chunks, so ``written_windows()`` (one
listing) never reports a chunk whose data is missing -- that is what a rerun skips.

Unwritten data reads as the fill value 255 (= nodata): holes are detectable and render as nodata.
The probability code keeps 255 free for nodata: ``prob_to_u8(p) = round(clip(p, 0, 1) * 254)``.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Iterator

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from . import storage
from .cog import NODATA, write_cog
from .errors import IncompleteMaskError, WriterError
from .georef import (crs_to_wkt, data_array_attrs, transform_from_gdal, transform_to_gdal,
                     write_georef)
from .tiling import TileGrid, window_bounds

PROB_SCALE = 254
ARRAYS = ("prob", "mask")
# 2: attrs["samsp"]["ready"] is written last (atomic creation); 3: markers in a sub-group
_FORMAT_VERSION = 3
READY_KEY = "ready"
MARKERS = "_samsp/written"       # where this version keeps the chunk markers
LEGACY_MARKERS = "written"       # where versions 1 and 2 kept them (a top-level array)


def prob_to_u8(prob: np.ndarray) -> np.ndarray:
    """Float probability in [0, 1] -> uint8 0..254 (255 stays free for nodata); NaN -> 255."""
    p = np.asarray(prob, dtype=np.float32)
    out = np.rint(np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0) * PROB_SCALE).astype(np.uint8)
    if np.isnan(p).any():
        out[np.isnan(p)] = NODATA
    return out


def u8_to_prob(code: np.ndarray) -> np.ndarray:
    """uint8 probability code -> float32 in [0, 1]; nodata (255) -> NaN."""
    c = np.asarray(code)
    out = c.astype(np.float32) / PROB_SCALE
    out[c == NODATA] = np.nan
    return out


def cf_attrs(name: str) -> dict:
    """CF attributes that make xarray decode array ``name`` to what it means, not to its code.

    ``prob``: ``code * scale_factor + add_offset`` is ``code / 254``, the inverse of
    :func:`prob_to_u8` (:func:`u8_to_prob` in float64); the nodata code is the ``_FillValue``
    (``data_array_attrs`` writes it in v3, v2 readers take the array's fill_value), so it decodes
    to NaN. ``mask``: 0/1 categories (CF flags), no scaling -- xarray still masks its nodata.
    ``coordinates`` makes ``spatial_ref`` a coordinate even with the default ``decode_coords``
    (as xarray's own ``to_zarr`` writes it), so rioxarray finds the CRS either way."""
    common = {"coordinates": "spatial_ref"}
    if name == "prob":
        # a float scale and offset of one type: CF packing, and xarray's cue to decode to float
        return {**common, "long_name": "foreground probability", "units": "1",
                "scale_factor": 1.0 / PROB_SCALE, "add_offset": 0.0,
                "comment": f"stored as round(p*{PROB_SCALE}) in uint8, {NODATA} = nodata"}
    if name == "mask":
        return {**common, "long_name": "binary mask", "flag_values": [0, 1],
                "flag_meanings": "background foreground"}
    raise WriterError(f"no CF attributes for {name!r}")


def _open_group(uri: str, mode: str, zarr_format: int | None = None):
    import zarr

    opts = storage.storage_options(uri)
    kwargs: dict[str, Any] = {"mode": mode}
    if opts:
        kwargs["storage_options"] = opts
    if zarr_format is not None:
        kwargs["zarr_format"] = zarr_format
    return zarr.open_group(uri if storage.is_s3(uri) else storage.gdal_path(uri), **kwargs)


def _meta_is_ready(meta: dict) -> bool:
    """Version-1 stores (made before the marker existed) are taken as created in full."""
    return bool(meta.get(READY_KEY)) or int(meta.get("version", 0)) == 1


def store_is_ready(uri: str) -> bool:
    """True when ``uri`` holds a samsp mask store whose creation finished (the marker is set).

    False for no store, a foreign group, or one whose creation was killed half-way."""
    try:
        group = _open_group(uri, "r")
        meta = group.attrs.get("samsp")
        if not (isinstance(meta, dict) and meta.get("format") == "samsp-mask"
                and _meta_is_ready(meta)):
            return False
        # a version-1 store has no marker: it is whole when every array is there
        return int(meta.get("version", 0)) != 1 or all(
            name in group for name in (*meta.get("arrays", ARRAYS), LEGACY_MARKERS))
    except Exception:  # noqa: BLE001 - missing or unreadable group: not a usable store
        return False


class MaskWriter:
    """Zarr v3 mask store on the core-tile chunk grid; see the module docstring.

    ``MaskWriter(uri, like=scene, chunk=grid.core_size)`` creates the store (``mode="a"``: reuse
    a compatible existing store, e.g. to resume; ``"w"``: start over). Workers reopen it with
    ``MaskWriter.open(uri)`` or receive the pickled writer. ``chunk`` may also be a
    :class:`TileGrid`. Without ``like``, give ``height``, ``width``, ``crs``, ``transform``.
    """

    def __init__(self, uri: str | os.PathLike, like: Any = None, chunk: int | TileGrid | None = None,
                 mode: str = "a", *, height: int | None = None, width: int | None = None,
                 crs: CRS | None = None, transform: Affine | None = None,
                 arrays: tuple[str, ...] = ARRAYS, attrs: dict | None = None, zarr_format: int = 3):
        self.uri = os.fspath(uri) if not storage.is_s3(uri) else storage.to_s3_uri(str(uri))
        if mode not in ("w", "a", "r+", "r"):
            raise ValueError(f"mode must be one of w, a, r+, r; got {mode!r}")
        self._group = None
        self._arrays: dict[str, Any] = {}
        self._codecs: dict[str, Any] = {}
        self._markers = MARKERS  # a store made by an older version says otherwise (_load)
        exists = mode in ("r", "r+") or any(storage.exists(storage.join(self.uri, m))
                                             for m in ("zarr.json", ".zgroup"))
        if mode == "a" and exists and not store_is_ready(self.uri):
            # A creation that was killed half-way (group and attrs, not every array): nothing
            # in it can be trusted or resumed, so it is treated as absent and made again.
            exists = False
        if mode in ("r", "r+") or (mode == "a" and exists):
            self._load(mode)
            if like is not None or chunk is not None or height is not None:
                self._check_compatible(like, chunk, height, width, crs, transform)
            return
        if isinstance(chunk, TileGrid):
            chunk = chunk.core_size
        if chunk is None:
            raise WriterError("MaskWriter needs chunk= (the tile core size) to create a store")
        if like is not None:
            height, width = like.height, like.width
            crs, transform = like.crs, like.transform
        if height is None or width is None:
            raise WriterError("MaskWriter needs like=scene or height=/width= to create a store")
        bad = [a for a in arrays if a not in ARRAYS]
        if bad or not arrays:
            raise WriterError(f"arrays must be a non-empty subset of {ARRAYS}, got {arrays}")
        self.height, self.width, self.chunk = int(height), int(width), int(chunk)
        if self.chunk <= 0:
            raise WriterError(f"chunk must be positive, got {chunk}")
        self.crs = CRS.from_user_input(crs) if crs is not None else None
        self.transform = transform if transform is not None else Affine.identity()
        self.arrays = tuple(arrays)
        self.nodata = NODATA
        if zarr_format not in (2, 3):
            raise WriterError(f"zarr_format must be 2 or 3, got {zarr_format}")
        self.zarr_format = int(zarr_format)
        self._mode = "r+"
        self._create(attrs or {})

    # -- construction
    @classmethod
    def open(cls, uri: str | os.PathLike, mode: str = "r+") -> "MaskWriter":
        """Reopen an existing store (``r+`` to write more chunks, ``r`` to read/export)."""
        return cls(uri, mode=mode)

    def _meta(self) -> dict:
        return {
            "format": "samsp-mask", "version": _FORMAT_VERSION,
            "height": self.height, "width": self.width, "chunk": self.chunk,
            "grid_shape": list(self.grid_shape), "arrays": list(self.arrays), "nodata": NODATA,
            "prob_encoding": f"round(p*{PROB_SCALE}); {NODATA}=nodata",
            "mask_encoding": f"0 background, 1 foreground, {NODATA}=nodata",
            "crs_wkt": crs_to_wkt(self.crs), "GeoTransform": transform_to_gdal(self.transform),
            "markers": self._markers,
        }

    def _data_attrs(self, name: str) -> dict:
        """Attributes of data array ``name``: georeferencing (``ingest.georef``) and CF decoding."""
        return data_array_attrs(self.crs, ("y", "x"), NODATA, self.zarr_format) | cf_attrs(name)

    def _create(self, extra_attrs: dict) -> None:
        # Atomic creation: the group's attrs go first *without* the ready marker, the marker
        # last, after every array -- a store killed in between is never taken for a usable one.
        group = _open_group(self.uri, "w", self.zarr_format)
        group.attrs.update({"samsp": self._meta(), **extra_attrs})
        shape, chunks = (self.height, self.width), (self.chunk, self.chunk)
        v3 = self.zarr_format == 3
        for name in self.arrays:
            group.create_array(name, shape=shape, chunks=chunks, dtype="uint8", fill_value=NODATA,
                               attributes=self._data_attrs(name),
                               config={"write_empty_chunks": True},
                               **({"dimension_names": ("y", "x")} if v3 else {}))
        # The markers are bookkeeping, not data: in a sub-group, which xarray does not list
        group.create_group(self._markers.rsplit("/", 1)[0],
                           attributes={"description": "samsp's resume bookkeeping"})
        group.create_array(self._markers, shape=self.grid_shape, chunks=(1, 1), dtype="uint8",
                           fill_value=0, attributes={"_ARRAY_DIMENSIONS": ["chunk_row", "chunk_col"],
                                                     "description": "1 = chunk written (marker, set last)"},
                           **({"dimension_names": ("chunk_row", "chunk_col")} if v3 else {}))
        write_georef(group, self.crs, self.transform, self.height, self.width)
        group.attrs["samsp"] = {**self._meta(), READY_KEY: True}
        self._group = group

    def _load(self, mode: str) -> None:
        try:
            group = _open_group(self.uri, "r" if mode == "r" else "r+")
        except FileNotFoundError:
            raise WriterError(f"{self.uri}: no mask store here") from None
        except Exception as exc:  # noqa: BLE001 - zarr's NodeNotFoundError etc.
            if "not found" in str(exc).lower() or "NotFound" in type(exc).__name__:
                raise WriterError(f"{self.uri}: no mask store here") from None
            raise
        meta = group.attrs.get("samsp")
        if not isinstance(meta, dict) or meta.get("format") != "samsp-mask":
            raise WriterError(f"{self.uri}: not a samsp mask store (missing attrs['samsp'])")
        if not _meta_is_ready(meta):
            raise WriterError(f"{self.uri}: incomplete mask store (its creation was interrupted); "
                              f"reopen it with mode='a' or 'w' to make it again")
        self.height, self.width, self.chunk = int(meta["height"]), int(meta["width"]), int(meta["chunk"])
        self.arrays = tuple(meta["arrays"])
        self.nodata = int(meta.get("nodata", NODATA))
        self.crs = CRS.from_wkt(meta["crs_wkt"]) if meta.get("crs_wkt") else None
        self.transform = transform_from_gdal(meta["GeoTransform"])
        self.zarr_format = int(group.metadata.zarr_format)
        self._markers = str(meta.get("markers", LEGACY_MARKERS))  # versions 1, 2: top-level
        self._group = group
        self._mode = mode

    def _check_compatible(self, like, chunk, height, width, crs, transform) -> None:
        if isinstance(chunk, TileGrid):
            chunk = chunk.core_size
        if like is not None:
            height, width, crs, transform = like.height, like.width, like.crs, like.transform
        problems = []
        if height is not None and (int(height), int(width)) != (self.height, self.width):
            problems.append(f"size {width}x{height} != stored {self.width}x{self.height}")
        if chunk is not None and int(chunk) != self.chunk:
            problems.append(f"chunk {chunk} != stored {self.chunk}")
        if transform is not None and not transform.almost_equals(self.transform, precision=1e-9):
            problems.append("transform differs")
        if crs is not None and self.crs is not None and CRS.from_user_input(crs) != self.crs:
            problems.append("CRS differs")
        if problems:
            raise WriterError(f"{self.uri}: existing store is incompatible ({'; '.join(problems)}); "
                              f"use mode='w' to replace it")

    # -- pickling (Ray tasks / multiprocessing): reopen lazily
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_group"] = None
        state["_arrays"] = {}
        state["_codecs"] = {}
        if state.get("_mode") == "w":
            state["_mode"] = "r+"
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_codecs", {})
        state.setdefault("_markers", LEGACY_MARKERS)
        self.__dict__.update(state)

    @property
    def attrs(self) -> dict:
        """The store's group attributes (``samsp`` and whatever ``attrs=`` added at creation)."""
        if self._group is None:
            self._group = _open_group(self.uri, "r" if self._mode == "r" else "r+")
        return dict(self._group.attrs)

    def __repr__(self) -> str:
        return (f"MaskWriter({self.uri!r}, {self.width}x{self.height}, chunk={self.chunk}, "
                f"arrays={list(self.arrays)})")

    def _path(self, name: str) -> str:
        """Path in the store of array ``name`` ("written" = the chunk markers, wherever kept)."""
        return self._markers if name == "written" else name

    def _array(self, name: str):
        if name not in self.arrays and name != "written":
            raise WriterError(f"{self.uri}: no {name!r} array (has {list(self.arrays)})")
        arr = self._arrays.get(name)
        if arr is None:
            if self._group is None:
                self._group = _open_group(self.uri, "r" if self._mode == "r" else "r+")
            arr = self._group[self._path(name)]
            if name != "written":
                arr = arr.with_config({"write_empty_chunks": True})
            self._arrays[name] = arr
        return arr

    # -- direct chunk I/O
    # zarr-python costs ~1.2 ms per indexing call (its async machinery; measured), more than
    # encoding a 224² chunk. The stores this class creates use the codecs bytes + zstd, which
    # numcodecs' Zstd encodes byte for byte like zarr does (v2 stores: their numcodecs
    # compressor), so whole chunks are encoded and stored (or fetched and decoded) here
    # directly -- tested identical to zarr's files; any other layout goes through zarr.
    def _chunk_codec(self, name: str):
        """``(codec, chunk_shape, fill, metadata)`` for direct chunk I/O of ``name``, or None."""
        if name in self._codecs:
            return self._codecs[name]
        found = None
        try:
            import numcodecs
            import numcodecs.abc

            md = self._array(name).metadata
            if md.zarr_format == 3:
                from zarr.codecs import BytesCodec, ZstdCodec

                codecs = tuple(md.codecs)
                if (len(codecs) == 2 and isinstance(codecs[0], BytesCodec)
                        and isinstance(codecs[1], ZstdCodec)):
                    found = numcodecs.Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
                shape = tuple(md.chunk_grid.chunk_shape)
            else:
                # v2: the chunk is the compressor's encoding of the C-order bytes (no filters)
                if not md.filters and md.order == "C" and isinstance(md.compressor, numcodecs.abc.Codec):
                    found = md.compressor
                shape = tuple(md.chunks)
            if found is not None and np.dtype(self._array(name).dtype) == np.uint8:
                found = (found, shape, int(md.fill_value), md)
            else:
                found = None
        except Exception:  # noqa: BLE001 - an unknown layout: zarr does the work
            found = None
        self._codecs[name] = found
        return found

    def disable_direct_io(self) -> None:
        """Send every chunk of this writer through zarr-python instead of the direct chunk I/O
        (what a store in an unknown layout gets; slower): for measuring the difference. A
        pickled or reopened writer uses direct I/O again."""
        self._codecs = {name: None for name in (*self.arrays, "written")}

    def _chunk_uri(self, name: str, md, i: int, j: int) -> str:
        return f"{self.uri.rstrip('/')}/{self._path(name)}/{md.encode_chunk_key((i, j))}"

    def _encode_window(self, name: str, r0: int, c0: int, data: np.ndarray) -> dict[str, bytes]:
        """``{chunk uri: encoded bytes}`` for a chunk-aligned window of array ``name``."""
        codec, (ch_h, ch_w), fill, md = self._codecs[name]
        out = {}
        h, w = data.shape
        for i in range(r0 // ch_h, -(-(r0 + h) // ch_h)):
            for j in range(c0 // ch_w, -(-(c0 + w) // ch_w)):
                block = data[i * ch_h - r0:(i + 1) * ch_h - r0, j * ch_w - c0:(j + 1) * ch_w - c0]
                if block.shape != (ch_h, ch_w):  # edge chunk: stored whole, padded with the fill
                    full = np.full((ch_h, ch_w), fill, np.uint8)
                    full[:block.shape[0], :block.shape[1]] = block
                    block = full
                out[self._chunk_uri(name, md, i, j)] = codec.encode(np.ascontiguousarray(block))
        return out

    def _read_direct(self, name: str, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
        codec, (ch_h, ch_w), fill, md = self._codecs[name]
        keys = {(i, j): self._chunk_uri(name, md, i, j)
                for i in range(r0 // ch_h, -(-r1 // ch_h)) for j in range(c0 // ch_w, -(-c1 // ch_w))}
        blobs = storage.read_many(list(keys.values()))
        out = np.full((r1 - r0, c1 - c0), fill, np.uint8)
        for (i, j), uri in keys.items():
            blob = blobs[uri]
            if blob is None:
                continue  # never written: the fill value
            chunk = np.frombuffer(codec.decode(blob), np.uint8).reshape(ch_h, ch_w)
            y0, y1 = max(r0, i * ch_h), min(r1, (i + 1) * ch_h)
            x0, x1 = max(c0, j * ch_w), min(c1, (j + 1) * ch_w)
            out[y0 - r0:y1 - r0, x0 - c0:x1 - c0] = chunk[y0 - i * ch_h:y1 - i * ch_h,
                                                          x0 - j * ch_w:x1 - j * ch_w]
        return out

    # -- geometry
    @property
    def grid_shape(self) -> tuple[int, int]:
        return math.ceil(self.height / self.chunk), math.ceil(self.width / self.chunk)

    def chunk_window(self, row: int, col: int) -> Window:
        r0, c0 = row * self.chunk, col * self.chunk
        return Window(c0, r0, min(self.chunk, self.width - c0), min(self.chunk, self.height - r0))

    def chunk_windows(self) -> Iterator[Window]:
        rows, cols = self.grid_shape
        for r in range(rows):
            for c in range(cols):
                yield self.chunk_window(r, c)

    def _chunk_range(self, window: Window) -> tuple[int, int, int, int]:
        """Chunk index range ``(i0, j0, i1, j1)`` for a chunk-aligned window (else WriterError)."""
        r0, c0, r1, c1 = window_bounds(window)
        ch = self.chunk
        if not (0 <= r0 < r1 <= self.height and 0 <= c0 < c1 <= self.width):
            raise WriterError(f"window {window} outside the {self.width}x{self.height} mask")
        aligned = (r0 % ch == 0 and c0 % ch == 0 and (r1 % ch == 0 or r1 == self.height)
                   and (c1 % ch == 0 or c1 == self.width))
        if not aligned:
            raise WriterError(f"window {window} is not aligned to the {ch}-pixel chunk grid "
                              f"(use TileGrid core windows with tile - overlap == {ch})")
        return r0 // ch, c0 // ch, math.ceil(r1 / ch), math.ceil(c1 / ch)

    # -- writing
    def write(self, core_window: Window, prob: np.ndarray | None = None, mask: np.ndarray | None = None,
              valid: np.ndarray | None = None) -> None:
        """Store whole chunks covering ``core_window``; pixels with ``valid=False`` become 255.

        ``prob`` is the uint8 code (float input in [0, 1] is converted with ``prob_to_u8``);
        ``mask`` is 0/1 (bool accepted). An array the store holds but the call omits is written
        as nodata. Safe to call from many processes at once for different windows.
        """
        if self._mode == "r":
            raise WriterError(f"{self.uri}: opened read-only")
        i0, j0, i1, j1 = self._chunk_range(core_window)
        r0, c0, r1, c1 = window_bounds(core_window)
        shape = (r1 - r0, c1 - c0)
        given = {"prob": prob, "mask": mask}
        for name in given:
            if given[name] is not None and name not in self.arrays:
                raise WriterError(f"{self.uri}: store has no {name!r} array")
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != shape:
                raise WriterError(f"valid has shape {valid.shape}, window needs {shape}")
        arrays = {}
        for name in self.arrays:
            data = given[name]
            if data is None:
                data = np.full(shape, NODATA, dtype=np.uint8)
            else:
                data = np.asarray(data)
                if data.ndim == 3 and data.shape[0] == 1:
                    data = data[0]
                if data.shape != shape:
                    raise WriterError(f"{name} has shape {data.shape}, window needs {shape}")
                if name == "prob" and data.dtype.kind == "f":
                    data = prob_to_u8(data)
                elif data.dtype != np.uint8:
                    data = data.astype(np.uint8)
                if valid is not None and not valid.all():
                    data = np.where(valid, data, np.uint8(NODATA))
            arrays[name] = data
        marker = np.ones((i1 - i0, j1 - j0), np.uint8)
        if all(self._chunk_codec(n) is not None for n in (*arrays, "written")):
            chunks: dict[str, bytes] = {}
            for name, data in arrays.items():
                chunks.update(self._encode_window(name, r0, c0, data))
            storage.write_many(chunks)  # the data chunks first, the markers after them
            storage.write_many(self._encode_window("written", i0, j0, marker))
            return
        for name, data in arrays.items():
            self._array(name)[r0:r1, c0:c1] = data
        self._array("written")[i0:i1, j0:j1] = 1

    # -- resume / reading
    def written_chunks(self) -> set[tuple[int, int]]:
        """``{(row, col)}`` of chunks whose marker exists (one listing of ``written/``)."""
        fs, path = storage.fs_for(storage.join(self.uri, self._markers))
        try:
            if hasattr(fs, "invalidate_cache"):
                fs.invalidate_cache(path)
            found = fs.find(path)
        except FileNotFoundError:
            return set()
        out = set()
        prefix = path.rstrip("/") + "/"
        for key in found:
            rel = key[len(prefix):] if key.startswith(prefix) else key
            if rel.startswith("c/"):  # v3 default chunk keys: c/<row>/<col>
                rel = rel[2:]
            parts = rel.replace(".", "/").split("/")  # v2: <row>.<col> (or <row>/<col>)
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                out.add((int(parts[0]), int(parts[1])))
        return out

    def written_windows(self) -> list[Window]:
        """Chunk windows already written (row-major)."""
        return [self.chunk_window(r, c) for r, c in sorted(self.written_chunks())]

    def missing_windows(self) -> list[Window]:
        done = self.written_chunks()
        rows, cols = self.grid_shape
        return [self.chunk_window(r, c) for r in range(rows) for c in range(cols) if (r, c) not in done]

    def is_written(self, core_window: Window) -> bool:
        i0, j0, i1, j1 = self._chunk_range(core_window)
        return bool(np.all(np.asarray(self._array("written")[i0:i1, j0:j1]) == 1))

    @property
    def complete(self) -> bool:
        rows, cols = self.grid_shape
        return len(self.written_chunks()) == rows * cols

    def read(self, window: Window | None = None, which: str = "mask") -> np.ndarray:
        """uint8 ``[h, w]`` of ``which`` (window inside the mask; default the whole mask)."""
        if window is None:
            window = Window(0, 0, self.width, self.height)
        r0, c0, r1, c1 = window_bounds(window)
        if which in self.arrays and self._chunk_codec(which) is not None:
            if not (0 <= r0 <= r1 <= self.height and 0 <= c0 <= c1 <= self.width):
                raise WriterError(f"window {window} outside the {self.width}x{self.height} mask")
            return self._read_direct(which, r0, c0, r1, c1)
        return np.asarray(self._array(which)[r0:r1, c0:c1])

    def iter_chunks(self, which: str = "mask") -> Iterator[tuple[Window, np.ndarray]]:
        """``(window, data)`` chunk by chunk (bounded memory)."""
        for win in self.chunk_windows():
            yield win, self.read(win, which)

    def histogram(self, which: str = "mask") -> np.ndarray:
        """Counts of each uint8 value over the whole array (chunk by chunk): ``int64[256]``."""
        counts = np.zeros(256, dtype=np.int64)
        for _, data in self.iter_chunks(which):
            counts += np.bincount(data.ravel(), minlength=256)
        return counts

    # -- finishing
    def finish(self) -> None:
        """Make the store cheap and exact to open with xarray: bring the data arrays' CF
        attributes up to date (a store made by an older version gets them too), then
        consolidate the metadata (xarray reads one document, and warns when there is none).

        Run once every chunk is written (``jobs.segmentation.finalize``), and again at the end
        of any later run that wrote more. Writing chunks changes no metadata, so a consolidated
        store stays exact, and resumable, while a rerun adds chunks; the only other metadata
        writes, at creation, start from an empty store (``mode="w"`` clears the old
        consolidation with everything else). Idempotent."""
        import zarr

        if self._mode == "r":
            raise WriterError(f"{self.uri}: opened read-only")
        # a fresh handle: a cached one may hold the metadata read before another process's change
        group = _open_group(self.uri, "r+")
        for name in self.arrays:
            arr = group[name]
            want = self._data_attrs(name)
            if any(arr.attrs.get(k) != v for k, v in want.items()):
                arr.attrs.update(want)
        with warnings.catch_warnings():
            # zarr-python notes that consolidated metadata is its own extension of Zarr v3:
            # known, and what xarray reads first -- readers without it read the per-array files
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            zarr.consolidate_metadata(group.store_path, zarr_format=self.zarr_format)
        self._group = None
        self._arrays = {}
        self._codecs = {}

    # -- export
    def strips(self, block: int, max_bytes: int) -> Iterator[tuple[int, int, int, int]]:
        """``(r0, c0, r1, c1)`` windows covering the mask: one ``block``-pixel GTiff tile row high
        (the chunk row when ``block == chunk``), as many tiles wide as ``max_bytes`` allows."""
        cols = max(block, (max_bytes // block) // block * block)
        for r0 in range(0, self.height, block):
            for c0 in range(0, self.width, cols):
                yield r0, c0, min(r0 + block, self.height), min(c0 + cols, self.width)

    def to_cog(self, uri: str | os.PathLike, which: str = "mask", *, blocksize: int = 512,
               compress: str = "DEFLATE", require_complete: bool = True,
               tmp_dir: str | None = None, **creation_options: Any) -> str:
        """Write ``which`` as a Cloud-Optimized GeoTIFF at ``uri`` (local or s3://): see
        :func:`ingest.cog.write_cog`. Raises :class:`IncompleteMaskError` before writing
        anything if chunks are missing and ``require_complete``."""
        self._array(which)
        if require_complete:
            missing = self.missing_windows()
            if missing:
                rows, cols = self.grid_shape
                raise IncompleteMaskError(
                    f"{self.uri}: {len(missing)} of {rows * cols} chunks not written yet "
                    f"(first at row {int(missing[0].row_off)}, col {int(missing[0].col_off)}); "
                    f"no COG written")
        return write_cog(self, uri, which, blocksize=blocksize, compress=compress,
                         tmp_dir=tmp_dir, **creation_options)


__all__ = ["MaskWriter", "prob_to_u8", "u8_to_prob", "store_is_ready", "NODATA", "PROB_SCALE"]
