"""Chaos at length: N SIGKILLs at random moments of one training run.

  python benchmarks/chaos.py [--kills 50] [--steps 200] [--seed 0] [--workdir DIR]

Trains the tests' tiny causal config (tests/tiny.py: 2 x 64, seq_len 32,
batch 8, fixture corpus) for --steps steps with a checkpoint every 4 steps and
an evaluation every 10, once uninterrupted and once under --kills SIGKILLs
(tests/chaos.py: during steps, async checkpoint writes and evaluation), each
followed by a rerun of the same command. Prints each kill, the count per kind,
whether every logged loss and every final parameter is bitwise equal to the
uninterrupted run's, the checkpoints quarantined as unreadable, and the wall
time.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from chaos import chaos, losses, run_flags  # noqa: E402
from tiny import run_cli  # noqa: E402

from tokjax.restore import load_run  # noqa: E402

EVAL_EVERY = 10


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--kills", type=int, default=50)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="", help="Default: a new temporary directory.")
  args = parser.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix="tokjax_chaos_")
  flags = run_flags(os.path.join(root, "tfds"), args.steps, EVAL_EVERY)
  reference, workdir = os.path.join(root, "reference"), os.path.join(root, "chaos")
  run_cli("train", f"--workdir={reference}", *flags, timeout=3600)
  start = time.perf_counter()
  kills = chaos(workdir, flags, args.kills, args.steps, EVAL_EVERY, seed=args.seed)
  wall = time.perf_counter() - start
  for i, kill in enumerate(kills):
    print(f"kill {i + 1:>2}: {kill.kind:<10} target step {kill.target_step:>4}, last logged "
          f"{kill.logged_step:>4}, {'killed' if kill.killed else 'had already exited'}")
  print("kills per kind:", dict(collections.Counter(k.kind for k in kills if k.killed)),
        f"({sum(not k.killed for k in kills)} moments never came)")
  ref_losses, got_losses = losses(reference), losses(workdir)
  print(f"losses: {len(got_losses)} steps logged, bitwise equal to the uninterrupted run: "
        f"{got_losses == ref_losses}")
  (_, params, step), (_, ref_params, _) = load_run(workdir), load_run(reference)
  equal = all(np.array_equal(np.asarray(a), np.asarray(b))
              for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
  print(f"final parameters (step {step}) bitwise equal: {equal}")
  corrupt = os.path.join(workdir, "corrupt_checkpoints")
  print("quarantined checkpoints:", sorted(os.listdir(corrupt)) if os.path.isdir(corrupt) else [])
  print(f"wall time under chaos: {wall:.0f} s for {args.kills} kills + the final rerun")


if __name__ == "__main__":
  main()
