"""The AOT memory table of configs/gpt2.py on TPU slices (`tokjax.compile`).

  python benchmarks/aot_memory.py [--sizes small,medium,1b] [--topologies v5p-8,v5p-64]

Each row compiles the real train step ahead of time for the slice, on this
machine (TPU slices need libtpu: pip install -e '.[tpu]'; cpu-N needs none),
one compile at a time, with each size's own mesh preset, batch (256 x 1024
tokens), bfloat16 activations, scanned layers and remat policy. Sizes are GiB
per device; FLOPs are per device per step: XLA's cost analysis (a scanned
layer counted once) and the model's 6 N + 12 L d T per token. A step that
libtpu's compiler itself refuses (out of HBM) shows as such.

Measured 2026-12-07 on 2 cores of an AMD EPYC, jax 0.10.2, libtpu 0.0.42.1
(12.3 minutes in all; a compile's time is mostly the 1024 x 1024 attention:
gpt2 small at seq_len 128 compiles for v5p-8 in 34 s):

  size  topology  mesh    seqs/dev  params  opt   temps  total  HBM    fits  XLA FLOPs  model FLOPs  compile s
  small  v5p-8    1x4x1      64     0.08   0.16  20.90  21.20  95.00  yes   3.42e+12   4.09e+13     145
  small  v5p-64   1x32x1      8     0.01   0.02   2.62   2.69  95.00  yes   1.20e+11   5.11e+12     112
  medium v5p-8    1x4x1      64     0.28   0.56  41.82  42.70  95.00  yes   5.79e+12   1.39e+14     114
  medium v5p-64   1x32x1      8     0.04   0.07   5.24   5.41  95.00  yes   1.79e+11   1.73e+13     120
  1b     v5p-8    1x2x2     128     1.13   2.25  37.32  40.74  95.00  yes   2.59e+13   5.15e+14     122
  1b     v5p-64   1x16x2     16     0.14   0.28   4.96   5.42  95.00  yes   2.04e+12   6.44e+13     117

Medium on v5e-8 (16 GiB chips, 32 sequences per chip) does not fit: libtpu's
compiler stops after 10 s, "HLO temporaries (16.68G) exceeds available HBM
(15.75G)", and `python -m tokjax.compile` exits 1 with the fixes.
"""
from __future__ import annotations

import argparse
import os

from tokjax import compile as aot
from tokjax.config import load_config_file

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "gpt2.py")
COLUMNS = ("size", "topology", "mesh", "seqs/dev", "params", "opt", "temps", "total", "HBM",
           "fits", "XLA FLOPs", "model FLOPs", "compile s")
WIDTHS = (6, 8, 8, 8, 7, 7, 7, 7, 6, 10, 10, 11, 9)


def _line(cells) -> str:
  return "  ".join(str(c).rjust(w) for c, w in zip(cells, WIDTHS))


def _gib(n) -> str:
  return "-" if n is None else f"{n / aot.GIB:.2f}"


def row(size: str, topology: str) -> str:
  """One table row: `size` of configs/gpt2.py compiled for `topology`."""
  config = load_config_file(CONFIG, f"size={size}")
  target = aot.get_topology(topology)
  try:
    r = aot.compile_train_step(config, target)
  except aot.DoesNotFit:
    return _line((size, topology, "", "", "", "", "", "", _gib(target.hbm_bytes),
                  "compiler OOM"))
  mesh = "x".join(str(n) for n in r.mesh.values())
  return _line((size, topology, mesh, r.per_device_batch, _gib(r.param_bytes),
                _gib(r.opt_state_bytes), _gib(r.temp_bytes), _gib(r.total_bytes),
                _gib(r.hbm_bytes), "yes" if r.fits else "NO", f"{r.flops:.2e}",
                f"{r.model_flops:.2e}", f"{r.compile_seconds:.0f}"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="small,medium,1b")
  parser.add_argument("--topologies", default="v5p-8,v5p-64")
  args = parser.parse_args()
  topologies = args.topologies.split(",")
  aot.start_jax(topologies)
  print("mesh: data x fsdp x tensor; GiB and FLOPs per device per step", flush=True)
  print(_line(COLUMNS), flush=True)
  for size in args.sizes.split(","):
    for topology in topologies:
      print(row(size, topology), flush=True)


if __name__ == "__main__":
  main()
