"""The input-contract checks, as the jobs import them: they live in samsp/contract_check.py
(``samsp.segment_file`` checks images with them too, and samsp may not import jobs). Pure
functions; importing them loads no torch."""
from samsp.contract_check import (DEFAULT_GSD_TOLERANCE, ERROR, WARNING, Problem, SceneFacts,
                                  check_band_map, check_bands, check_gsd, check_radiometry,
                                  check_scene, describe_model, describe_scene, scene_gsd_m, split)

__all__ = ["ERROR", "WARNING", "DEFAULT_GSD_TOLERANCE", "Problem", "SceneFacts", "check_band_map",
           "check_bands", "check_gsd", "check_radiometry", "check_scene", "describe_model",
           "describe_scene", "scene_gsd_m", "split"]
