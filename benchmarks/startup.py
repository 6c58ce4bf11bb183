"""Start-up time of `python -m tokjax.train`: from the command to the first completed step.

  python benchmarks/startup.py [--repeats 3] [--variant objective=md4] [--keep DIR]

The quickstart config (configs/shakespeare.py) with one train step, a one-batch
final evaluation and a short sample, three ways, each a fresh process:
  cold    an empty persistent compile cache (TOKJAX_JAX_CACHE, a new temporary
          directory) and a new workdir;
  warm    the cache the cold run filled, another new workdir;
  resume  the warm run's workdir with num_train_steps=2: it restores the
          checkpoint and runs one more step.
Each reads `startup_s` (process start to the first step's completion) and its
phases from the run's metrics.jsonl, where tokjax.trainer logs them with the
first step: launch (interpreter, imports, flags), experiment, peak (the MFU
denominator), data, state (restore, or init and its compile) and first_step
(the step's compile or cache load, and its run); compile(all) is the time JAX
spent tracing, lowering and compiling in them. The command's wall time also
covers the final evaluation and sampling.
An untimed first run prepares the data and measures the CPU peak (both cached
for later runs on this machine), so no timed run does either.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OVERRIDES = ["--config.final_eval_steps=1", "--config.sampler.num_samples=1",
             "--config.sampler.ar.max_new_tokens=8", "--config.sampler.md4.num_steps=8",
             "--config.sampler.maskgit.num_steps=4", "--config.progress_bar=False"]
PHASES = ("launch", "experiment", "peak", "data", "state", "first_step")


def run(variant: str, workdir: str, cache: str, steps: int) -> dict:
  """One `python -m tokjax.train`; its first-step start-up record plus `wall_s`."""
  config = os.path.join(ROOT, "configs", "shakespeare.py") + (f":{variant}" if variant else "")
  cmd = [sys.executable, "-m", "tokjax.train", f"--config={config}", f"--workdir={workdir}",
         f"--config.num_train_steps={steps}", *OVERRIDES]
  start = time.perf_counter()
  out = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, TOKJAX_JAX_CACHE=cache),
                       capture_output=True, text=True)
  wall = time.perf_counter() - start
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    record = [r for r in map(json.loads, f) if "startup_s" in r][-1]  # This run's.
  return dict(record, wall_s=wall)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--variant", default="", help="configs/shakespeare.py variant, e.g. objective=md4")
  parser.add_argument("--keep", default="", help="directory for workdirs and caches (default: a temporary one)")
  args = parser.parse_args()
  root = args.keep or tempfile.mkdtemp(prefix="tokjax-startup-")
  first = run(args.variant, os.path.join(root, "prepare"), os.path.join(root, "prepare-cache"), 1)
  print(f"untimed first run (prepares the data, measures the CPU peak): {first['wall_s']:.1f} s; "
        f"peak: {first.get('peak_source') or 'none'}")
  runs = {"cold": [], "warm": [], "resume": []}
  for i in range(args.repeats):
    cache = os.path.join(root, f"cache{i}")  # Empty: a new directory per repeat.
    runs["cold"].append(run(args.variant, os.path.join(root, f"cold{i}"), cache, 1))
    runs["warm"].append(run(args.variant, os.path.join(root, f"warm{i}"), cache, 1))
    runs["resume"].append(run(args.variant, os.path.join(root, f"warm{i}"), cache, 2))
  columns = ["startup_s", *(f"startup/{p}_s" for p in PHASES), "startup/compile_s", "wall_s"]
  names = ["to 1st step", *PHASES, "compile(all)", "command"]
  print(f"\nseconds, median of {args.repeats} (min-max of startup_s); workdirs in {root}")
  print(f"{'':8}" + "".join(f"{n:>13}" for n in names))
  for kind, records in runs.items():
    cells = [statistics.median(r.get(c, 0.0) for r in records) for c in columns]
    low, high = min(r["startup_s"] for r in records), max(r["startup_s"] for r in records)
    print(f"{kind:8}" + "".join(f"{c:13.2f}" for c in cells) + f"   ({low:.2f}-{high:.2f})")


if __name__ == "__main__":
  main()
