"""Chaos: SIGKILL a training run at random moments and rerun it after each kill.

Used by tests/test_chaos.py (10 kills) and benchmarks/chaos.py (50). Each
kill picks a moment of one kind, at a random step of the part of the run
still to come:
  step        a random 0-20 ms after the train loss of step s is logged;
  checkpoint  as soon as orbax's temporary directory of a save appears (the
              async write is under way in a background thread);
  evaluation  a random 0-100 ms after the loss of the step before an
              evaluation step is logged (the logger writes a step's metrics
              while the next step runs; the test's evaluation pass is long).
A kill whose moment never comes (the run finished first) is reported as such.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from tiny import CLI_ENV, ROOT, cli_flags

KINDS = ("step", "checkpoint", "evaluation")


def run_flags(data_dir: str, num_steps: int, eval_every: int) -> list[str]:
  """The tiny causal run that chaos kills: a checkpoint every 4 steps and an
  evaluation of 16 batches every `eval_every` (long enough to be hit)."""
  return [*cli_flags(data_dir), f"--config.num_train_steps={num_steps}",
          "--config.checkpoint_every_steps=4", f"--config.eval_every_steps={eval_every}",
          "--config.eval_steps=16"]


@dataclasses.dataclass
class Kill:
  kind: str
  target_step: int
  logged_step: int  # The last step whose loss was logged when the signal went.
  killed: bool  # False: the run had already exited.
  returncode: int


def logged_steps(workdir: str) -> list[int]:
  """Steps whose train loss metrics.jsonl holds (a cut-off last line is skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  steps = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if "loss" in record:
        steps.append(record["step"])
  return steps


def losses(workdir: str) -> dict[int, float]:
  """step -> train loss, each step's last record (a resumed run re-logs steps)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record:
        out[record["step"]] = record["loss"]
  return out


def _temporary_checkpoints(workdir: str) -> set[str]:
  """Names of orbax's temporary (still being written) checkpoint directories."""
  folder = os.path.join(workdir, "checkpoints")
  return {name for name in os.listdir(folder) if "tmp" in name} if os.path.isdir(folder) else set()


def _moment_came(kind: str, workdir: str, target: int, eval_every: int, seen: int,
                 stale: set[str]) -> bool:
  """Whether this run (the records after the first `seen`; temporary
  checkpoints other than the `stale` ones) reached the moment."""
  steps = logged_steps(workdir)[seen:]
  if not steps or steps[-1] < target:
    return False
  if kind == "checkpoint":
    return bool(_temporary_checkpoints(workdir) - stale)
  if kind == "evaluation":
    return (steps[-1] + 1) % eval_every == 0
  return True


def start(workdir: str, flags: list[str]) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "tokjax.train", f"--workdir={workdir}", *flags],
                          cwd=ROOT, env=CLI_ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def kill_once(workdir: str, flags: list[str], kind: str, target: int, eval_every: int,
              rng: np.random.Generator, signum: int = signal.SIGKILL,
              timeout: float = 240) -> Kill:
  """Starts the run and sends `signum` at the first moment of `kind` at or after `target`."""
  seen, stale = len(logged_steps(workdir)), _temporary_checkpoints(workdir)
  proc = start(workdir, flags)
  deadline = time.time() + timeout
  while proc.poll() is None and time.time() < deadline:
    if _moment_came(kind, workdir, target, eval_every, seen, stale):
      time.sleep({"step": rng.uniform(0, 0.02), "evaluation": rng.uniform(0, 0.1)}.get(kind, 0))
      break
    time.sleep(0.001)
  killed = proc.poll() is None
  if killed:
    proc.send_signal(signum)
  _, stderr = proc.communicate()
  if not killed and proc.returncode != 0:
    raise AssertionError(f"the run failed on its own:\n{stderr[-3000:]}")
  steps = logged_steps(workdir)
  return Kill(kind, target, steps[-1] if steps else -1, killed, proc.returncode)


def chaos(workdir: str, flags: list[str], num_kills: int, num_steps: int, eval_every: int,
          seed: int = 0) -> list[Kill]:
  """`num_kills` kills at random moments spread over the run, then a rerun to the end."""
  rng = np.random.default_rng(seed)
  kills = []
  for i in range(num_kills):
    low = 1 + i * (num_steps - 1) // num_kills
    high = 1 + (i + 1) * (num_steps - 1) // num_kills
    kind, target = KINDS[int(rng.integers(len(KINDS)))], int(rng.integers(low, max(low + 1, high)))
    if kind == "evaluation" and target > (num_steps - 1) // eval_every * eval_every - 1:
      kind = "step"  # No evaluation step is left before the end.
    kills.append(kill_once(workdir, flags, kind, target, eval_every, rng))
  proc = start(workdir, flags)
  _, stderr = proc.communicate()
  assert proc.returncode == 0, stderr[-3000:]
  return kills
