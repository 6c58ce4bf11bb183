"""Compile time against depth (scan_layers) and memory / speed of the remat policies.

  python benchmarks/compile_time.py [--layers 4,8,16,32] [--remat none,full,dots_saveable,...]
                                    [--steps 3]

The program measured is the real jitted train step (`trainer.make_train_step`:
causal objective, AdamW, global batch 16 x seq 256, one device):

1. Depth sweep at d_model 256 (size=base, num_layers varied), scan_layers off
   and on: seconds to lower (trace to StableHLO) and to compile (XLA), and the
   step time. Unrolled layers give XLA num_layers copies of the block; scanned
   layers one loop body, so their compile time should stay flat in depth.
2. Remat policies (`model.remat`) at 8 layers x 512 wide (size=large), both
   layer layouts: `compiled.memory_analysis()` argument / output / temp bytes
   (temp: the activations and other scratch XLA allocates for the step) and
   the step time. Rematerialisation ("gradient checkpointing", Chen et al.
   2016) trades temp memory for recomputation in the backward pass.

The persistent compilation cache stays off, so every compile is cold. Step
times are the best of --steps compiled calls; on a shared machine expect
noise of tens of percent.

Measured 2026-11-25 on 2 shared cores of an AMD EPYC (load average 2.4-4.7
from other jobs, so times are noisy), jax 0.10.2, float32:

  layers             4     8    16    32
  lower s   unrolled 1.1   1.7   3.3   6.3     scanned 0.7  0.9  0.6  0.9
  compile s unrolled 6.4   7.9  10.3  14.8     scanned 10.4 10.3 10.9  5.9
  step s    unrolled 1.7   3.7   7.3   7.7     scanned 2.0  4.3  8.3  8.6

  8 x 512, temp MiB (argument 291, output 291 in every row) / step s:
    remat                             unrolled       scanned
    none                              2337 / 5.2     3450 / 6.7
    full                              2337 / 8.2      497 / 5.8
    dots_saveable                     2337 / 7.1     1077 / 5.2
    dots_with_no_batch_dims_saveable  2337 / 5.5      933 / 5.1

With unrolled layers XLA:CPU schedules the recomputation inside the forward
pass, so remat costs time and saves no memory there; in a scan each layer's
recomputation runs in its backward iteration. Scanned without remat, the
stacked residuals take more temp memory than the unrolled program's.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

from tokjax.checkpoint import abstract_with_shardings
from tokjax.config import load_config_file
from tokjax.device_peak import best_time
from tokjax.experiment import Experiment
from tokjax.trainer import make_train_step

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "shakespeare.py")
SEQ_LEN, BATCH = 256, 16
MIB = 1 << 20


def experiment(size: str, **model) -> Experiment:
  """The causal experiment of configs/shakespeare.py's `size`, model fields overridden."""
  config = load_config_file(CONFIG, f"size={size}")
  config.seq_len, config.batch_size = SEQ_LEN, BATCH
  config.model.update(model)
  config.mesh.shape = (1,)
  return Experiment.create(config)


def compile_step(exp: Experiment):
  """(lower seconds, compile seconds, the compiled train step)."""
  step = make_train_step(exp)
  state = abstract_with_shardings(exp.abstract_state, exp.state_shardings)
  batch = jax.ShapeDtypeStruct((BATCH, SEQ_LEN), np.int32, sharding=exp.batch_sharding)
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return lowered_at - start, time.perf_counter() - lowered_at, compiled


def step_seconds(exp: Experiment, compiled, steps: int) -> float:
  """Best wall time of `steps` calls of the compiled step, after one warm-up call."""
  tokens = np.random.default_rng(0).integers(0, 256, (BATCH, SEQ_LEN), np.int32)
  batch = jax.device_put(tokens, exp.batch_sharding)
  state = [exp.init_state()]

  def step():  # The state is donated: each call continues from the last one's.
    state[0], metrics = compiled(state[0], batch)
    return metrics

  return best_time(step, steps)


def depth_sweep(layers: list[int], steps: int) -> None:
  print(f"\nDepth sweep: d_model 256, batch {BATCH} x seq {SEQ_LEN}, train step (causal)")
  print(f"{'layers':>6} {'scan':>5} {'lower s':>8} {'compile s':>10} {'step ms':>8}")
  for num_layers in layers:
    for scan in (False, True):
      exp = experiment("base", num_layers=num_layers, scan_layers=scan)
      lower_s, compile_s, compiled = compile_step(exp)
      step_ms = 1e3 * step_seconds(exp, compiled, steps)
      print(f"{num_layers:>6} {str(scan):>5} {lower_s:>8.2f} {compile_s:>10.2f} {step_ms:>8.0f}",
            flush=True)


def remat_sweep(policies: list[str], steps: int) -> None:
  print(f"\nRemat policies: 8 layers x d_model 512, batch {BATCH} x seq {SEQ_LEN}, train step")
  print(f"{'remat':>32} {'scan':>5} {'arg MiB':>8} {'out MiB':>8} {'temp MiB':>9} "
        f"{'compile s':>10} {'step ms':>8}")
  for scan in (False, True):
    for remat in policies:
      exp = experiment("large", scan_layers=scan, remat=remat)
      _, compile_s, compiled = compile_step(exp)
      memory = compiled.memory_analysis()
      step_ms = 1e3 * step_seconds(exp, compiled, steps)
      print(f"{remat:>32} {str(scan):>5} {memory.argument_size_in_bytes / MIB:>8.1f} "
            f"{memory.output_size_in_bytes / MIB:>8.1f} {memory.temp_size_in_bytes / MIB:>9.1f} "
            f"{compile_s:>10.2f} {step_ms:>8.0f}", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--layers", default="4,8,16,32")
  parser.add_argument("--remat", default="none,full,dots_saveable,dots_with_no_batch_dims_saveable")
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  jax.config.update("jax_enable_compilation_cache", False)  # Every compile cold.
  print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}")
  if args.layers:
    depth_sweep([int(n) for n in args.layers.split(",")], args.steps)
  if args.remat:
    remat_sweep(args.remat.split(","), args.steps)


if __name__ == "__main__":
  main()
