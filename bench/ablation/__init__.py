"""The training ablation: SAM-SP arms (prompt kinds, self-distillation, K, recipe options) against
single-pass SAM and a U-Net on DeepCrack and EPFL roads, each arm trained for an equal wall-clock
budget. ``run`` trains and evaluates the arms (``python -m bench.ablation.run``), ``steps`` holds
the in-process training steps it calibrates and runs, ``report`` aggregates the seeds and
publishes ``bench/results/ABLATION_<DATASET>_RESULTS.md``; ``run.sh`` is the phased schedule."""
