"""What a NaN or Inf in the loss or gradients does to a run (`config.nan_policy`).

The train step never applies a non-finite update: when the loss or the
gradient norm is NaN or Inf it keeps the parameters and optimizer state as
they were (`keep_if_finite`) and reports `nonfinite` = 1. The loop reads that
flag one step late, as it reads every metric, so the host never waits for the
step in flight, and then, by policy:

  'stop' (default): saves a checkpoint of the current state (every update it
    holds was finite), writes the offending batch to
    WORKDIR/nonfinite_batch_STEP.npy, and raises `NonFiniteError` naming the
    step. Earlier checkpoints are left as they were.
  'skip': goes on; `nonfinite_skipped` in metrics.jsonl counts the skipped
    updates so far.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

NAN_POLICIES = ("stop", "skip")  # `config.nan_policy`, checked by `tokjax.config.validate`.


class NonFiniteError(FloatingPointError):
  """A step's loss or gradients were NaN or Inf under nan_policy='stop'."""


def keep_if_finite(finite: jax.Array, new, old):
  """`new` where the scalar `finite` is True, else `old` (pytrees of one structure)."""
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


class Guard:
  """Checks each step's `nonfinite` flag one step late (see the module docstring)."""

  def __init__(self, policy: str, workdir: str):
    self.policy, self.workdir = policy, workdir
    self.pending = None  # (step, device flag, host batch) of the step in flight.
    self.skipped = 0

  def check(self, step: int | None = None, flag=None, host_batch=None) -> int | None:
    """Records this step's flag and checks the previous step's; returns the
    step whose update was non-finite if the run must stop, else None. Call
    it with no arguments after the last step."""
    previous, self.pending = self.pending, (
        None if step is None else (step, flag, host_batch))
    if previous is None or not bool(jax.device_get(previous[1])):
      return None
    bad_step, _, batch = previous
    self.skipped += 1
    if self.policy == "skip":
      return None
    suffix = f"_process{jax.process_index()}" if jax.process_count() > 1 else ""
    np.save(os.path.join(self.workdir, f"nonfinite_batch_{bad_step}{suffix}.npy"), batch)
    return bad_step

  def error(self, bad_step: int, saved_step: int) -> NonFiniteError:
    return NonFiniteError(
        f"The loss or gradients were NaN/Inf at step {bad_step}; its update was not applied. "
        f"The batch is in {self.workdir}/nonfinite_batch_{bad_step}.npy and checkpoint "
        f"{saved_step} holds the state (only finite updates). Lower the learning rate or "
        "check the data, or set --config.nan_policy=skip to skip such updates.")
