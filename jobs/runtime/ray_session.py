"""Start or join Ray the same way in every job (train, segment, ...).

``init_ray(address)`` decides between two modes:

* **cluster** -- ``address`` (or, when it is None, the ``RAY_ADDRESS`` environment variable, which
  ``ray job submit`` sets for the driver) names a running cluster: ``"auto"``, ``"ray://host:10001"``
  or ``"host:6379"``. The cluster's environment is authoritative: credentials come from the job's
  runtime env (``ray job submit --runtime-env-json '{"env_vars": {...}}'``) or the nodes' IAM role;
  nothing is forwarded, so secrets are never copied into a runtime env that the dashboard shows.
* **embedded** -- no address anywhere: a private single-node Ray is started inside this process
  (``address="local"``, so a stale ``/tmp/ray/ray_current_cluster`` of another user is ignored and a
  cluster started by someone else on this machine is never joined by accident). Its dashboard
  (State API) is bound to 127.0.0.1 on a free port, and its workers inherit this process's
  environment as it is at ``init_ray`` (the raylet is started from this process), so ``AWS_*``
  variables set after Python started but before ``init_ray`` reach them too.

Auth: Ray 2.60 turns token auth on by default for a new local cluster (token from
``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, generated when missing), and a
client joins in token mode whenever a token is available. ``init_ray`` never overrides that: an
explicit ``RAY_AUTH_MODE`` (``token`` or ``disabled``) is respected and forwarded to the embedded
workers; unset, the embedded cluster gets a random token that lives in this process's
environment only (:func:`ephemeral_token`: no ``~/.ray/auth_token`` written, no warning). Even with ``_node_ip_address=127.0.0.1`` the
embedded cluster's GCS listens on all interfaces, so ``disabled`` is only for tests and isolated
machines (the test fixtures and ``make demo`` set it). For ``ray job submit`` to a local head, use
the same mode on both sides (STACK.md): ``RAY_AUTH_MODE=disabled`` for ``ray start`` and the client,
or token mode with the same token.

``init_ray`` is a no-op returning ``"existing"`` when Ray is already initialised in this process
(tests with a session cluster); ``worker_env_vars(mode)`` then tells what to hand to workers.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Literal

from ingest import storage
from jobs.runtime.ports import free_port

log = logging.getLogger(__name__)

RayMode = Literal["embedded", "cluster", "existing"]

#: the driver job id of the Ray that ``init_ray`` started (embedded) or joined (cluster) in this
#: process, so that ``stop_ray`` stops that one only: a Ray the caller started -- also after
#: ours was shut down by other means -- is theirs to stop
_started_job: str | None = None

#: Variables forwarded to workers of an embedded/existing local cluster (values never logged).
FORWARD_PREFIXES = ("AWS_", "SAMSP_S3_")  # credentials chain; the S3 retry policy (s3_retry)
FORWARD_NAMES = ("GDAL_DISABLE_READDIR_ON_OPEN", "CPL_VSIL_USE_TEMP_FILE_FOR_RANDOM_WRITE")


def forwarded_env() -> dict[str, str]:
    """This process's ``AWS_*``, ``SAMSP_S3_*`` (and GDAL S3) variables, to give to Ray workers."""
    return {k: v for k, v in os.environ.items()
            if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES}


def resolve_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address`` if given, else ``$RAY_ADDRESS``, else None (embedded)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in ("local", ""):
        return None
    return address


