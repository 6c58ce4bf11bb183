"""Where a train step's time goes on XLA:CPU: a `jax.profiler` trace, summed by op.

  python benchmarks/profile_step.py [--size 6x256] [--dtype bfloat16] [--steps 3]
                                    [--top 25] [--trace_dir /tmp/tokjax_profile]

The step is `benchmarks/peer_pytorch.py`'s (causal LM, configs/shakespeare.py
at that size, batch 16 x seq 256, AdamW, one device), with the XLA:CPU flags
`tokjax.train` picks for the precision. After two warm-up steps, `--steps` steps
run under `jax.profiler.trace(create_perfetto_trace=True)`; the script reads the
trace's op events and prints, per step:

  * ms per op kind (the fusion name without its number: `ynn_fusion` are the
    YNNPACK matmuls, `dot_general` XLA's own dots, the rest elementwise and
    reduction loops), with counts. XLA runs independent ops concurrently, so
    the sum exceeds the wall time; compare kinds and runs, not the sum with it.
  * every dot of the compiled program grouped by operand and result types: a
    bfloat16 step whose dots show float32 operands had them upcast by XLA
    (it has no native kernel for their layout), at half the bfloat16 speed.

Timings on a shared 2-core machine move by 10-30% between processes; profile
twice before reading a difference between two versions.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import time

try:  # Run as a script: benchmarks/ is on sys.path.
  from peer_pytorch import BATCH, SEQ_LEN, make_config
except ImportError:  # python -m benchmarks.profile_step from the repository root.
  from benchmarks.peer_pytorch import BATCH, SEQ_LEN, make_config

from tokjax import runtime


def op_times(trace_dir: str, steps: int) -> collections.Counter:
  """ms per step of each XLA op in the newest perfetto trace under trace_dir."""
  path = max(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True), key=os.path.getmtime)
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  times = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and re.match(r"[a-z_]+(\.\d+)?$", e["name"]):
      times[e["name"]] += e["dur"] / 1e3 / steps
  return times


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="6x256")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--trace_dir", default="/tmp/tokjax_profile")
  args = parser.parse_args()
  runtime.configure_xla_cpu(args.dtype)  # As tokjax.train does, before jax starts.

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from tokjax.compile import dot_types  # pylint: disable=import-outside-toplevel
  from tokjax.experiment import Experiment  # pylint: disable=import-outside-toplevel
  from tokjax.trainer import make_train_step  # pylint: disable=import-outside-toplevel

  exp = Experiment.create(make_config(args.size, args.dtype))
  step, state = make_train_step(exp), exp.init_state()
  tokens = np.random.default_rng(0).integers(0, 256, (BATCH, SEQ_LEN), np.int32)
  batch = jax.device_put(tokens, exp.batch_sharding)
  hlo = step.lower(state, batch).compile().as_text()

  def run(n):
    nonlocal state
    for _ in range(n):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)

  run(2)
  start = time.perf_counter()
  with jax.profiler.trace(args.trace_dir, create_perfetto_trace=True):
    run(args.steps)
  wall = (time.perf_counter() - start) / args.steps * 1e3
  print(f"{args.size} {args.dtype}, batch {BATCH} x seq {SEQ_LEN}: {wall:.0f} ms per profiled "
        f"step (wall, tracing included)")
  by_kind, count = collections.Counter(), collections.Counter()
  for name, ms in op_times(args.trace_dir, args.steps).items():
    by_kind[name.split(".")[0]] += ms
    count[name.split(".")[0]] += 1
  print(f"\nop time per step: {sum(by_kind.values()):.0f} ms in all (ops overlap)")
  for kind, ms in by_kind.most_common(args.top):
    print(f"  {ms:8.1f} ms  {count[kind]:4d} ops  {kind}")
  print("\ndots in the compiled step (operand types -> result type):")
  for (operands, result), n in sorted(collections.Counter(dot_types(hlo)).items()):
    print(f"  {n:4d}  {' x '.join(operands)} -> {result}")


if __name__ == "__main__":
  main()
