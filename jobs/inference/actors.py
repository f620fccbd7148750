"""Sizing the model actors of a Ray Data pipeline (the segment job's and the crack sweep's): how
many, with how many CPUs, GPUs and torch threads each, leaving CPU for the read tasks."""
from __future__ import annotations

import logging
import math

from jobs.inference.lanes import actor_threads
from jobs.runtime.ray_session import is_local_ray

log = logging.getLogger("samsp.segment")

#: Restarts of a model actor whose process died (lost node, or a fatal CUDA error: see
#: ``jobs.runtime.devices.crash_for_restart``); its block is retried on the new one. Bounded, unlike
#: Ray Data's default (-1), so a GPU that fails every time ends the job instead of looping.
ACTOR_MAX_RESTARTS = 8
#: Retries of a Ray Data task (reads, crops) whose process died: bounded, so an input that
#: kills its reader every time (out of memory) ends as that input's failure instead of a retry
#: loop that never lets the run finish.
TASK_MAX_RETRIES = 2


def largest_node_cpus(default: float) -> float:
    """CPUs of the biggest alive node (``default`` when Ray's state API is not up)."""
    import ray  # the driver imports Ray only for the Ray engine (the local one never does)

    try:
        nodes = ray.nodes()
    except ray.exceptions.RaySystemError:
        return default
    return max((float(nd["Resources"].get("CPU", 0)) for nd in nodes if nd.get("Alive")),
               default=default)


def actor_gpus(requested: float | None, cluster_gpus: float, local: bool) -> float:
    """GPUs per model actor. ``None`` (auto): one when the cluster has a GPU now, else none. An
    explicit request stands on a cluster that shows no GPU yet: GPU nodes scaled from zero join
    only once actors ask for them. Only a ``local`` Ray (started by this process: what it has
    now is all it will ever have) turns the request into CPU actors."""
    if requested is None:
        return 1.0 if cluster_gpus >= 1 else 0.0
    if requested > 0 and cluster_gpus <= 0:
        if local:
            log.warning("predict.num_gpus=%s but this local Ray has no GPU: running on CPU",
                        requested)
            return 0.0
        log.info("predict.num_gpus=%s: no GPU in the cluster yet; the model actors wait for "
                 "the autoscaler to add GPU nodes", requested)
    return float(requested)


def ray_resources(cfg, n_tiles: int, mode: str = "embedded") -> dict:
    """Actor pool size, per-actor CPUs/GPUs and torch threads that leave CPU for reads;
    ``mode`` is ``init_ray``'s (whether the cluster may still grow). ``cfg``: a job config with
    ``predict`` (jobs.inference.config.PredictConfig) and ``pipeline.read_cpus`` (the segment
    job's and the crack sweep's both have them)."""
    import ray  # the driver imports Ray only for the Ray engine (the local one never does)

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    p = cfg.predict
    num_gpus = actor_gpus(p.num_gpus, gpus, local=is_local_ray(mode))
    spare = max(cpus - cfg.pipeline.read_cpus, 0.0)
    batches = max(1, math.ceil(n_tiles / p.batch_size))
    if num_gpus == 0 and p.num_cpus is None:
        # CPU-only, auto: one single-threaded actor per CPU (reads/writes are light next to the
        # model); their logical share is shrunk so `pipeline.read_cpus` stay schedulable for
        # reads -- actors holding every logical CPU would starve the read tasks (hang).
        n = p.num_actors or max(1, int(cpus))
        n = max(1, min(n, batches))
        actor_cpus = max(0.05, math.floor(100 * (spare if spare > 0 else cpus) / n) / 100)
        # An actor lives on one node: never ask for more CPUs than the biggest node has
        # (4 one-CPU nodes, 2 actors -> 1.5 each would be unschedulable and hang).
        node_cpus = largest_node_cpus(default=cpus)
        actor_cpus = min(actor_cpus, node_cpus) if node_cpus > 0 else actor_cpus
        # Fewer batches than CPUs: fewer actors, each with the idle cores as torch threads
        # (the logical share stays as it is, so reads stay schedulable).
        threads = actor_threads(cpus, node_cpus, n, p.torch_threads)
    else:
        actor_cpus = p.num_cpus if p.num_cpus is not None else 1.0
        if num_gpus == 0 and actor_cpus > spare:  # tiny cluster: never take the reads' CPUs
            actor_cpus = max(0.05, round(spare, 2)) if spare > 0 else 0.05
            log.info("predict.num_cpus lowered to %.2f so %.1f CPU stay free for reads",
                     actor_cpus, cfg.pipeline.read_cpus)
        if p.num_actors:
            n = p.num_actors
        elif num_gpus > 0:
            n = max(1, int(gpus // num_gpus))
        else:
            n = max(1, int(spare // actor_cpus)) if spare > 0 else 1
        n = max(1, min(n, batches))
        if num_gpus == 0 and n * actor_cpus > spare > 0:
            n = max(1, int(spare // actor_cpus))
        # torch threads = the actor's CPU share: more threads than reserved CPUs oversubscribe
        # the cores reads/writes use, and OpenMP barriers then stall (measured here: 2 threads
        # on a busy 2-core node ran 5x slower than 1). Scale CPU inference with actors.
        threads = p.torch_threads or max(1, int(actor_cpus))
    read_cpus_task = getattr(cfg.pipeline, "read_task_cpus", None)
    if read_cpus_task is not None and abs(actor_cpus - read_cpus_task) < 1e-6 and num_gpus == 0:
        actor_cpus = round(actor_cpus - 0.01, 2)  # equal resources would let Ray fuse reads into actors
    return {"actors": n, "num_gpus": num_gpus, "num_cpus": actor_cpus, "torch_threads": threads,
            "cluster_cpus": cpus, "cluster_gpus": gpus}
