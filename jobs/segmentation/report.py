"""``<output>/reports/<run_id>.html`` (every run) and ``<output>/report.html`` (the latest run that
computed or failed something): the morning report of a segment run, one self-contained page.

A rerun that only skips done scenes keeps ``report.html`` -- yesterday's review queue stays the
page people open -- and still leaves its own page under ``reports/``; each page links the other
and the last runs' pages.

Scenes ok / failed / skipped with the reason, seconds and foreground fraction per scene, notes
(a band-name pick, the input contract's warnings: GSD, bands, radiometry), links
to each scene's outputs (relative: they resolve wherever the output prefix is copied), and the
review queue -- the most uncertain tiles of the run with a crop of each from the scene's
quick-look, inline as base64 PNG. No script, no stylesheet or font from the network: it opens
from a laptop's disk, an S3 console download or a CI artifact alike.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter

from ingest import TileGrid, storage
from ingest.trust import redact_text
from jobs.runtime.messages import one_line

log = logging.getLogger("samsp.segment")

REPORT_NAME = "report.html"
RUN_REPORTS = "reports"  # <output>/reports/<run_id>.html, one per run
#: earlier runs' pages linked from a report
LINKED_RUNS = 10
#: tiles in the review queue (the run's most uncertain, over all its scenes)
REVIEW_TILES = 12
CROP_PX = 160  # shown size of a quick-look crop

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:24px 0 8px}
.meta{color:#555} table{border-collapse:collapse;width:100%} td,th{padding:4px 8px;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top} th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17702f;font-weight:600} .failed{color:#b00020;font-weight:600}
.skipped{color:#666;font-weight:600} .running{color:#8a5a00;font-weight:600}
.counts span{display:inline-block;margin-right:16px;font-size:16px}
.queue{display:flex;flex-wrap:wrap;gap:12px} .queue figure{margin:0;width:170px}
.queue img{width:160px;height:160px;object-fit:contain;background:#eee;image-rendering:pixelated}
figcaption{font-size:12px;color:#444} td.notes{color:#8a5a00;font-size:13px}
"""


def _esc(value) -> str:
    """Text as HTML, every URL in it redacted (the report is published next to the outputs)."""
    return html.escape(redact_text(str(value)), quote=True)


def _crop(quicklook: bytes, window, height: int, width: int) -> str | None:
    """The tile's window of the quick-look, as a data: URI (None when it cannot be made)."""
    from PIL import Image

    img = Image.open(io.BytesIO(quicklook)).convert("RGB")
    sx, sy = img.width / width, img.height / height
    r0, c0, h, w = window
    box = (int(c0 * sx), int(r0 * sy), max(int(c0 * sx) + 1, int(round((c0 + w) * sx))),
           max(int(r0 * sy) + 1, int(round((r0 + h) * sy))))
    crop = img.crop(box)
    scale = CROP_PX / max(crop.width, crop.height)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                       Image.NEAREST)
    buf = io.BytesIO()
    crop.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def review_queue(rows: list[dict], output: str, tile: int, overlap: int) -> list[dict]:
    """The run's most uncertain tiles (scenes computed or resumed now), each with its crop."""

    cands = [(u, r) for r in rows if r.get("status") == "ok" for u in r.get("uncertain_tiles") or []]
    cands.sort(key=lambda ur: (-float(ur[0].get("disagreement", 0)), ur[1]["id"], ur[0]["tile"]))
    queue, looks = [], {}
    for unc, row in cands[:REVIEW_TILES]:
        sid, (tr, tc) = row["id"], unc["tile"]
        item = {"scene": sid, "tile": [tr, tc], "disagreement": unc.get("disagreement", 0.0),
                "margin": unc.get("margin"), "crop": None}
        try:
            # the scene's own tiling (a scene read at the model's GSD has its own; a filled
            # small photo is one tile of itself)
            own = (row.get("record") or {}).get("tiling") or {}
            filled = (row.get("model_input") or {}).get("small_images") == "fill"
            grid = TileGrid(int(row["height"]), int(row["width"]), int(own.get("tile", tile)),
                            int(own.get("overlap", overlap)),
                            small_images="fill" if filled else "pad")
            win = grid[tr * grid.shape[1] + tc].read_window  # what the model saw
            item["window"] = (int(win.row_off), int(win.col_off), int(win.height), int(win.width))
            if "quicklook.png" in (row.get("outputs") or []):
                if sid not in looks:
                    looks[sid] = storage.read_bytes(storage.join(output, sid, "quicklook.png"))
                item["crop"] = _crop(looks[sid], item["window"], int(row["height"]),
                                     int(row["width"]))
        except Exception as err:  # noqa: BLE001 - a missing crop never stops the report
            log.warning("report: no crop for scene %s tile %s: %s", sid, unc["tile"],
                        one_line(err, 200))
        queue.append(item)
    return queue


def _reason(row: dict) -> str:
    if row.get("status") == "failed":
        return row.get("error") or ""
    if row.get("status") == "skipped":
        return row.get("reason") or f"done in run {row.get('done_run_id', '?')}"
    if row.get("status") == "running_elsewhere":
        return row.get("reason") or "running in another run"
    return ""


def _notes(row: dict) -> str:
    """What the model was fed where it is worth a look: a band-name pick, a read at the model's
    GSD and the input contract's warnings (GSD, bands, radiometry), one per line."""
    model_input = row.get("model_input") or {}
    chosen, resampled = model_input.get("band_choice"), model_input.get("resampled")
    lines = [str(chosen)] if chosen else []
    if isinstance(resampled, dict):  # jobs/inference/resampling.py
        lines.append(f"read at the model's GSD: {resampled.get('scene_gsd_m')} m -> "
                     f"{resampled.get('model_gsd_m')} m, tiles of {resampled.get('tile')} scene px")
    lines += [str(w) for w in row.get("warnings") or []]
    return "<br>".join(_esc(line) for line in lines)


