"""``<output>/<id>/status.json``: each scene's state as its own object, and the lease on it.

Concurrent runs over one output prefix (last night's late run overlapping tonight's, a retry
while the first still runs) each update only their own scenes' objects, every write a
compare-and-swap (``ingest.versioned``): no run can lose another's row, the way rewriting one
shared manifest did. ``manifest.jsonl`` is an index derived from these objects (jobs.manifest).

A status row holds the manifest fields (``id, input, status, error, tiles, tiles_computed,
pixels, seconds, uncertain_tiles, outputs, foreground_fraction, record, run_id, updated``) plus
``started``/``heartbeat`` (epoch seconds) while ``running``.

Lease: a run that is to compute a scene first turns its status into ``running`` with its run id
and its ``holder`` (host, boot id, pid and the pid's start time: jobs.runtime.holder); a
heartbeat thread refreshes ``heartbeat`` every ``pipeline.lease_heartbeat_s`` while the scene is
computed. Another run finding a lease whose holder is gone -- same host, process no longer
there (kill -9, OOM, a CronJob retry right after) -- takes it over at once; a lease of another
host is live until its heartbeat is older than ``pipeline.lease_timeout_s`` (a lost node). A
live lease of another run is left alone ("running in run X"), and the run says so in its
summary and exit code. A scene taken over resumes from its written tiles like any interrupted
scene.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

from ingest import storage, versioned
from ingest.trust import redact_text, redact_uri, uri_identity
from jobs.inputs.scene_ids import safe_stem, short_hash
from jobs.runtime.holder import holder_is_dead, this_process
from jobs.runtime.messages import one_line, utc_now
from jobs.segmentation.record import done_record_matches

DONE = ("ok", "skipped")  # statuses a later run counts as done

log = logging.getLogger("samsp.segment")

STATUS_NAME = "status.json"
RUNNING = "running"


def status_uri(output: str, sid: str) -> str:
    return storage.join(output, sid, STATUS_NAME)


def parse_status(data: Optional[bytes]) -> Optional[dict]:
    """A status row, or None (absent, torn or foreign object: treated as no state)."""
    if data is None:
        return None
    try:
        row = json.loads(data)
    except ValueError:
        return None
    return row if isinstance(row, dict) and "id" in row else None


def read_statuses(output: str, sids: list[str]) -> dict[str, dict]:
    """Status rows of these scenes that have one (S3 reads run concurrently)."""
    got = storage.read_many([status_uri(output, s) for s in sids])
    rows = {}
    for sid in sids:
        row = parse_status(got.get(status_uri(output, sid)))
        if row is not None:
            rows[sid] = row
    return rows


def live_lease_owner(row: Optional[dict], run_id: str, timeout_s: float,
                     now: Optional[float] = None) -> Optional[str]:
    """The run id holding a live lease on the scene, when it is another run's: its holder is
    not known to be gone and its heartbeat is younger than ``timeout_s``."""
    if not row or row.get("status") != RUNNING or row.get("run_id") == run_id:
        return None
    if holder_is_dead(row.get("holder")):
        return None
    age = (now if now is not None else time.time()) - float(row.get("heartbeat") or 0)
    return None if age > timeout_s else str(row.get("run_id") or "?")


def _encode(row: dict) -> bytes:
    return json.dumps(row, sort_keys=True, default=str).encode()


@dataclass
class Decision:
    # "claimed" | "skipped" (done before) | "running" (another run's lease) | "other-input"
    kind: str
    row: Optional[dict] = None  # claimed: the previous state; skipped: the row written
    owner: str = ""             # running: the run holding the lease; claimed: the one taken over
    reason: str = ""            # claimed from another run: why its lease was dead


#: a claimed scene's reason when only its outputs are to be made again (its mask is done)
OUTPUTS_ONLY = "outputs"


def same_output_settings(prev: dict, settings: dict | None) -> bool:
    """Whether a done scene's outputs were made with ``settings`` (this run's ``output:``
    section). A row from before output settings were recorded counts as the same: an upgrade
    does not re-derive every scene's outputs."""
    stored = prev.get("output_settings")
    return settings is None or stored is None or stored == settings


