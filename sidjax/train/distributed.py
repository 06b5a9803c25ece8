"""Multi-process start-up: ``jax.distributed.initialize`` from what the scheduler provides.

Call :func:`maybe_initialize` first thing, before any JAX computation. Sources, first match wins:

* ``SIDJAX_COORDINATOR`` (``host:port``), ``SIDJAX_NUM_PROCESSES``, ``SIDJAX_PROCESS_ID``: set by
  ``launch/local_multiprocess.sh`` or by hand; CPU processes talk through gloo collectives.
* SLURM (``SLURM_NTASKS`` > 1, one task per GPU) and Cloud TPU VMs (``TPU_WORKER_HOSTNAMES`` with
  more than one worker): JAX's own cluster detection reads the coordinator, count and id.
* otherwise: a single process, nothing to do.
"""

from __future__ import annotations

import os

import jax


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def detect(env: dict | None = None) -> str:
    """Which launcher set up this process: ``sidjax``, ``slurm``, ``tpu`` or ``single``."""
    env = os.environ if env is None else env
    if env.get("SIDJAX_COORDINATOR"):
        return "sidjax"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    return "single"


def maybe_initialize() -> tuple[int, int]:
    """Initializes multi-process JAX when launched as several processes; returns
    ``(process_index, process_count)``. A single process is left alone."""
    kind = detect()
    if kind == "sidjax":
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["SIDJAX_COORDINATOR"],
            num_processes=_env_int("SIDJAX_NUM_PROCESSES"),
            process_id=_env_int("SIDJAX_PROCESS_ID"))
    elif kind in ("slurm", "tpu"):
        jax.distributed.initialize()
    return jax.process_index(), jax.process_count()