def _runs_line(run: dict, base: str, earlier: list[str]) -> str:
    """Links to the latest report, this run's own page and the last runs' pages."""
    own = f"{base}{RUN_REPORTS}/{run['run_id']}.html"
    links = [f"<a href='{base}{REPORT_NAME}'>latest report</a>",
             f"<a href='{_esc(own)}'>this run's page</a>"]
    links += [f"<a href='{base}{RUN_REPORTS}/{_esc(r)}.html'>{_esc(r)}</a>" for r in earlier]
    return "<div class='meta'>runs: " + " · ".join(links) + "</div>"


def render(run: dict, rows: list[dict], queue: list[dict], base: str = "",
           earlier: list[str] = ()) -> str:
    """The page: ``run`` (run_id, started, seconds, output, model), this run's scene rows;
    ``base`` is the way from the page to the output root ("" or "../"), ``earlier`` the run ids
    of earlier pages to link."""
    counts = Counter(r.get("status", "?") for r in rows)
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>samsp segment run {_esc(run['run_id'])}</title><style>{CSS}</style></head><body>",
           f"<h1>Segment run {_esc(run['run_id'])}</h1>",
           f"<div class='meta'>started {_esc(run.get('started', ''))} · "
           f"{float(run.get('seconds', 0)):.1f} s · model {_esc(run.get('model', ''))} · output "
           f"{_esc(run.get('output', ''))}</div>",
           _runs_line(run, base, list(earlier)),
           "<p class='counts'>" + "".join(
               f"<span class='{k}'>{counts.get(k, 0)} {k}</span>" for k in ("ok", "failed", "skipped"))
           + (f"<span class='running'>{counts['running_elsewhere']} running in other runs</span>"
              if counts.get("running_elsewhere") else "")
           + f"<span>{int(run.get('tiles_computed', 0))} tiles computed</span></p>",
           "<h2>Scenes</h2><table><thead><tr><th>scene</th><th>status</th><th>reason</th>"
           "<th>seconds</th><th>tiles (computed)</th><th>foreground</th><th>notes</th>"
           "<th>outputs</th></tr></thead><tbody>"]
    order = {"failed": 0, "running_elsewhere": 1, "ok": 2, "skipped": 3}
    for r in sorted(rows, key=lambda r: (order.get(r.get("status"), 3), r["id"])):
        sid, status = r["id"], r.get("status", "?")
        fg = r.get("foreground_fraction")
        links = " ".join(f"<a href='{base}{_esc(sid)}/{_esc(name)}'>{_esc(name)}</a>"
                         for name in (r.get("outputs") or []))
        out.append(
            f"<tr><td>{_esc(sid)}</td><td class='{_esc(status)}'>{_esc(status)}</td>"
            f"<td>{_esc(_reason(r))}</td><td class='num'>{float(r.get('seconds') or 0):.1f}</td>"
            f"<td class='num'>{int(r.get('tiles') or 0)} ({int(r.get('tiles_computed') or 0)})</td>"
            f"<td class='num'>{'' if fg is None else f'{float(fg):.4f}'}</td>"
            f"<td class='notes'>{_notes(r)}</td><td>{links}</td></tr>")
    out.append("</tbody></table>")
    out.append(f"<h2>Review queue: the {len(queue)} most uncertain tiles</h2>")
    if not queue:
        out.append("<p>No tile to review (no scene computed in this run).</p>")
    out.append("<div class='queue'>")
    for q in queue:
        img = (f"<img alt='scene {_esc(q['scene'])} tile {_esc(q['tile'])}' src='{q['crop']}'>"
               if q.get("crop") else "<div class='nocrop'>no quick-look</div>")
        out.append(f"<figure>{img}<figcaption><a href='{base}{_esc(q['scene'])}/quicklook.png'>"
                   f"{_esc(q['scene'])}</a> tile ({q['tile'][0]},{q['tile'][1]})<br>"
                   f"disagreement {float(q['disagreement']):.4f}</figcaption></figure>")
    out.append("</div></body></html>\n")
    return "\n".join(out)


def earlier_runs(output: str, run_id: str) -> list[str]:
    """Run ids of the last pages under ``reports/`` before ``run_id`` (newest first; ids sort
    by time)."""
    try:
        names = [u.rsplit("/", 1)[-1] for u in storage.listdir(storage.join(output, RUN_REPORTS))]
    except (FileNotFoundError, OSError):
        return []
    ids = sorted((n[:-5] for n in names if n.endswith(".html") and n[:-5] < run_id), reverse=True)
    return ids[:LINKED_RUNS]


def write_report(output: str, run: dict, rows: list[dict], tile: int, overlap: int) -> str:
    """Write this run's page under ``reports/`` and, when the run computed or failed something
    (or there is no report yet), ``report.html`` (atomically); returns the URI of the page
    people should open: ``report.html`` when this run wrote it, else the run's own page."""
    queue = review_queue(rows, output, tile, overlap)
    earlier = earlier_runs(output, run["run_id"])
    own = storage.join(output, RUN_REPORTS, f"{run['run_id']}.html")
    storage.write_bytes(own, render(run, rows, queue, "../", earlier).encode("utf-8"))
    latest = storage.join(output, REPORT_NAME)
    did_something = run.get("tiles_computed") or any(r.get("status") == "failed" for r in rows)
    if did_something or not storage.exists(latest):
        storage.write_bytes(latest, render(run, rows, queue, "", earlier).encode("utf-8"))
        return latest
    return own
