"""Metric writers (JSONL + TensorBoard), the progress bar, and FLOPs accounting."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import tensorboardX
import tqdm


class MetricWriter:
  """Writes scalars to WORKDIR/metrics.jsonl and TensorBoard (process 0 only).

  Each `write` appends one JSON object per line: {"step": N, name: value, ...}.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    scalars = {k: _to_python(v) for k, v in scalars.items()}
    self.jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self.jsonl.flush()
    for name, value in scalars.items():
      if isinstance(value, (int, float)):
        self.tb.add_scalar(name, value, step)

  def close(self) -> None:
    if self.active:
      self.jsonl.close()
      self.tb.close()


def _to_python(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def progress_bar(total: int, initial: int, enabled: bool):
  """A tqdm bar over train steps (shows rate and ETA); disabled off process 0."""
  return tqdm.tqdm(
      total=total,
      initial=initial,
      disable=not enabled or jax.process_index() != 0,
      unit="step",
      dynamic_ncols=True,
  )


def flops_per_token(num_params_matmul: int, num_layers: int, d_model: int, seq_len: int) -> float:
  """Training FLOPs per token: 6 N + 12 L d T (PaLM, Appendix B).

  N counts the parameters of matrix multiplications (embedding lookups are not
  matmuls; the output head is); the second term is attention scores and values
  over a full (unmasked) T x T attention, forward and backward.
  """
  return 6.0 * num_params_matmul + 12.0 * num_layers * d_model * seq_len
