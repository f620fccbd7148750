"""The jobs' exception types: one base class, one subclass per kind of failure a job reports.

Each carries a one-line message written for the person running the job (never credentials).
The entry scripts map them to exit codes: a config, data or model problem found before any
work ran is a usage error (exit 2); a failure of one scene or photo is recorded in its row and
the others go on. Scene-level reading errors are ``ingest.errors.SceneError``s.
"""
from __future__ import annotations


class JobError(Exception):
    """Base class: a job cannot do what it was asked."""


class ConfigError(JobError, ValueError):
    """A config that does not validate; the message names each bad field."""


class DataError(JobError, ValueError):
    """Training data that is missing, empty or inconsistent."""


class EvalError(JobError, ValueError):
    """Bad arguments, data or bundle for an evaluation."""


class TrainError(JobError, RuntimeError):
    """A problem found before training starts, or a checkpoint that does not fit the model."""


class RunChangedError(JobError):
    """``pipeline.on_change: fail`` and a scene's existing outputs were made with another record."""


class ContractError(JobError, ValueError):
    """A scene or image the model would read wrongly: it does not fit the bundle's input
    contract (jobs/inference/contract_check.py); the message names the bands and the fix."""


__all__ = ["JobError", "ConfigError", "DataError", "EvalError", "TrainError", "RunChangedError",
           "ContractError"]
