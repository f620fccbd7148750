"""The one tiled whole-image forward, as the jobs import it: it lives in samsp/sliding_window.py
(``samsp.segment_file`` runs it too, and samsp may not import jobs). Importing it loads no torch."""
from samsp.sliding_window import (SlidingWindow, TileForward, bundle_forward, crops_stitched,
                                  grid_cuts, samsp_forward)

__all__ = ["SlidingWindow", "TileForward", "bundle_forward", "crops_stitched", "grid_cuts",
           "samsp_forward"]
