"""Building the cluster worker pool from the launch settings (called by ``services.factory``).

Joins or starts Ray (``connect``), decides how many local workers to start (``--workers local:N``, else
one per GPU Ray sees, else one), gives the workers the engine flags of this launch, and tells the model
service to load a selected checkpoint on a worker instead of in this process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sdweb.config import LaunchSettings
from sdweb.services.cluster.actor import CheckpointRef
from sdweb.services.cluster.connect import ClusterRequest, connect
from sdweb.services.cluster.pool import RayWorkerPool

logger = logging.getLogger(__name__)

#: Launch flags the workers' engines take from the server's command line.
ENGINE_FLAGS = (
    "precision",
    "no_half_vae",
    "attention",
    "offload",
    "vae_tiling",
    "models_in_memory",
    "threads",
)


def start_pool(settings: LaunchSettings, *, models: Any, options: Any, **pool_options: Any) -> RayWorkerPool:
    request = ClusterRequest(local_workers=settings.workers, address=settings.ray_address)
    ray = connect(request, settings.paths.root)
    flags = {name: getattr(settings, name) for name in ENGINE_FLAGS}
    local: int | None = None
    if request.local:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        local = settings.workers or gpus or 1
        if not gpus and flags["threads"] is None:
            flags["threads"] = max(1, (os.cpu_count() or 1) // local)  # CPU workers share the cores
        logger.info("starting %d local worker(s) on %s", local, f"{gpus} GPU(s)" if gpus else "the CPU")

    def resolve(title: str | None) -> CheckpointRef:
        info = models.find(title) if title else models.find(models.selected_title() or "")
        ensure = getattr(models.registry, "ensure_hash", None)
        if ensure is not None and getattr(info, "kind", "") != "diffusers":
            info = ensure(info)
        return CheckpointRef(
            title=info.title,
            name=getattr(info, "model_name", info.title),
            sha256=getattr(info, "sha256", None),
            size=getattr(info, "size", None),
        )

    pool = RayWorkerPool(
        ray,
        resolve=resolve,
        options=options.as_dict,
        data_dir=str(Path(settings.paths.root)) if request.local else None,
        flags=flags,
        local_workers=local,
        **pool_options,
    )
    models.use_loader(pool.preload)
    return pool
