"""Metric writers (JSONL + TensorBoard), the progress bar, and FLOPs accounting."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time

import jax
import numpy as np
import tqdm

from tokjax import modules_absent


# tensorboardX probes for torch (to accept its tensors), boto3 and
# google.cloud.storage (s3:// and gs:// log dirs) when imported: 1.6 s of
# start-up where they are installed, for features this writer never uses (it
# writes Python floats to a local directory). Later imports of them still work.
with modules_absent("torch", "boto3", "google.cloud.storage"):
  import tensorboardX


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
  over a full (unmasked) T x T attention, forward and backward. Model FLOPs
  only: rematerialised (recomputed) work does not count.
  """
  return 6.0 * num_params_matmul + 12.0 * num_layers * d_model * seq_len


def matmul_params(params) -> int:
  """How many of `params` (arrays or ShapeDtypeStructs) enter matmuls: all but the
  embedding tables, the leaves named `embed` (a table is looked up, not multiplied)."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if not names or names[-1] != "embed":
      total += math.prod(leaf.shape)
  return total


def model_flops_per_token(config, params) -> float:
  """`flops_per_token` of the whole trained model of `config` with `params`.

  N is `matmul_params` over every trained module (an electra generator, extra
  multi-token heads); L and d are the backbone's (`config.model`).
  """
  m = config.model
  return flops_per_token(matmul_params(params), m.num_layers, m.d_model, config.seq_len)


class StepLogger:
  """Collects each step's scalars and writes them one step late, with the speed.

  `record` keeps device arrays without waiting for them; `flush`, called after
  the next step is dispatched, fetches and writes them, so the host never
  blocks on the step in flight. Records for one step merge into one JSON line.

  `record_train` steps also get the speed over the interval since the last one:
    tokens_per_s   global tokens (batch_size x seq_len per step) per second;
    step_time_s    seconds per step;
    mfu            model FLOPs utilisation, flops_per_token x tokens_per_s /
                   peak_flops (a fraction; absent when the peak is unknown);
    host_fraction  the fraction of the interval the loop's thread spent inside
                   `host()`: taking the next batch from the data iterator,
                   making it a global array and dispatching the step. The rest
                   it waited for the device (or logged). Near 1 the host is the
                   bottleneck (input or dispatch bound), near 0 the device is.
  An interval ends when `flush` has fetched its last step's metrics, i.e. when
  that step has run; the first starts at `start_intervals`, after the first
  (compiling) step. `paused` time (evaluation, checkpoint saves) is left out.
  """

  def __init__(self, writer: MetricWriter, bar, *, tokens_per_step: int,
               flops_per_token: float, peak_flops: float | None):
    self.writer, self.bar, self.tokens_per_step = writer, bar, tokens_per_step
    self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
    self.pending: dict[int, dict] = {}
    self.timed: set[int] = set()
    self.tick, self.host_s, self.paused_s = None, 0.0, 0.0

  def start_intervals(self, step: int) -> None:
    """The next speed interval starts now, with `step` completed."""
    self.tick, self.tick_step = time.perf_counter(), step
    self.host_s = self.paused_s = 0.0

  @contextlib.contextmanager
  def host(self):
    """Times the loop's own work on a step (see `host_fraction`)."""
    start = time.perf_counter()
    yield
    self.host_s += time.perf_counter() - start

  @contextlib.contextmanager
  def paused(self, step_outputs):
    """Leaves the body out of the speed, once `step_outputs` are computed.

    The wait for the last step belongs to training; evaluation and checkpoint
    saves wait for it anyway, so this costs no extra device sync.
    """
    jax.block_until_ready(step_outputs)
    start = time.perf_counter()
    yield
    self.paused_s += time.perf_counter() - start

  def record(self, step: int, scalars: dict) -> None:
    self.pending.setdefault(step, {}).update(scalars)

  def record_train(self, step: int, metrics: dict) -> None:
    """Adds train metrics; `flush` adds the speed up to this step."""
    self.record(step, metrics)
    self.timed.add(step)

  def flush(self) -> None:
    for step, scalars in sorted(self.pending.items()):
      scalars = jax.device_get(scalars)  # Waits for the step to have run.
      if step in self.timed and self.tick is not None and step > self.tick_step:
        scalars.update(self._speed(step))
        self.start_intervals(step)
      self.writer.write(step, scalars)
      if "loss" in scalars:
        postfix = dict(loss=f"{float(scalars['loss']):.4f}")
        if "tokens_per_s" in scalars:
          postfix["tok_s"] = f"{scalars['tokens_per_s']:.0f}"
        if "mfu" in scalars:
          postfix["mfu"] = f"{100 * scalars['mfu']:.1f}%"
        self.bar.set_postfix(postfix)
    self.pending, self.timed = {}, set()

  def _speed(self, step: int) -> dict:
    wall = max(time.perf_counter() - self.tick - self.paused_s, 1e-9)
    steps = step - self.tick_step
    tokens_per_s = steps * self.tokens_per_step / wall
    speed = dict(tokens_per_s=tokens_per_s, step_time_s=wall / steps,
                 host_fraction=self.host_s / wall)
    if self.peak_flops:
      speed["mfu"] = self.flops_per_token * tokens_per_s / self.peak_flops
    return speed


class StartupClock:
  """Start-up time, from `started_at` (a time.time() stamp) to the first step.

  `lap(name)` ends a phase; `scalars()` gives `startup_s` (the total so far),
  each phase as `startup/<name>_s`, and `startup/compile_s`: the seconds JAX
  spent tracing, lowering and compiling (or loading from the persistent cache)
  since the clock started, summed over threads (so it can exceed the phases it
  overlaps).
  """

  def __init__(self, started_at: float | None = None):
    _listen_to_compiles()
    now = time.time()
    self.started_at = started_at or now
    self.last = now
    self.phases = {"startup/launch_s": now - self.started_at}
    self.compile_start = _compile_seconds[0]

  def lap(self, name: str) -> None:
    now = time.time()
    self.phases[f"startup/{name}_s"] = now - self.last
    self.last = now

  def scalars(self) -> dict:
    return {"startup_s": time.time() - self.started_at, **self.phases,
            "startup/compile_s": _compile_seconds[0] - self.compile_start}


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_seconds = [0.0]  # Process-wide, from the first StartupClock on.
_listening = False


def _listen_to_compiles() -> None:
  global _listening
  if not _listening:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _listening = True


def _on_duration(event: str, seconds: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    _compile_seconds[0] += seconds
