"""Ray for `gen-theta ingest --engine ray` and scaling sweeps: join a cluster or start a local instance.

A fleet runs one Ray cluster (``ray start --head`` on one machine, ``ray start
--address HEAD:6379`` on the others) and every driver joins it with
``--ray-address``; docs/cluster.md says what the machines must share.
"""

from __future__ import annotations

import os
from pathlib import Path


class RayClusterError(RuntimeError):
    """Ray cannot be joined or started as asked; the message says what to do."""


def python_path() -> list[str]:
    """Return PYTHONPATH with this checkout first, so Ray workers import the same gen_theta_model as the driver."""
    root = str(Path(__file__).resolve().parents[1])
    return [root, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]]


def init_ray(address: str = "", num_cpus: int | None = None) -> str:
    """Connect this process to Ray as a driver; returns the cluster's GCS address (host:port).

    ``address``: '' starts a local instance with ``num_cpus`` CPUs (None: all) that listens on
    127.0.0.1 only (Ray's single-machine mode); 'auto' joins the cluster that this machine's
    ``ray start`` joined; 'HOST:PORT' the cluster whose head's GCS listens there; 'ray://HOST:10001'
    goes through Ray Client. Workers get this checkout first on PYTHONPATH (runtime_env), so on a
    cluster it must be at the same path on every node (shared storage, or the same image).
    Raises RayClusterError when the cluster cannot be reached.
    """
    if not address:
        # Read when ray is first imported: GCS, raylet and workers listen on the loopback address only.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    try:
        ray.init(address=address or None, num_cpus=None if address else num_cpus, include_dashboard=False,
                 ignore_reinit_error=True, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(python_path())}})
    except (ConnectionError, TimeoutError) as err:
        raise RayClusterError(f"cannot join the Ray cluster at {address!r}: {err} (is its head running, and if it "
                              "uses token authentication, is RAY_AUTH_MODE=token set here with its token in "
                              "~/.ray/auth_token or RAY_AUTH_TOKEN?)") from err
    return ray.get_runtime_context().gcs_address
