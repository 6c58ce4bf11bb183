"""Metric writers (JSONL + TensorBoard), the progress bar, and FLOPs accounting."""
from __future__ import annotations

import json
import os
import time

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


class StepLogger:
  """Collects each step's scalars and writes them one step late.

  `record` keeps device arrays without waiting for them; `flush`, called after
  the next step is dispatched, fetches and writes them, so the host never
  blocks on the step in flight. Records for one step merge into one JSON line.
  """

  def __init__(self, writer: MetricWriter, bar, tokens_per_step: int, start_step: int):
    self.writer, self.bar, self.tokens_per_step = writer, bar, tokens_per_step
    self.pending: dict[int, dict] = {}
    self.tick, self.tick_step = time.perf_counter(), start_step

  def record(self, step: int, scalars: dict) -> None:
    self.pending.setdefault(step, {}).update(scalars)

  def record_train(self, step: int, metrics: dict) -> None:
    """Adds train metrics and tokens/s since the last `record_train`."""
    now = time.perf_counter()
    rate = (step - self.tick_step) * self.tokens_per_step / max(now - self.tick, 1e-9)
    self.tick, self.tick_step = now, step
    self.record(step, dict(metrics, tokens_per_s=rate))

  def flush(self) -> None:
    for step, scalars in sorted(self.pending.items()):
      scalars = jax.device_get(scalars)
      self.writer.write(step, scalars)
      if "loss" in scalars:
        self.bar.set_postfix(loss=f"{float(scalars['loss']):.4f}",
                             tok_s=f"{float(scalars['tokens_per_s']):.0f}")
    self.pending = {}
