"""Crack sweep outputs: per-image mask PNG, overlay thumbnail and record; the ranked report
(CSV + Parquet), a PNG contact sheet and an HTML page of the top findings.

Layout under ``<output>``::

    masks/<id>.png        mask, 8-bit grey: 255 crack, 0 background/nodata (full resolution)
    features/<id>.parquet the image's crack centre-lines (GeoParquet, pixel coordinates)
    thumbs/<id>.jpg       downsampled photo with the cracks in red (contact sheet, HTML)
    records/<id>.json     one record per image (status ok|failed, measurements); written last,
                          so a record means the image is finished -- a rerun skips ok records
    report.csv            every image, ranked by ``report.sort_by`` (``rank_columns``; failed
                          images last): crack_px, skeleton length, max width (centre-line,
                          away from junctions; max_width_raw_px the plain maximum), cracks
                          (pieces), networks, severity, seconds (the photo's own work: its
                          tile reads + its share of the model batches + its finalize);
                          with a pixel size (``measure:``, jobs/crack_sweep/measure.py) also the
                          lengths/widths in mm, the width class and per class counts/lengths
    report.parquet        the same table
    contact_sheet.png     top-N images with overlays and their numbers
    report.html           the top-N table with thumbnails, links to masks, and counts
    cracks.parquet        every ok image's centre-lines in one GeoParquet (image_id column;
                          pixel coordinates; length, mean/max width px): jobs/crack_sweep/features.py
"""
from __future__ import annotations

import html
import io
import math

import numpy as np

from ingest import storage
from ingest.lowres import read_decimated
from ingest.orientation import orient, oriented_shape
from jobs.crack_sweep.measure import class_columns

OVERLAY = np.array([255, 30, 30], np.float32)
COLUMNS = ["rank", "id", "input", "status", "crack_px", "crack_fraction", "skeleton_length_px",
           "max_width_px", "max_width_raw_px", "mean_width_px", "cracks", "networks", "severity",
           "severity_basis", "width", "height", "orientation", "tiles", "mean_disagreement",
           "seconds", "mask", "thumb", "error", "notes", "run_id"]
INT_COLUMNS = ("crack_px", "skeleton_length_px", "cracks", "networks", "width", "height",
               "orientation", "tiles")
FLOAT_COLUMNS = ("crack_fraction", "max_width_px", "max_width_raw_px", "mean_width_px",
                 "severity", "mean_disagreement", "seconds", "pixel_size_mm",
                 "skeleton_length_mm", "max_width_mm", "mean_width_mm")
TEXT_COLUMNS = ("id", "input", "status", "mask", "thumb", "error", "notes", "run_id",
                "pixel_size_source",
                "width_class", "severity_basis")
#: ``report.sort_by`` -> (its column when every ok image has a pixel size, its column otherwise)
SORT_COLUMNS = {"pixels": ("crack_px", "crack_px"),
                "length": ("skeleton_length_mm", "skeleton_length_px"),
                "max_width": ("max_width_mm", "max_width_px"),
                "severity": ("severity", "severity")}
SORT_LABELS = {"crack_px": "crack pixels", "skeleton_length_mm": "centre-line length (mm)",
               "skeleton_length_px": "centre-line length (px)",
               "max_width_mm": "max crack width (mm, centre-line)",
               "max_width_px": "max crack width (px, centre-line)",
               "severity": "severity (sum of width class rank x length)"}
#: the physical columns, after the pixel ones they convert (``cracks_<class>``,
#: ``length_mm_<class>`` follow them, in class order)
MM_COLUMNS = ["pixel_size_mm", "pixel_size_source", "skeleton_length_mm", "max_width_mm",
              "mean_width_mm", "width_class"]


def table_columns(class_names=()) -> list[str]:

    at = COLUMNS.index("severity_basis") + 1
    return COLUMNS[:at] + MM_COLUMNS + class_columns(list(class_names)) + COLUMNS[at:]


def mask_png(mask_u8: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask_u8 == 1, 255, 0).astype(np.uint8), mode="L").save(
        buf, format="PNG", optimize=True)
    return buf.getvalue()


