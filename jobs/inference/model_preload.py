"""Read the model while the scenes are planned (the local engine).

Planning is I/O (headers, radiometry samples, resume listings); importing torch and samsp and
reading the bundle are ~3 s of mostly single-threaded work on a 2-core machine. Done one after the
other they are a fixed cost every job pays before its first tile -- on a scene of one vit_b tile,
about as long as the model itself (bench/results/SINGLE_TILE_RESULTS.md). Here they overlap: a thread
loads the bundle while the driver plans, and the local engine takes the loaded bundle when it
starts (or waits for the rest of the load).

The Ray engine loads in its actors (a bundle cannot be shared across processes), so it does not
use this.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("samsp.segment")


def import_model_code() -> None:
    """Import torch and samsp for the local engine (the model's OpenMP threads may share the
    cores with other threads: spinning waiters then stall every parallel region -- measured:
    2 spinning threads next to a busy core ran ~8x slower than passive ones -- so OpenMP is
    told to wait passively, which only works before torch is first imported)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        # torch, imported here on purpose: after OMP_WAIT_POLICY is set, in the loading thread
        import jobs.inference.predictor  # noqa: F401
        import samsp.predict  # noqa: F401
    except Exception:  # noqa: BLE001 - run_local imports again and reports the error
        pass


class ModelPreload:
    """Loads the bundle at ``uri`` in a daemon thread; :meth:`bundle` hands it over once.

    A load that fails is not reported here: :meth:`bundle` returns None and the engine loads
    again in the usual place, which reports the error as a pipeline error (same message as
    without a preload)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._bundle = None
        self._done = threading.Event()
        threading.Thread(target=self._load, name="load-model", daemon=True).start()

    def _load(self) -> None:
        try:
            import_model_code()
            # samsp imports torch: in this loading thread, beside planning
            from samsp import load_bundle

            self._bundle = load_bundle(self.uri)
        except Exception as err:  # noqa: BLE001 - reported by the engine's own load
            log.debug("model preload of %s failed (%s); loading again in the engine", self.uri,
                      err)
        finally:
            self._done.set()

    def settle(self, timeout: float = 120.0) -> None:
        """Wait for the load to end (and drop what it loaded): a process must not exit while this
        thread is inside torch's C++ import or load -- the runtime then aborts at exit
        ("terminate called without an active exception") instead of returning the exit code."""
        self._done.wait(timeout)
        self._bundle = None

    def bundle(self):
        """The loaded ``samsp.Bundle`` (waits for the load), or None when it failed. Once: the
        model is handed to one predictor, this object keeps no reference to it."""
        self._done.wait()
        bundle, self._bundle = self._bundle, None
        return bundle


__all__ = ["ModelPreload", "import_model_code"]
