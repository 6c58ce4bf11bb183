"""Train tokens/s of every objective at one shape, against causal's, in one process.

  python benchmarks/objective_throughput.py [--size 6x256] [--dtype float32]
                                            [--objectives causal,md4] [--steps 3] [--windows 3]

Each objective's real jitted train step (`Experiment.create` on
configs/shakespeare.py with `objective=NAME`, `make_train_step`) at one model
shape (L layers x d_model D, D/64 heads, d_ff 4D), seq 256, global batch 16,
one device, on a fixed batch of random bytes. The corruption (masking, span
sampling, ELECTRA's generator sampling) runs inside the step, as in training.
After one warm-up step each (the compile), `--windows` rounds run `--steps`
steps of every objective in turn, so background load hits all alike; the
figure is each objective's median window in tokens/s (batch x seq_len
positions per step) and its ratio to causal's.

What each objective does beyond causal's one causal forward + backward is
printed beside it (EXTRA_WORK): bidirectional attention cannot skip the key
blocks above the diagonal that causal attention skips (3/8 of the attention
matmuls at seq 256, `attention._causal_blocks`), ELECTRA also trains its
generator, multi-token prediction runs extra heads. The XLA:CPU flags are
those `tokjax.train` picks for `--dtype` (`runtime.configure_xla_cpu`).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from tokjax import runtime
from tokjax.config import load_config_file
from tokjax.experiment import Experiment
from tokjax.objectives import REGISTRY
from tokjax.objectives.images import ImageWindows
from tokjax.trainer import make_train_step

try:  # Run as a script: benchmarks/ is on sys.path.
  from train_throughput import CONFIG
except ImportError:  # python -m benchmarks.objective_throughput from the repository root.
  from benchmarks.train_throughput import CONFIG

SEQ_LEN, BATCH = 256, 16
# The objectives that train on token windows of text; the image ones (fsq,
# mae, classifier) need an image dataset and see pixels, not this shape.
TEXT_OBJECTIVES = [n for n, cls in REGISTRY.items() if not issubclass(cls, ImageWindows)]
BIDIRECTIONAL = "bidirectional attention (no causal block skipping)"
EXTRA_WORK = {
    "causal": "-",
    "cm3": "span rearrangement (gathers)",
    "electra": "generator forward + backward and sampling; " + BIDIRECTIONAL,
    "fim": "document rearrangement (gathers)",
    "maskgit": BIDIRECTIONAL,
    "md4": "time embedding MLP; " + BIDIRECTIONAL,
    "meap": "input masking",
    "mixture": "one component objective per step, drawn at random",
    "mlm": BIDIRECTIONAL,
    "multi_token": "extra prediction heads and their cross-entropies",
    "prefix_lm": "prefix attention mask (no causal block skipping)",
    "span_corruption": "span sampling and packing; prefix attention mask",
}


class Runner:
  def __init__(self, objective: str, size: str, dtype: str, tokens: np.ndarray):
    layers, d_model = (int(v) for v in size.split("x"))
    config = load_config_file(CONFIG, f"objective={objective}")
    config.model.update(num_layers=layers, d_model=d_model, num_heads=d_model // 64,
                        d_ff=4 * d_model, dtype=dtype)
    config.seq_len, config.batch_size = SEQ_LEN, BATCH
    config.mesh.shape = (1,)
    self.exp = Experiment.create(config)
    self.step = make_train_step(self.exp)
    self.state = self.exp.init_state()
    self.batch = jax.device_put(tokens, self.exp.batch_sharding)
    self.rates: list[float] = []

  def run(self, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return n * BATCH * SEQ_LEN / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", default="6x256", help="LAYERSxD_MODEL")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--objectives", default=",".join(TEXT_OBJECTIVES))
  parser.add_argument("--steps", type=int, default=3, help="timed steps per window")
  parser.add_argument("--windows", type=int, default=3)
  args = parser.parse_args()
  names = args.objectives.split(",")
  unknown = sorted(set(names) - set(TEXT_OBJECTIVES))
  if unknown or "causal" not in names:
    raise SystemExit(f"--objectives must include causal and name only "
                     f"{', '.join(TEXT_OBJECTIVES)}; "
                     f"unknown: {unknown}")
  runtime.configure_xla_cpu(args.dtype)  # As tokjax.train does, before jax starts.

  tokens = np.random.default_rng(0).integers(0, 256, (BATCH, SEQ_LEN), np.int32)
  runners = {}
  for name in names:
    start = time.perf_counter()
    runners[name] = Runner(name, args.size, args.dtype, tokens)
    runners[name].run(1)
    print(f"{name}: built, compiled and warmed up in {time.perf_counter() - start:.1f} s",
          flush=True)
  for _ in range(args.windows):
    for runner in runners.values():
      runner.rates.append(runner.run(args.steps))

  print(f"\n{args.size} {args.dtype}, batch {BATCH} x seq {SEQ_LEN}, jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}; median of {args.windows} windows of {args.steps} steps")
  causal = statistics.median(runners["causal"].rates)
  print("| objective | tokens/s (min..max) | / causal | work beyond causal's |\n|---|---|---|---|")
  for name, runner in runners.items():
    rate = statistics.median(runner.rates)
    print(f"| {name} | {rate:,.0f} ({min(runner.rates):,.0f}..{max(runner.rates):,.0f}) | "
          f"{rate / causal:.2f} | {EXTRA_WORK.get(name, '?')} |")


if __name__ == "__main__":
  main()
