"""Faults through the real CLI: a preemption (SIGTERM) and 10 SIGKILLs at random
moments (during steps, async checkpoint writes and evaluation), each followed by
a rerun of the same command, end bitwise where an uninterrupted run ends."""
import os
import signal

import jax
import numpy as np

from chaos import chaos, kill_once, losses, run_flags
from tiny import run_cli
from tokjax.restore import load_run

NUM_STEPS, EVAL_EVERY, NUM_KILLS = 40, 10, 10


def test_preemption_and_random_sigkills_end_bitwise_equal_to_an_uninterrupted_run(tmp_path):
  flags = run_flags(str(tmp_path / "tfds"), NUM_STEPS, EVAL_EVERY)
  reference = str(tmp_path / "reference")
  run_cli("train", f"--workdir={reference}", *flags)

  workdir = str(tmp_path / "chaos")
  # SIGTERM: the run saves the step it reached, marks the workdir and exits 0.
  term = kill_once(workdir, flags, "step", 3, EVAL_EVERY, np.random.default_rng(0),
                   signum=signal.SIGTERM)
  assert term.killed and term.returncode == 0
  marked = int(open(os.path.join(workdir, "PREEMPTED")).read())
  assert 3 <= marked < NUM_STEPS and str(marked) in os.listdir(os.path.join(workdir, "checkpoints"))

  kills = chaos(workdir, flags, NUM_KILLS, NUM_STEPS, EVAL_EVERY, seed=1)
  assert all(k.killed and k.returncode == -signal.SIGKILL for k in kills), kills
  assert {k.kind for k in kills} == {"step", "checkpoint", "evaluation"}, kills
  assert not os.path.exists(os.path.join(workdir, "PREEMPTED"))
  assert losses(workdir) == losses(reference) and len(losses(reference)) == NUM_STEPS

  _, params, step = load_run(workdir)
  _, ref_params, ref_step = load_run(reference)
  assert step == ref_step == NUM_STEPS
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