def downsample_any(mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Boolean downsample that keeps thin cracks: an output pixel is set if any input pixel is."""
    H, W = mask.shape
    ys = np.minimum((np.arange(out_h + 1) * H) // out_h, H)
    xs = np.minimum((np.arange(out_w + 1) * W) // out_w, W)
    rows = np.maximum.reduceat(mask.astype(np.uint8), ys[:-1], axis=0) if H else mask
    return np.maximum.reduceat(rows, xs[:-1], axis=1).astype(bool)


def overlay_thumb(scene, radiometry, mask_u8: np.ndarray, size: int,
                  orientation: int = 1) -> bytes:
    """JPEG thumbnail (longest side ``size``) with cracks in red; the photo is read decimated
    and turned by its EXIF ``orientation`` (the mask is already in that frame)."""
    from PIL import Image

    H, W = scene.height, scene.width
    scale = min(1.0, size / max(H, W))
    stored_h, stored_w = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    data, valid = read_decimated(scene, stored_h, stored_w)
    img = orient(radiometry.apply(data, valid), orientation)
    out_h, out_w = oriented_shape(stored_h, stored_w, orientation)
    rgb = np.repeat(img[:1], 3, axis=0) if img.shape[0] < 3 else img[:3]
    rgb = np.moveaxis(rgb, 0, -1).astype(np.float32)
    crack = downsample_any(mask_u8 == 1, out_h, out_w)
    rgb[crack] = 0.25 * rgb[crack] + 0.75 * OVERLAY
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def rank_columns(ok, sort_by: str = "pixels") -> list[str]:
    """The columns ok images are ranked by, each descending (then by id): ``report.sort_by``'s
    column first -- its mm column when every ok image has a pixel size (a px ranking of photos
    shot at different distances would mislead), else its px one -- then crack pixels, length
    and max width px break ties. ``pixels`` is the ranking of every earlier sweep."""
    sized, plain = SORT_COLUMNS[sort_by]
    first = sized if len(ok) and ok["pixel_size_mm"].notna().all() else plain
    return [first, *(c for c in ("crack_px", "skeleton_length_px", "max_width_px") if c != first)]


def typed_table(df, class_names=()):
    """Every report column with one dtype (records of earlier runs may lack some: null)."""
    import pandas as pd

    for col in (*INT_COLUMNS, *(f"cracks_{n}" for n in class_names)):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in (*FLOAT_COLUMNS, *(f"length_mm_{n}" for n in class_names)):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in TEXT_COLUMNS:
        df[col] = df[col].astype(object).fillna("").astype(str)  # all-null columns are float
    return df


def ranked_table(records: list[dict], class_names=(), sort_by: str = "pixels"):
    """DataFrame of all records: ok images ranked by ``rank_columns`` (``report.sort_by``),
    then the failed ones by id (no rank)."""
    import pandas as pd

    columns = table_columns(class_names)
    df = pd.DataFrame(records)
    for col in columns:
        if col not in df.columns:
            df[col] = None
    df = typed_table(df[columns].copy(), class_names)
    ok = df[df["status"] == "ok"]
    by = rank_columns(ok, sort_by)
    ok = ok.sort_values([*by, "id"], ascending=[False] * len(by) + [True], kind="mergesort",
                        na_position="last").copy()
    ok["rank"] = np.arange(1, len(ok) + 1)
    bad = df[df["status"] != "ok"].sort_values("id").copy()
    bad["rank"] = None
    table = pd.concat([ok, bad], ignore_index=True)[columns]
    table["rank"] = table["rank"].astype("Int64")
    table.attrs["ranked_by"] = by[0]
    return table


def contact_sheet(top: list[dict], thumbs: dict[str, bytes], cell: int = 256, cols: int = 6) -> bytes:
    """PNG grid of the top findings: thumbnail + '#rank id' + numbers under it."""
    from PIL import Image, ImageDraw

    n = max(1, len(top))
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    cap = 30
    sheet = Image.new("RGB", (cols * cell, rows * (cell + cap)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    if not top:
        draw.text((8, 8), "no cracks found", fill=(230, 230, 230))
    for i, rec in enumerate(top):
        x, y = (i % cols) * cell, (i // cols) * (cell + cap)
        blob = thumbs.get(rec["id"])
        if blob:
            im = Image.open(io.BytesIO(blob)).convert("RGB")
            im.thumbnail((cell - 4, cell - 4))
            sheet.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
        draw.text((x + 4, y + cell + 2), f"#{rec['rank']} {str(rec['id'])[:28]}", fill=(240, 240, 240))
        draw.text((x + 4, y + cell + 15),
                  f"{rec['crack_px']} px  L {rec['skeleton_length_px']}  W {rec['max_width_px']:.1f}",
                  fill=(255, 170, 170))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _mm(value, digits: int) -> str:
    """A mm cell: the number, or a dash where the photo has no pixel size."""
    return "&ndash;" if value is None or value != value else f"{value:.{digits}f}"


def class_cell(rec: dict, class_names) -> str:
    """The finding's class (its widest crack's) and its lines per class."""
    if not rec.get("width_class"):
        return "&ndash;"
    counts = ", ".join(f"{html.escape(n)} {rec.get(f'cracks_{n}') or 0}" for n in class_names)
    return f"<b>{html.escape(rec['width_class'])}</b><br><small>{counts}</small>"


def classes_note(ok, class_names) -> str:
    """Where the mm come from and what the classes are (a crack line's class is its max width's)."""
    sized = int(ok["pixel_size_mm"].notna().sum())
    if not sized:
        return "No pixel size configured (measure.pixel_size_mm / pixel_size_csv): pixels only."
    return (f"Sizes in mm for {sized} of {len(ok)} images (measure.pixel_size_mm / "
            f"pixel_size_csv); a crack line's class is that of its max width: "
            f"{html.escape(', '.join(class_names))}.")


def _num(value, digits: int = 0) -> str:
    """A number cell: the number, or a dash where the record has none (an earlier run's)."""
    import pandas as pd

    return "&ndash;" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def top_rows(ok, top_n: int, class_names=()) -> str:
    """The HTML rows of the top findings."""
    rows = []
    for rec in ok.head(top_n).to_dict("records"):
        basis = f" <small>{html.escape(rec['severity_basis'])}</small>" if rec.get(
            "severity_basis") else ""
        rows.append(
            "<tr><td>{rank}</td><td><a href='{mask}'><img src='{thumb}' width=160></a></td>"
            "<td>{id}<br><small>{input}</small></td><td>{crack_px}</td><td>{frac:.4f}</td>"
            "<td>{length}</td><td>{width}</td><td>{length_mm}</td><td>{width_mm}</td>"
            "<td>{cls}</td><td>{severity}{basis}</td><td>{networks}</td><td>{cracks}</td>"
            "</tr>".format(
                rank=rec["rank"], mask=html.escape(rec["mask"]), thumb=html.escape(rec["thumb"]),
                id=html.escape(rec["id"]), input=html.escape(rec["input"]),
                crack_px=rec["crack_px"], frac=rec["crack_fraction"] or 0.0,
                length=rec["skeleton_length_px"], width=_num(rec["max_width_px"], 1),
                length_mm=_mm(rec.get("skeleton_length_mm"), 1),
                width_mm=_mm(rec.get("max_width_mm"), 2), cls=class_cell(rec, class_names),
                severity=_num(rec.get("severity"), 1), basis=basis,
                networks=_num(rec.get("networks")), cracks=_num(rec.get("cracks"))))
    return "".join(rows)


def report_html(table, top_n: int, run_info: dict, class_names=(),
                ranked_by: str = "crack_px") -> str:
    ok = table[table["status"] == "ok"]
    failed = table[table["status"] != "ok"]
    fails = "".join(f"<li>{html.escape(r['id'])}: {html.escape(r['error'])}</li>"
                    for r in failed.to_dict("records"))
    turned = int((ok["orientation"].fillna(1) != 1).sum())
    label = html.escape(SORT_LABELS.get(ranked_by, ranked_by))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Crack sweep report</title>
<style>body{{font-family:sans-serif;margin:1.5em}} td,th{{padding:4px 8px;border-bottom:1px solid #ddd}}
th{{text-align:left}}</style></head><body>
<h1>Crack sweep</h1>
<p>{len(table)} images: {len(ok)} ok, {len(failed)} failed. Model {html.escape(str(run_info.get('model')))};
threshold {run_info.get('threshold')}; run {html.escape(str(run_info.get('run_id')))}.
Ranked by <b>{label}</b> (<code>report.sort_by</code>: {html.escape(str(run_info.get('sort_by', 'pixels')))};
column <code>{html.escape(ranked_by)}</code>).
Full table: <a href="report.csv">report.csv</a> / report.parquet. <a href="contact_sheet.png">Contact sheet</a>.
Photos are measured and shown as photo viewers display them: EXIF orientation applied
({turned} of {len(ok)} turned; width/height are the displayed ones).
Max width: the crack's width along its centre-line away from junctions and ends (95th
percentile), not the bulges where cracks meet; networks: crack pieces joined across small gaps.
{classes_note(ok, class_names)}</p>
<h2>Top {min(top_n, len(ok))} by {label}</h2>
<table><tr><th>#</th><th>overlay (links to mask)</th><th>image</th><th>crack px</th><th>fraction</th>
<th>skeleton length px</th><th>max width px</th><th>length mm</th><th>max width mm</th>
<th>class (lines per class)</th><th>severity</th><th>networks</th><th>cracks (pieces)</th></tr>
{top_rows(ok, top_n, class_names)}
</table>
{'<h2>Failed</h2><ul>' + fails + '</ul>' if fails else ''}
</body></html>
"""


def write_report(output: str, records: list[dict], top_n: int, run_info: dict,
                 columns: int = 6, cell: int = 256, class_names=(), sort_by: str = "pixels") -> dict:
    """report.csv, report.parquet, contact_sheet.png, report.html (each written atomically),
    ranked by ``sort_by`` (``report.sort_by``)."""
    table = ranked_table(records, class_names, sort_by)
    ranked_by = table.attrs["ranked_by"]
    run_info = {**run_info, "sort_by": sort_by}
    storage.write_bytes(storage.join(output, "report.csv"), table.to_csv(index=False).encode())
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    storage.write_bytes(storage.join(output, "report.parquet"), buf.getvalue())
    top = [r for r in table[table["status"] == "ok"].head(top_n).to_dict("records")
           if (r["crack_px"] or 0) > 0]
    thumbs = {}
    for r in top:
        try:
            thumbs[r["id"]] = storage.read_bytes(storage.join(output, r["thumb"]))
        except FileNotFoundError:
            pass
    storage.write_bytes(storage.join(output, "contact_sheet.png"), contact_sheet(top, thumbs, cell=cell, cols=columns))
    storage.write_bytes(storage.join(output, "report.html"), report_html(table, top_n, run_info, class_names, ranked_by).encode())
    return {"images": len(table), "ok": int((table["status"] == "ok").sum()),
            "failed": int((table["status"] != "ok").sum()), "top": [r["id"] for r in top],
            "ranked_by": ranked_by}


