"""Peak matmul FLOP/s of the devices a run trains on: the denominator of MFU.

GPU and TPU: the vendors' published dense (no sparsity) peak per chip, looked
up by `jax.devices()[0].device_kind`, times the number of devices. CPU: measured
in process, an n x n x n matmul in the compute dtype with float32 accumulation,
best of several runs, once per (CPU model, dtype, jax version, core count, n);
the result is cached in a JSON file, TOKJAX_PEAK_CACHE (default
~/.cache/tokjax/device_peaks.json), so later runs read it; delete the file to
measure again (say, if other jobs shared the cores then). TOKJAX_PEAK_MATMUL_N
sets n (default 2048; the tests use a small one). An accelerator missing from
the table has no peak: `peak_flops` returns None and logs that once.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import time

import jax
import jax.numpy as jnp

CACHE_ENV = "TOKJAX_PEAK_CACHE"
MATMUL_N_ENV = "TOKJAX_PEAK_MATMUL_N"

# Dense peak FLOP/s per chip, keyed by a regular expression that must match the
# whole lower-cased device_kind, most specific first. Sources: the NVIDIA A100,
# H100 and H200 datasheets (nvidia.com/en-us/data-center/a100, /h100, /h200; the
# datasheets quote tensor-core figures with 2:4 sparsity, halved here) and Google
# Cloud's TPU pages (cloud.google.com/tpu/docs/system-architecture-tpu-vm, /v5e,
# /v5p, /v6e). "tensorfloat32" is what a float32 matmul gets on these GPUs at
# JAX's default precision; "float32" (no tensor cores) is for
# jax_default_matmul_precision=highest or float32. TPUs multiply float32 in
# bfloat16 passes at the default precision and publish no float32 figure.
PUBLISHED = (
    (r"tpu v2", {"bfloat16": 45e12}),
    (r"tpu v3", {"bfloat16": 123e12}),
    (r"tpu v4", {"bfloat16": 275e12}),
    (r"tpu v5 lite|tpu v5e", {"bfloat16": 197e12}),
    (r"tpu v5p?", {"bfloat16": 459e12}),
    (r"tpu v6 lite|tpu v6e", {"bfloat16": 918e12}),
    (r"nvidia a100.*", {"bfloat16": 312e12, "tensorfloat32": 156e12, "float32": 19.5e12}),
    (r"nvidia h100 pcie", {"bfloat16": 756e12, "tensorfloat32": 378e12, "float32": 51e12}),
    (r"nvidia h[12]00 nvl", {"bfloat16": 835.5e12, "tensorfloat32": 417.5e12, "float32": 60e12}),
    # H100 SXM ("NVIDIA H100 80GB HBM3"), H200 SXM and GH200 share the figures.
    (r"nvidia g?h[12]00.*", {"bfloat16": 989.5e12, "tensorfloat32": 494.5e12, "float32": 67e12}),
)

_warned: set[str] = set()


def peak_flops(dtype) -> tuple[float | None, str]:
  """(peak FLOP/s of all the run's devices for matmuls in `dtype`, where it comes from).

  The peak is None, and the source says why, when no figure is known. On CPU
  the measured peak of this process is multiplied by the process count (each
  process is taken to have its own host).
  """
  dtype = jnp.dtype(dtype).name
  device = jax.devices()[0]
  if device.platform == "cpu":
    per_process, source = cpu_peak(dtype)
    return per_process * jax.process_count(), source
  per_chip, source = published_peak(device.device_kind, dtype)
  if per_chip is None:
    if source not in _warned:
      _warned.add(source)
      logging.warning("%s", source)
    return None, source
  return per_chip * jax.device_count(), f"{source} x {jax.device_count()} devices"


def published_peak(device_kind: str, dtype: str) -> tuple[float | None, str]:
  """(dense peak FLOP/s of one chip, source) from `PUBLISHED`; None when unknown."""
  kind = device_kind.lower()
  column = _published_column(dtype)
  for pattern, peaks in PUBLISHED:
    if re.fullmatch(pattern, kind):
      if column not in peaks:
        return None, f"no published {column} peak for {device_kind!r}: no MFU"
      return peaks[column], f"published {column} peak of a {device_kind}: {peaks[column]:.4g}"
  return None, f"unknown accelerator kind {device_kind!r}, no published peak: no MFU"


def _published_column(dtype: str) -> str:
  if dtype != "float32":
    return "bfloat16"  # float16 has the same figures on these chips.
  precision = str(jax.config.jax_default_matmul_precision or "default").lower()
  if precision in ("highest", "float32"):
    return "float32"
  if precision in ("bfloat16", "fastest"):
    return "bfloat16"
  on_tpu = jax.devices()[0].platform == "tpu"
  return "bfloat16" if on_tpu else "tensorfloat32"


def cpu_peak(dtype: str, n: int | None = None) -> tuple[float, str]:
  """(measured matmul FLOP/s of this process on CPU, source), cached per machine."""
  n = n or int(os.environ.get(MATMUL_N_ENV, 2048))
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  machine = f"{cpu_model()}, {cores} cores"
  key = f"{machine} | {dtype} | jax {jax.__version__} | n={n}"
  path = cache_path()
  cached = _read_json(path).get(key)
  if cached is None:
    cached = {"flops_per_s": matmul_peak(dtype, n), "measured": time.strftime("%Y-%m-%d %H:%M")}
    _write_json(path, dict(_read_json(path), **{key: cached}))
  return cached["flops_per_s"], f"measured {dtype} {n}^3 matmul on {machine} (cached in {path})"


def cache_path() -> str:
  return os.environ.get(CACHE_ENV) or os.path.expanduser("~/.cache/tokjax/device_peaks.json")


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo, else `platform.processor()`."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def best_time(fn, repeats: int) -> float:
  """Seconds of the fastest of `repeats` calls of `fn` (after one warm-up call)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_peak(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n x n x n matmul (f32 accumulation) on the default device, best of `repeats`."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  return 2 * n**3 / best_time(lambda: f(a, b), repeats)


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _write_json(path: str, data: dict) -> None:
  """Writes atomically, so a concurrent reader sees the old file or the new one."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
