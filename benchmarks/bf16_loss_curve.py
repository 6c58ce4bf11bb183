"""bfloat16 against float32 training on the quickstart: do the loss curves agree?

  python benchmarks/bf16_loss_curve.py --out /tmp/tokjax/bf16 [--steps 400] [--window 50]

Three runs of the quickstart (configs/shakespeare.py, causal) through the real
CLI, `tokjax.train`, each `--steps` steps long:

  float32, seed 0    the reference;
  float32, seed 1    the noise scale: another initialisation and data order;
  bfloat16, seed 0   `config.model.dtype='bfloat16'` (float32 parameters and
                     optimizer state, bfloat16 activations and matmul inputs).

bfloat16 "matches float32 within noise" when, in every window of `--window`
logged steps, its mean train loss is closer to float32's (same seed: same
initialisation, same batches) than float32 seed 1 is, and the final validation
bits per byte (the exact NLL over the whole validation split) differ by less
than the seed-to-seed difference. The script prints the per-window means, the
differences, both verdicts and each run's tokens/s; nothing is hard-coded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"float32 seed 0": ("float32", 0), "float32 seed 1": ("float32", 1),
        "bfloat16 seed 0": ("bfloat16", 0)}


def train(workdir: str, dtype: str, seed: int, steps: int) -> list[dict]:
  """Runs tokjax.train to `steps` (resuming if `workdir` has a checkpoint) and
  returns its metrics.jsonl records."""
  cmd = [sys.executable, "-m", "tokjax.train", "--config", f"{ROOT}/configs/shakespeare.py",
         "--workdir", workdir, f"--config.model.dtype={dtype}", f"--config.seed={seed}",
         f"--config.num_train_steps={steps}", f"--config.eval_every_steps={steps}",
         f"--config.checkpoint_every_steps={steps}"]
  subprocess.run(cmd, check=True, cwd=ROOT)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def window_means(records: list[dict], window: int) -> dict[int, float]:
  """Mean logged train loss per window of `window` steps, keyed by its last step."""
  sums: dict[int, list[float]] = {}
  for r in records:
    if "loss" in r:
      end = -(-r["step"] // window) * window
      sums.setdefault(end, []).append(r["loss"])
  return {end: sum(v) / len(v) for end, v in sorted(sums.items())}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="folder for the three workdirs")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--window", type=int, default=50)
  args = parser.parse_args()

  records = {name: train(os.path.join(args.out, name.replace(" ", "_")), dtype, seed, args.steps)
             for name, (dtype, seed) in RUNS.items()}
  means = {name: window_means(r, args.window) for name, r in records.items()}
  ref, other, bf16 = (means[name] for name in RUNS)
  print(f"\nmean train loss (nats/token) per {args.window}-step window")
  print(f"{'steps to':>8} " + " ".join(f"{name:>16}" for name in RUNS)
        + f" {'|bf16 - f32|':>13} {'|seed1 - seed0|':>16}")
  within = True
  for end in ref:
    gap, noise = abs(bf16[end] - ref[end]), abs(other[end] - ref[end])
    within &= gap <= noise
    print(f"{end:>8} " + " ".join(f"{means[name][end]:>16.4f}" for name in RUNS)
          + f" {gap:>13.4f} {noise:>16.4f}")
  final = {name: [r for r in recs if "eval/bits_per_byte" in r][-1] for name, recs in records.items()}
  bpb = {name: final[name]["eval/bits_per_byte"] for name in RUNS}
  speed = {name: sorted(r["tokens_per_s"] for r in recs if "tokens_per_s" in r)
           for name, recs in records.items()}
  print("\nvalidation bits/byte (exact NLL, whole split) and median train tokens/s:")
  for name in RUNS:
    print(f"  {name:<16} {bpb[name]:.4f}   {speed[name][len(speed[name]) // 2]:,.0f} tokens/s")
  bpb_gap = abs(bpb["bfloat16 seed 0"] - bpb["float32 seed 0"])
  bpb_noise = abs(bpb["float32 seed 1"] - bpb["float32 seed 0"])
  print(f"\nevery window's bf16 gap <= the seed-to-seed gap: {within}")
  print(f"validation: |bf16 - f32| = {bpb_gap:.4f} bits/byte, |seed 1 - seed 0| = "
        f"{bpb_noise:.4f}: {'within' if bpb_gap <= bpb_noise else 'outside'} noise")


if __name__ == "__main__":
  main()
