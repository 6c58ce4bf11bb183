"""Preemption: SIGTERM ends a run cleanly at the next step boundary.

Schedulers (SLURM, Kubernetes, TPU maintenance events) send SIGTERM some
seconds before they kill a job. The trainer then saves a checkpoint at the
step it has reached, writes WORKDIR/PREEMPTED (holding that step) and exits 0,
so the job can be requeued and the same command resumes exactly
(`launch/slurm.sbatch` requeues on the marker). In a multi-process run every
process must stop at the same step: `jax.distributed.initialize` installs
JAX's preemption notifier, and `multihost_utils.reached_preemption_sync_point`
picks the step all processes agree on.
"""
from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

MARKER = "PREEMPTED"


class Preemption:
  """Whether the run was asked to stop. A context manager, entered on the main
  thread: inside it SIGTERM is caught (one process), and on exit the previous
  handler is back, so a caller's own SIGTERM handling outlives `train`."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  def __enter__(self) -> Preemption:
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._event.set())
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def reached(self, step: int) -> bool:
    """True once a SIGTERM arrived (every process: at this same step)."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._event.is_set()


def mark(workdir: str, step: int) -> None:
  """Writes WORKDIR/PREEMPTED holding the step of the checkpoint just saved."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, MARKER), "w") as f:
      f.write(f"{step}\n")


def clear(workdir: str) -> None:
  """Removes the marker when the run resumes."""
  if jax.process_index() == 0 and os.path.exists(os.path.join(workdir, MARKER)):
    os.remove(os.path.join(workdir, MARKER))