class StatusBoard:
    """This run's view of its scenes' status objects: claim, heartbeat, finish."""

    def __init__(self, output: str, run_id: str, lease_timeout_s: float,
                 heartbeat_s: float | None = None, output_settings: dict | None = None):
        self.output, self.run_id, self.timeout = output, run_id, float(lease_timeout_s)
        # the run's `output:` section: a done scene whose outputs were made with other settings
        # is claimed again, and its outputs re-derived from the stored mask (no tile recomputed)
        self.output_settings = output_settings
        # at least three beats per timeout: one slow or failed write never lets a live lease
        # expire
        self.interval = max(0.2, min(self.timeout / 3, heartbeat_s or self.timeout / 3))
        self.holder = this_process()
        self.held: set[str] = set()
        self.lost: dict[str, str] = {}  # sid -> run that took the lease over from this one
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _stamp(self, row: dict) -> dict:
        """The row as stored: run id, time, a one-line error, and no secret of any URL in it."""
        row = dict(row)
        err = row.get("error") or ""
        row["error"] = one_line(redact_text(str(err))) if err else ""
        if row.get("input"):
            row["input"] = redact_uri(row["input"])
        row["run_id"] = self.run_id
        row["updated"] = utc_now()
        return row

    # ---------------------------------------------------------------- claim

    def decide(self, sid: str, uri: str, record: dict, force: bool,
               legacy: Optional[dict] = None) -> Decision:
        """Skip (done with this record), leave (another run's live lease) or claim the scene.
        ``legacy``: the scene's manifest row from before status objects existed."""

        def change(data):
            cur = parse_status(data)
            # one scene per input identity: the same object signed again is the same scene
            if cur is not None and cur.get("input") and \
                    uri_identity(cur["input"]) != uri_identity(uri):
                return None, Decision("other-input", cur)
            prev = cur if cur is not None else legacy
            owner = live_lease_owner(cur, self.run_id, self.timeout)
            if owner:
                return None, Decision("running", cur, owner)
            if prev and prev.get("status") in DONE and not force and \
                    done_record_matches(prev.get("record"), record) and \
                    same_output_settings(prev, self.output_settings):
                done_in = prev.get("done_run_id") or prev.get("run_id", "?")
                row = dict(prev, id=sid, input=uri, status="skipped", tiles_computed=0,
                           seconds=0.0, error="", done_run_id=done_in)
                for k in ("started", "heartbeat", "holder"):
                    row.pop(k, None)
                row = self._stamp(row)
                return _encode(row), Decision("skipped", row)
            now = time.time()
            lease = self._stamp({"id": sid, "input": uri, "status": RUNNING, "error": "",
                                 "record": record, "started": now, "heartbeat": now,
                                 "holder": self.holder})
            taken = str(cur.get("run_id") or "") if cur and cur.get("status") == RUNNING else ""
            why = ("its process is gone" if taken and holder_is_dead(cur.get("holder"))
                   else f"no heartbeat for over {self.timeout:.0f}s") if taken else ""
            if not taken and prev and prev.get("status") in DONE and not force and \
                    done_record_matches(prev.get("record"), record):
                why = OUTPUTS_ONLY  # the mask is done: only the output settings changed
            return _encode(lease), Decision("claimed", prev, taken, why)

        got = versioned.update(status_uri(self.output, sid), change)
        if got.kind == "claimed":
            with self._lock:
                self.held.add(sid)
            if got.owner:
                log.warning("scene %s: taking over the lease of run %s (%s)", sid, got.owner,
                            got.reason)
        return got

    def claim(self, sid: str, uri: str, record: dict, force: bool,
              legacy: Optional[dict] = None) -> tuple[str, Decision]:
        """:meth:`decide` under the scene's id; ``(id, decision)``. An id whose status names
        another input (a concurrent run gave the stem to its own input first, after this
        run read the index) is disambiguated like any stem collision."""
        decision = self.decide(sid, uri, record, force, legacy)
        if decision.kind == "other-input":

            sid = f"{safe_stem(uri)}-{short_hash(uri_identity(uri))}"
            decision = self.decide(sid, uri, record, force, None)
            if decision.kind == "other-input":
                raise ValueError(f"scene ids {sid!r}: status.json names another input "
                                 f"({decision.row.get('input')})")
        return sid, decision

    # ---------------------------------------------------------------- heartbeat

    def _beat(self, sid: str) -> None:
        def change(data):
            cur = parse_status(data)
            if not cur or cur.get("status") != RUNNING or cur.get("run_id") != self.run_id:
                return None, str((cur or {}).get("run_id") or "?")
            return _encode(dict(cur, heartbeat=time.time())), ""

        taker = versioned.update(status_uri(self.output, sid), change)
        if taker:
            with self._lock:
                self.held.discard(sid)
                self.lost[sid] = taker
            log.warning("scene %s: its lease was taken over by run %s", sid, taker)

    def heartbeat_once(self) -> None:
        with self._lock:
            held = sorted(self.held)
        if not held:
            return
        with cf.ThreadPoolExecutor(max_workers=min(8, len(held)), thread_name_prefix="lease") as pool:
            for fut in [pool.submit(self._beat, sid) for sid in held]:
                try:
                    fut.result()
                except Exception as err:  # noqa: BLE001 - the next beat tries again
                    log.warning("lease heartbeat: %s", one_line(err, 200))

    def start_heartbeat(self) -> None:
        def loop():
            while not self._stop.wait(self.interval):
                self.heartbeat_once()

        self._thread = threading.Thread(target=loop, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # ---------------------------------------------------------------- finish

    def finish(self, sid: str, row: dict) -> bool:
        """Write the scene's final row (ok / failed) if this run still holds its lease; an ok
        row records the output settings its files were made with."""
        row = self._stamp(row)
        if row.get("status") == "ok" and self.output_settings is not None:
            row["output_settings"] = self.output_settings

        def change(data):
            cur = parse_status(data)
            if cur and cur.get("run_id") != self.run_id:  # taken over (and maybe finished)
                return None, str(cur.get("run_id") or "?")
            return _encode(row), ""

        taker = versioned.update(status_uri(self.output, sid), change)
        with self._lock:
            self.held.discard(sid)
            if taker:
                self.lost[sid] = taker
        if taker:
            log.warning("scene %s: run %s took its lease over; this run's %s is not recorded",
                        sid, taker, row.get("status"))
        return not taker
