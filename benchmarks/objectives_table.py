"""Trains every objective on Shakespeare with one backbone and one token budget.

  python benchmarks/objectives_table.py --out /tmp/tokjax/table [--objectives causal,md4] \
      [--steps 1100] [--size quickstart] [--markdown docs/objectives.md]

Training stops its own validation pass after 8 batches; the table's figure is
the full test split, scored by `tokjax.evaluate`.

Each objective runs through the real CLIs (`tokjax.train`, then
`tokjax.evaluate --split test`), so the table measures what a user gets. The
markdown table has: objective, attention, likelihood kind, test bits per byte
(with the Monte-Carlo standard error for bounds), train tokens/s, wall time,
and one sample. Figures of different kinds are never comparable as numbers:
the kind column says which is an exact NLL, a bound, or a pseudo-likelihood.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from tokjax.config import load_config_file
from tokjax.objectives import REGISTRY, make_objective, make_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(objective: str, args) -> dict:
  """Trains and evaluates one objective; a finished row in --out is reused."""
  workdir = os.path.join(args.out, objective)
  row_path = os.path.join(workdir, "row.json")
  if os.path.exists(row_path):
    return json.load(open(row_path))
  config = f"{ROOT}/configs/shakespeare.py:objective={objective},size={args.size}"
  train = [sys.executable, "-m", "tokjax.train", f"--config={config}", f"--workdir={workdir}",
           f"--config.num_train_steps={args.steps}", "--config.progress_bar=False",
           "--config.sampler.num_samples=1", "--config.final_eval_steps=8"]
  start = time.perf_counter()
  subprocess.run(train, check=True, cwd=ROOT)
  wall = time.perf_counter() - start
  subprocess.run([sys.executable, "-m", "tokjax.evaluate", f"--workdir={workdir}", "--split=test"],
                 check=True, cwd=ROOT)
  report = json.load(open(os.path.join(workdir, "eval_test.json")))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [r["tokens_per_s"] for r in map(json.loads, f) if "tokens_per_s" in r]
  samples_path = os.path.join(workdir, "samples.json")
  sample = json.load(open(samples_path))["samples"][0] if os.path.exists(samples_path) else ""
  row = dict(report, wall_s=wall, tokens_per_s=sum(rates) / len(rates), sample=sample)
  with open(row_path, "w") as f:
    json.dump(row, f)
  return row


def attention_of(objective: str) -> str:
  """The attention the objective trains with, as its config builds it (a mixture
  takes its components')."""
  config = load_config_file(os.path.join(ROOT, "configs", "shakespeare.py"), f"objective={objective}")
  return make_objective(config, make_tokenizer(config)).attention


def markdown(rows: list[dict], command: str, budget: str, note: str) -> str:
  lines = [
      "# Objectives on Shakespeare, one backbone, one token budget", "",
      f"Command: `{command}`", "",
      f"Budget: {budget}. Hardware: the 2-core CPU machine, runs one after another. {note}".strip(),
      "",
      "Bits per byte on the test works (Hamlet, Macbeth). Read the kind column first: "
      "an `exact` NLL of the text, an `exact_conditional` NLL of a suffix given a prefix, an "
      "`elbo_upper_bound` (with its Monte-Carlo standard error), and a `pseudo_likelihood` "
      "(masked positions only, not a bound) are different quantities.", "",
      "| objective | attention | likelihood kind | bits/byte | train tokens/s | wall time | sample |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if r["kind"] == "none":
      bpb = f"— (disc. accuracy {r['disc_accuracy']:.3f}, AUC {r['disc_auc']:.3f})"
    else:
      bpb = f"{r['bits_per_byte']:.3f}"
    if "bits_per_byte_stderr" in r:
      bpb += f" ± {r['bits_per_byte_stderr']:.3f}"
    sample = " ".join(r["sample"].split())[:80].replace("|", "\\|")
    lines.append(
        f"| {r['objective']} | {attention_of(r['objective'])} | {r['kind']} | {bpb} | "
        f"{r['tokens_per_s']:,.0f} | {r['wall_s'] / 60:.1f} min | {sample or '(no sampler yet)'} |"
    )
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--objectives", default=",".join(REGISTRY))
  parser.add_argument("--steps", type=int, default=1100)
  parser.add_argument("--size", default="quickstart")
  parser.add_argument("--markdown", default=os.path.join(ROOT, "docs", "objectives.md"))
  parser.add_argument("--note", default="", help="A sentence on how this table was measured.")
  args = parser.parse_args()
  rows = [run(name, args) for name in args.objectives.split(",")]
  command = "python benchmarks/objectives_table.py " + shlex.join(sys.argv[1:])
  c = load_config_file(os.path.join(ROOT, "configs", "shakespeare.py"), f"size={args.size}")
  m = c.model
  budget = (f"size={args.size} ({m.num_layers} layers x {m.d_model}), {args.steps} steps x "
            f"{c.batch_size} x {c.seq_len} = {args.steps * c.batch_size * c.seq_len:,} tokens")
  text = markdown(rows, command, budget, args.note)
  os.makedirs(os.path.dirname(args.markdown), exist_ok=True)
  with open(args.markdown, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
