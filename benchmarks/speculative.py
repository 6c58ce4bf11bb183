"""Speculative decoding on trained runs: acceptance and wall-clock speed-up per drafter.

  python benchmarks/speculative.py --target CAUSAL_RUN --draft SMALL_CAUSAL_RUN \
      [--multi_token MULTI_TOKEN_RUN] [--batch 1] [--max_new_tokens 120] [--repeats 3]

For each drafter ('model': the --draft run; 'recycling': no model; and, with
--multi_token, that run's own extra heads drafting for its trunk), at
temperature 1 (sampling: speculative decoding then draws exactly from the
target, so the comparison is at equal output distribution) and at temperature
0 (greedy), it prints the acceptance rate (accepted / proposed draft tokens),
the mean tokens committed per target forward, and the wall time against plain
KV-cache AR on the same target (each compiled first, then the median of
--repeats calls). EOS is forbidden in both so that every row generates
max_new_tokens tokens.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import jax
import numpy as np

from tokjax.restore import load_run
from tokjax.samplers import autoregressive, model_fns, speculative

PROMPT = "ROMEO:\n"


def timed(fn, repeats: int):
  """(last result, median seconds) of `repeats` calls after one compiling call."""
  jax.block_until_ready(fn(0))
  times, out = [], None
  for seed in range(1, repeats + 1):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(seed))
    times.append(time.perf_counter() - start)
  return out, statistics.median(times)


def compare(label: str, exp, params, args, **drafter) -> None:
  """Prints plain AR vs speculative decoding with `drafter` on run `exp`."""
  tok = exp.tokenizer
  fns = model_fns(exp.graphdef, exp.model_config)
  prompt = np.tile(tok.encode(PROMPT, add_bos=True), (args.batch, 1))
  forbidden = tuple(exp.objective.sampling_spec().forbidden_ids) + (tok.eos_id,)
  common = dict(eos_id=tok.eos_id, pad_id=tok.pad_id, max_new_tokens=args.max_new_tokens,
                forbidden_ids=forbidden)
  for temperature in (1.0, 0.0):
    _, ar_s = timed(lambda seed: autoregressive.sample(
        fns, params, prompt, jax.random.key(seed), temperature=temperature, **common), args.repeats)
    (out, stats), spec_s = timed(lambda seed: speculative.sample_with_stats(
        fns, params, prompt, jax.random.key(seed), temperature=temperature, **common,
        **drafter), args.repeats)
    rates = speculative.summarize(stats)
    print(f"  {label:<34} T={temperature:g}: acceptance {rates['acceptance_rate']:.3f}, "
          f"{rates['tokens_per_round']:.2f} tokens/forward ({int(out.nfe)} forwards for "
          f"{args.max_new_tokens} tokens), {spec_s:.3f} s vs AR {ar_s:.3f} s: "
          f"speed-up {ar_s / spec_s:.2f}x")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--target", required=True, help="A causal run (the target model).")
  parser.add_argument("--draft", help="A smaller causal run with the same tokenizer.")
  parser.add_argument("--multi_token", help="A multi_token run (drafts for itself).")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--max_new_tokens", type=int, default=120)
  parser.add_argument("--num_draft_tokens", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True)
  print(f"{cpu.stdout.strip()}; batch {args.batch}, prompt {PROMPT!r}, "
        f"{args.max_new_tokens} new tokens")
  exp, params, step = load_run(args.target)
  m = exp.config.model
  print(f"target {args.target} (step {step}, {m.num_layers} x {m.d_model})")
  if args.draft:
    draft = speculative.load_draft(args.draft, exp.tokenizer)
    d = load_run(args.draft)[0].config.model
    compare(f"draft model {d.num_layers} x {d.d_model}, k={args.num_draft_tokens}", exp, params,
            args, draft="model", num_draft_tokens=args.num_draft_tokens, **draft)
  for width, depth in ((3, 3), (4, 4)):
    compare(f"token recycling, tree {width} x {depth}", exp, params, args, draft="recycling",
            tree_width=width, tree_depth=depth)
  if args.multi_token:
    exp, params, step = load_run(args.multi_token)
    heads = exp.config.multi_token.num_predict - 1
    print(f"multi_token run {args.multi_token} (step {step}), its trunk as the target")
    compare(f"multi-token heads, k={heads}", exp, params, args, draft="multi_token",
            num_draft_tokens=heads)


if __name__ == "__main__":
  main()
