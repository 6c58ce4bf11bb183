"""Process start-up shared by the CLIs: multi-process init and the compile cache."""
from __future__ import annotations

import os

import jax
from absl import logging


def initialize() -> None:
  """Joins a multi-process run when launched as one, and enables the cache.

  - `launch/local_multiprocess.sh` sets JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID (CPU processes talk through gloo).
  - `launch/tpu_vm.sh` and `launch/slurm.sbatch` set TOKJAX_DISTRIBUTED=1, and
    `jax.distributed.initialize()` discovers the TPU slice or SLURM job itself.
  """
  logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO.
  env = os.environ
  if "JAX_NUM_PROCESSES" in env:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        env["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]),
    )
  elif env.get("TOKJAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  # One cache per process layout, so a multi-process executable is never
  # reused by a single-process run (or the reverse).
  layout = f"jax-{jax.process_count()}proc"
  cache = env.get("TOKJAX_JAX_CACHE", os.path.expanduser(f"~/.cache/tokjax/{layout}"))
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
