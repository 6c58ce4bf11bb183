"""Process start-up shared by the CLIs: multi-host init and the compile cache."""
from __future__ import annotations

import os

import jax
from absl import logging


def initialize() -> None:
  """Joins a multi-process run when launched as one, and enables the cache.

  `jax.distributed.initialize()` reads the coordinator from the environment
  (TPU VMs, SLURM, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID set by `launch/local_multiprocess.sh`).
  """
  logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO.
  if _is_multiprocess():
    jax.distributed.initialize()
  cache = os.environ.get("TOKJAX_JAX_CACHE", os.path.expanduser("~/.cache/tokjax/jax"))
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _is_multiprocess() -> bool:
  env = os.environ
  return (
      "JAX_COORDINATOR_ADDRESS" in env
      or "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1
      or "TPU_WORKER_HOSTNAMES" in env and "," in env["TPU_WORKER_HOSTNAMES"]
  )
