"""Masked-token samplers: network calls (NFE), wall time and sample quality.

  python benchmarks/sampler_speed.py [--workdir MD4_RUN] [--judge CAUSAL_RUN] \
      [--random_size large] [--grid_steps 1000] [--num_samples 4]

For an md4 model (a trained run given by --workdir, and random weights of
--random_size), at the model's sequence length: md4 ancestral on a
--grid_steps grid, the same grid cached (a network call only after a step
that unmasked a token), first_hitting (one call per token), and maskgit at 8,
16 and 32 steps. Each line gives NFE, wall seconds (second call, compiled) and
first_hitting's speed-up over the grid. With --judge, each sampler is also
scored in float32 and float64 Gumbel precision: bits per byte under the judge
and the samples' unigram entropy (`tokjax.sample_quality`).
"""
from __future__ import annotations

import argparse
import os
import time


from tokjax import generation, sample_quality
from tokjax.config import load_config_file
from tokjax.experiment import Experiment
from tokjax.restore import load_run

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "shakespeare.py")


def samplers(grid_steps: int) -> list[tuple[str, str, dict]]:
  """(label, sampler name, settings) rows."""
  rows = [(f"md4 grid {grid_steps}", "md4", dict(num_steps=grid_steps)),
          (f"md4 grid {grid_steps} cached", "md4", dict(num_steps=grid_steps, cached=True)),
          ("first_hitting", "first_hitting", {})]
  return rows + [(f"maskgit {k}", "maskgit", dict(num_steps=k)) for k in (8, 16, 32)]


def timed(exp, params, name: str, settings: dict, precision: str, num_samples: int):
  """(texts, record, wall seconds of a second, compiled call)."""
  s = exp.config.sampler
  s.name, s.precision, s.num_samples = name, precision, num_samples
  s[name].update(settings)
  generation.generate(exp, params, prompt="", num_samples=num_samples, seed=0)  # Compile.
  start = time.perf_counter()
  texts, record = generation.generate(exp, params, prompt="", num_samples=num_samples, seed=1)
  return texts, record, time.perf_counter() - start


def run(label: str, exp, params, args, judge=None) -> None:
  print(f"\n[{label}] seq_len {exp.config.seq_len}, {args.num_samples} samples")
  first_hitting_s = {}
  for row, name, settings in samplers(args.grid_steps):
    for precision in ("float32", "float64") if judge else ("float64",):
      texts, record, wall = timed(exp, params, name, dict(settings), precision, args.num_samples)
      first_hitting_s.setdefault(precision, {})[row] = wall
      line = f"  {row:<24} {precision}: NFE {record['nfe']:>5}, {wall:7.2f} s"
      if judge:
        q = sample_quality.judge_report(judge[0], judge[1], texts, seed=0)
        line += (f", judge {q['gen_bits_per_byte']:.3f} bits/byte, entropy "
                 f"{sample_quality.unigram_entropy(texts):.3f} bits/byte")
      print(line)
  for precision, walls in first_hitting_s.items():
    grid = walls[f"md4 grid {args.grid_steps}"]
    print(f"  first_hitting speed-up over the {args.grid_steps}-step grid ({precision}): "
          f"{grid / walls['first_hitting']:.1f}x")


def random_md4(size: str):
  config = load_config_file(CONFIG, f"objective=md4,size={size}")
  config.mesh.shape = (1,)
  exp = Experiment.create(config)
  return exp, exp.init_state()["params"]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", help="A trained md4 run.")
  parser.add_argument("--judge", help="A causal run that scores the trained run's samples.")
  parser.add_argument("--random_size", default="large")
  parser.add_argument("--grid_steps", type=int, default=1000)
  parser.add_argument("--num_samples", type=int, default=4)
  args = parser.parse_args()
  if args.workdir:
    exp, params, step = load_run(args.workdir)
    judge = load_run(args.judge)[:2] if args.judge else None
    run(f"{args.workdir} (step {step})", exp, params, args, judge)
  exp, params = random_md4(args.random_size)
  m = exp.config.model
  run(f"random weights, {m.num_layers} x {m.d_model}", exp, params, args)


if __name__ == "__main__":
  main()
