"""The sweep's records under ``--output`` (``records/<id>.json``), and earlier runs' records
brought up to the current measurements before a report is made.

A rerun skips the photos already done, but the report ranks every record under the output: a
record from before the centre-line max width (``width_method``, jobs/crack_sweep/cracks.py) or
measured with another ``measure.network_gap_px`` would rank by other numbers than the new ones.
Its mask PNG (``masks/<id>.png``, 255 = crack) holds everything the line measurements need, so
those are taken again from it -- once: the record is rewritten -- with its ``features/<id>.parquet``.
``crack_px``/``crack_fraction``/``valid_px`` stay as they were: the PNG no longer tells nodata
from background, and neither count changes with the method. A record whose mask is gone is
left as it is.
"""
from __future__ import annotations

import io
import logging

import numpy as np

from ingest import storage
from jobs.crack_sweep.cracks import WIDTH_METHOD, crack_measurements
from jobs.crack_sweep.features import write_photo_features
from jobs.crack_sweep.outputs import photo_record_uri, record_json
from jobs.runtime.records import read_json_records

log = logging.getLogger("samsp.sweep")

#: the record columns measured from the centre-lines, i.e. what an upgrade replaces
LINE_COLUMNS = ("skeleton_length_px", "max_width_px", "max_width_raw_px", "mean_width_px",
                "cracks", "networks", "network_gap_px", "width_method")


def read_records(output: str) -> dict[str, dict]:
    """Every record under ``output`` by photo id."""
    return read_json_records(storage.join(output, "records"), lambda rec: rec["id"])


def is_current(rec: dict, network_gap_px: int) -> bool:
    """Whether an ok record's line measurements are this version's, with this network gap."""
    return (rec.get("width_method") == WIDTH_METHOD
            and rec.get("network_gap_px") == network_gap_px)


def upgrade_record(output: str, rec: dict, network_gap_px: int) -> bool:
    """Measure one earlier record's lines again from its mask PNG (module docstring); True when
    it was rewritten."""
    from PIL import Image

    try:
        blob = storage.read_bytes(storage.join(output, rec.get("mask") or f"masks/{rec['id']}.png"))
    except FileNotFoundError:
        return False
    mask = np.asarray(Image.open(io.BytesIO(blob))) == 255
    metrics, lines = crack_measurements(mask, None, network_gap_px)
    write_photo_features(output, rec["id"], lines)  # before the record, as a first run writes
    rec.update({k: metrics[k] for k in LINE_COLUMNS})
    rec["measured_with"] = None  # its mm and severity columns follow from the new lines
    storage.write_bytes(photo_record_uri(output, rec["id"]), record_json(rec))
    return True


def upgrade_records(output: str, records: dict[str, dict], network_gap_px: int) -> dict[str, dict]:
    """Every ok record measured by an earlier method or network gap, measured again."""
    old = [rec for rec in records.values()
           if rec.get("status") == "ok" and not is_current(rec, network_gap_px)]
    if old:
        log.info("measuring %d earlier record(s) again from their masks (centre-line width %s, "
                 "network gap %d px)", len(old), WIDTH_METHOD, network_gap_px)
    for rec in old:
        upgrade_record(output, rec, network_gap_px)
    return records


__all__ = ["LINE_COLUMNS", "is_current", "read_records", "upgrade_record", "upgrade_records"]