def ephemeral_token() -> None:
    """Token auth for the embedded cluster without Ray's default side effects: with neither
    ``RAY_AUTH_MODE`` nor a token given, Ray 2.60 generates ``~/.ray/auth_token`` (a file left
    in the user's home by a batch job) and logs a warning on every start. A random token for
    this process and its workers only keeps the cluster closed to others, writes nothing and is
    quiet (an explicit mode is Ray's no-warning path). A user's own mode or token wins."""
    import secrets

    if any(os.environ.get(n) for n in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return
    os.environ["RAY_AUTH_MODE"] = "token"  # explicit: Ray's quiet path
    if not (Path.home() / ".ray" / "auth_token").exists():
        # (a user's own token file is used as it is, and `ray` CLI calls keep working)
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    refresh_ray_config()


def refresh_ray_config() -> None:
    """`import ray` cached the auth mode it saw: refresh it, as Ray's own enabling does."""
    try:
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # another Ray: it reads the environment at init
        pass


def init_ray(address: str | None = None, *, num_cpus: int | None = None,
             num_gpus: int | None = None, log_to_driver: bool = True,
             include_dashboard: bool = True,
             extra_env: dict[str, str] | None = None) -> RayMode:
    """Initialise Ray for a job; returns the mode (see module docstring).

    ``num_cpus``/``num_gpus`` only size an embedded cluster (None: what the machine has).
    ``include_dashboard``: the embedded cluster's dashboard (127.0.0.1, a free port) also
    serves the State API, which Ray Train v2's placement-group cleaner polls; without
    it that actor logs "Failed to query Ray Train Controller actor state" every second.
    ``extra_env`` is added to the embedded workers' environment.
    """
    import ray

    if ray.is_initialized():
        return "existing"
    target = resolve_address(address)
    if target is not None:
        log.info("joining Ray cluster at %s", target)
        ray.init(address=target, log_to_driver=log_to_driver)
        _remember_session()
        return "cluster"

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ephemeral_token()
    env = forwarded_env()
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    dashboard: dict = {}
    if include_dashboard:
        # Known port, so the State API inside our actors targets *this* cluster: without it Ray
        # auto-detects and fails with "Found multiple active Ray instances" when other Ray
        # clusters run on the machine.
        port = free_port()
        dashboard = {"dashboard_host": "127.0.0.1", "dashboard_port": port}
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    env.update(extra_env or {})
    log.info("starting an embedded local Ray (num_cpus=%s, num_gpus=%s, forwarding %d env vars)",
             num_cpus, num_gpus, len(env))
    # No job runtime_env: ray.init starts the raylet from this process and every worker inherits
    # its environment, so the variables only need to be in os.environ while Ray starts. A
    # runtime_env would cost a fresh worker process per actor: Ray reuses the workers it
    # prestarts during ray.init only for jobs without one (checked on Ray 2.60), so each model
    # actor started (and imported Python + ray) from scratch while two prestarted workers idled.

    with storage.environ(env):
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                 include_dashboard=include_dashboard, **dashboard,
                 _node_ip_address="127.0.0.1", log_to_driver=log_to_driver)
    _remember_session()
    return "embedded"


def _current_job() -> str | None:
    import ray

    try:
        return str(ray.get_runtime_context().get_job_id())
    except Exception:  # noqa: BLE001 - no context: nothing of ours to stop
        return None


def _remember_session() -> None:
    global _started_job
    _started_job = _current_job()


def is_local_ray(mode: RayMode) -> bool:
    """Whether this process runs on a single-node Ray it started itself: ``embedded``, or an
    ``existing`` one that an earlier ``ray.init()`` without an address started here (tests). Its
    resources now are all it will ever have; a joined cluster may still add (GPU) nodes."""
    if mode != "existing":
        return mode == "embedded"
    import ray

    # The driver's node object: ``head`` only when ray.init() started the node in this process
    # (joining by address connects to one; Ray Client has none at all).
    node = getattr(ray._private.worker, "_global_node", None)
    return bool(getattr(node, "head", False))


def stop_ray() -> None:
    """Stop the Ray that ``init_ray`` started (or disconnect from the cluster it joined) before
    a job prints its last line: Ray forwards worker log lines on a thread of its own, and one
    printed after the one-line reason or the summary would become the last line. A Ray the
    caller started (a notebook, a test session) is left running. A failing shutdown is
    logged, never allowed to hide that line or fail a finished run."""
    global _started_job
    ours, _started_job = _started_job, None
    if ours is None or "ray" not in sys.modules or not sys.modules["ray"].is_initialized():
        return
    if _current_job() != ours:  # ours was shut down and the caller started another
        return
    try:
        sys.modules["ray"].shutdown()
    except Exception:  # noqa: BLE001
        log.warning("stopping Ray failed", exc_info=True)


def worker_env_vars(mode: RayMode) -> dict[str, str]:
    """Env vars to put in an actor/trainer ``runtime_env`` for this mode.

    Embedded: every worker inherits them from this process (see ``init_ray``). Existing (Ray
    was started earlier in this process, e.g. by a test, possibly before the AWS variables were
    set): forward them now. Cluster: nothing (the cluster's environment is authoritative).
    """
    return forwarded_env() if mode == "existing" else {}


def storage_filesystem(uri: str):
    """``(path, filesystem)`` for ``RunConfig(storage_path=..., storage_filesystem=...)``.

    Local paths come back absolute with ``filesystem=None`` (Ray's default). ``s3://bucket/prefix``
    becomes ``("bucket/prefix", pyarrow.fs.S3FileSystem)`` built from the AWS environment --
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_REGION`` (or
    ``AWS_DEFAULT_REGION``) and ``AWS_ENDPOINT_URL`` (``http://host:port`` for SeaweedFS/MinIO;
    pyarrow does not read that variable itself). Without keys, pyarrow's default credential chain
    (profile, IAM role) is used. The filesystem pickles with its settings, so Ray Train's
    controller and workers on other nodes reach the same store.
    """
    if not uri.startswith("s3://"):
        if "://" in uri:
            raise ValueError(f"storage path {uri!r}: only local paths and s3:// are supported")
        return os.path.abspath(os.path.expanduser(uri)), None
    return storage.arrow_filesystem(uri)
