"""Starting or joining Ray, loopback-only by default (see ../shared/STACK.md: Ray binds to every interface
unless told otherwise)."""
from __future__ import annotations

import os

from aimass.settings import Settings, private_dir

# Must be set before `ray` is first imported: it makes a local Ray bind to 127.0.0.1 on Linux.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray Train's controller polls its workers every 2 s and notices a finished job only at its next poll: a job
# on the demo returned 4.7 s after its worker's loop ended, 0.7-1.0 s with polls every 0.2 s. A poll is one
# small call per worker. Ray Train reads this only from the driver's environment and passes it on.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def init(settings: Settings, num_cpus: int | None = None):
    """Join the configured cluster, or start a local loopback-only one; idempotent."""
    import ray

    if ray.is_initialized():
        return ray
    if settings.ray_address:
        ray.init(address=settings.ray_address, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(
            _node_ip_address=settings.host,
            include_dashboard=False,
            num_cpus=num_cpus,
            logging_level="WARNING",
            _temp_dir=str(_short_tmp(settings)),
        )
    return ray


def _short_tmp(settings: Settings):
    # Ray's unix socket paths must stay under 107 bytes, so its temp folder cannot live deep in the home.
    import hashlib
    import tempfile
    from pathlib import Path

    tag = hashlib.sha1(str(settings.home).encode()).hexdigest()[:8]
    return private_dir(Path(tempfile.gettempdir()) / f"aimass-ray-{tag}")


def version() -> str:
    from importlib.metadata import version as v

    return v("ray")
