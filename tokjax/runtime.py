"""Process start-up shared by the CLIs: multi-process init and the compile cache."""
from __future__ import annotations

import os
import time

import jax
from absl import logging

_IMPORTED_AT = time.time()

# XLA:CPU hands matmuls to YNNPACK by default, which has native bfloat16
# kernels (Eigen upcasts bfloat16 to float32 at about half the speed) but runs
# float32 batched matmuls slower: the attention's [256 x 64] x [64 x 256]
# products at 57-72 GFLOP/s against Eigen's 86-100, with the projections' 2-D
# matmuls as fast either way. Turning YNNPACK fusions off made the float32
# train step 7-15% faster on a 2-core AMD EPYC (docs/performance.md).
_YNN_FUSIONS_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def process_start_time() -> float:
  """When this process started, as a time.time() stamp (10 ms resolution).

  From /proc/self/stat on Linux (so it counts the interpreter's own start and
  every import); elsewhere, when this module was imported.
  """
  try:
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # Field 22: starttime.
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started)
  except (OSError, ValueError, IndexError, AttributeError):
    return _IMPORTED_AT


def initialize(compute_dtype: str | None = None, cpu_devices: int = 0) -> None:
  """Chooses XLA:CPU's matmul kernels for `compute_dtype` (`configure_xla_cpu`;
  None leaves XLA's default), splits the host CPU into `cpu_devices` devices
  (`configure_cpu_devices`; 0 leaves it as it is), joins a multi-process run
  when launched as one, and enables the compile cache. Call it before any
  computation.

  - `launch/local_multiprocess.sh` sets JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID (CPU processes talk through gloo).
  - `launch/tpu_vm.sh` and `launch/slurm.sbatch` set TOKJAX_DISTRIBUTED=1, and
    `jax.distributed.initialize()` discovers the TPU slice or SLURM job itself.
  """
  logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO.
  if compute_dtype is not None:
    configure_xla_cpu(compute_dtype)
  if cpu_devices:
    configure_cpu_devices(cpu_devices)
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
  if cpu_devices and jax.default_backend() == "cpu" and jax.local_device_count() != cpu_devices:
    raise ValueError(f"cpu_devices={cpu_devices}, but JAX's CPU backend had already started with "
                     f"{jax.local_device_count()} devices: set it before any JAX computation.")
  # One cache per process layout, so a multi-process executable is never
  # reused by a single-process run (or the reverse).
  layout = f"jax-{jax.process_count()}proc"
  cache = env.get("TOKJAX_JAX_CACHE", os.path.expanduser(f"~/.cache/tokjax/{layout}"))
  configure_compile_cache(cache, min_compile_time_secs=1.0)


def configure_xla_cpu(compute_dtype: str) -> None:
  """Routes XLA:CPU's matmuls to Eigen for a float32 run (see _YNN_FUSIONS_FLAG).

  Adds `--xla_cpu_experimental_ynn_fusion_type=` (no YNNPACK fusions) to
  XLA_FLAGS when `compute_dtype` is 'float32'; any other dtype keeps XLA's
  default, and a value the user already put in XLA_FLAGS always wins. XLA
  reads XLA_FLAGS when the first backend starts, so call this before any
  computation. It changes nothing on GPU or TPU.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if compute_dtype == "float32" and _YNN_FUSIONS_FLAG not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FUSIONS_FLAG}=".strip()


def configure_cpu_devices(num_devices: int) -> None:
  """Makes XLA:CPU present the host as `num_devices` devices.

  XLA:CPU runs a batched matmul (the attention's q k^T and p v, one small
  product per row and head) on one core, but the devices of one process run
  concurrently, so batch-sharded work spread over one device per core uses
  them all: AR decoding at batch 32 ran 18-45% faster on a 2-core AMD EPYC
  with 2 devices than with 1 (`benchmarks/sampler_speed.py --cpu_devices 2`).
  Sets --xla_force_host_platform_device_count in XLA_FLAGS (replacing a value
  there). XLA reads it when the CPU backend starts, so call this first; the
  persistent compile cache then stays off (`configure_compile_cache`).

  Raises:
    ValueError: num_devices < 1.
  """
  if num_devices < 1:
    raise ValueError(f"cpu_devices must be >= 1 (one per core is fastest); got {num_devices}.")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_CPU_DEVICES_FLAG)]
  os.environ["XLA_FLAGS"] = " ".join([*flags, f"{_CPU_DEVICES_FLAG}={num_devices}"])


def configure_compile_cache(cache_dir: str, min_compile_time_secs: float) -> bool:
  """Enables jax's persistent compilation cache in `cache_dir`; returns whether it is on.

  It stays off on CPU when more than one device takes part (several processes,
  or --xla_force_host_platform_device_count): an XLA:CPU executable restored
  from the cache can deadlock in its collectives. XLA makes every device start
  its collectives in one order through "scheduling" edges between the thunks
  that share a communicator resource, but the thunk serializer re-creates that
  resource separately for each nested sequence (a while loop's condition or
  body, a call, a conditional). The restored executable thus lacks the edges
  between such a loop and the other collectives, devices start them in
  different orders, blocked collectives use up the thread pool, and XLA aborts
  ("Termination timeout ... Exiting"). Freshly compiled programs keep the edges.
  One CPU device runs no collectives, so single-process CLIs keep the cache.
  (Another CPU cache defect, entries rejected on reload: jax-ml/jax#38445.)
  """
  if jax.default_backend() == "cpu" and jax.device_count() > 1:
    jax.config.update("jax_enable_compilation_cache", False)
    return False
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
  return True
