"""CLI: training curves of a run, from its metrics.jsonl, as one PNG.

  python -m tokjax.plot --workdir DIR [--out PATH] [--keys loss,eval/bits_per_byte]

Reads DIR/metrics.jsonl (written by `python -m tokjax.train ... --workdir DIR`)
and draws one subplot per metric against the training step, by default the
loss, the held-out likelihood, the other eval figures, speed, MFU, learning
rate and gradient norm, those the run logged. Writes DIR/curves.png unless
--out says otherwise, and prints the path.

A resumed run logs the steps after its last checkpoint again; for each metric
the last value logged at a step is the one plotted.
"""
from __future__ import annotations

import json
import math
import os

from absl import app, flags

# Subplot size in inches, dots per inch and columns: a figure of R rows and C
# columns is a PNG of (R * 3 * 100, C * 4 * 100) pixels.
PANEL_INCHES = (4.0, 3.0)
DPI = 100
MAX_COLUMNS = 3

_FIRST = ("loss",)
_LAST = ("tokens_per_s", "mfu", "learning_rate", "grad_norm")
# eval/ figures not plotted by default: repeats of another curve in other units.
_EVAL_REDUNDANT = ("eval/nats_per_token",)
_TITLES = {
    "eval/fid_fmnist": "eval/fid_fmnist\n(FID-FMNIST: project classifier, not Inception)",
    "eval/bits_per_byte": "eval/bits_per_byte (held-out)",
    "eval/bits_per_dim": "eval/bits_per_dim (held-out)",
}

Series = tuple[list, list]  # (steps, values), steps increasing.


def load_metrics(workdir: str) -> dict[str, Series]:
  """Reads WORKDIR/metrics.jsonl into {key: (steps, values)}.

  Only numeric (int or float, not bool) fields are kept; strings, lists and
  nulls (e.g. 'peak_source') are skipped. When a step is logged more than once
  (a resumed run repeats the steps after its last checkpoint; evaluation may
  log a step's figures in a record of their own), each key keeps the last
  value logged at that step. Steps come out sorted.

  Raises:
    FileNotFoundError: no workdir, or no metrics.jsonl in it.
    ValueError: a line (other than a truncated last one) that is not a JSON
      object with an integer 'step'.
  """
  path = _metrics_path(workdir)
  latest: dict[str, dict[int, float]] = {}
  for step, record in _read_records(path):
    for key, value in record.items():
      if key != "step" and _is_number(value):
        latest.setdefault(key, {})[step] = float(value)
  return {key: _sorted_series(by_step) for key, by_step in sorted(latest.items())}


def default_keys(available) -> list[str]:
  """The standard curves among `available` keys, in display order.

  loss, then the held-out likelihood (eval/bits_per_dim for pixel runs, else
  eval/bits_per_byte), the other eval/ figures (e.g. eval/fid_fmnist,
  eval/mse, eval/psnr, eval/accuracy; not standard errors, which are drawn as
  bands, nor nats_per_token), then tokens_per_s, mfu, learning_rate, grad_norm.
  """
  available = set(available)
  # Pixel runs log bits_per_dim beside bits_per_byte, the same figure: plot it once.
  likelihood = [k for k in ("eval/bits_per_dim", "eval/bits_per_byte") if k in available][:1]
  redundant = {*_EVAL_REDUNDANT, "eval/bits_per_dim", "eval/bits_per_byte"}
  evals = sorted(k for k in available if k.startswith("eval/") and not k.endswith("_stderr")
                 and k not in redundant)
  first = [k for k in _FIRST if k in available]
  last = [k for k in _LAST if k in available]
  return first + likelihood + evals + last


def check_keys(keys, available) -> None:
  """Raises ValueError naming the available metrics when a key was not logged."""
  unknown = [k for k in keys if k not in available]
  if unknown:
    raise ValueError(f"--keys {','.join(unknown)}: not in this run's metrics.jsonl; available: "
                     f"{', '.join(sorted(available))}.")


def figure_size(num_panels: int) -> tuple[int, int]:
  """(rows, columns) of the subplot grid for `num_panels` panels."""
  columns = min(num_panels, MAX_COLUMNS)
  return math.ceil(num_panels / columns), columns


def plot_metrics(records: dict[str, Series], keys, path: str) -> str:
  """Draws one subplot per key of `records` (as from `load_metrics`) against step.

  A key with a `KEY_stderr` series in `records` gets a +-1 standard error band.
  The PNG is figure_size(len(keys)) panels of PANEL_INCHES at DPI. Returns `path`.
  """
  from matplotlib.figure import Figure  # No pyplot: no backend or display needed.

  keys = list(keys)
  if not keys:
    raise ValueError("No metrics to plot; pass --keys with some of: "
                     f"{', '.join(sorted(records))}.")
  check_keys(keys, records)
  rows, columns = figure_size(len(keys))
  fig = Figure(figsize=(columns * PANEL_INCHES[0], rows * PANEL_INCHES[1]), dpi=DPI,
               layout="constrained")
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for ax, key in zip(axes, keys):
    _draw(ax, key, records[key], records.get(f"{key}_stderr"))
  for ax in axes[len(keys):]:
    ax.set_visible(False)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fig.savefig(path, dpi=DPI)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    path = run(f.workdir, f.out, f.keys)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"tokjax.plot: {e}") from e
  print(path)


def run(workdir: str, out: str | None = None, keys=None) -> str:
  """The CLI without flags: plots WORKDIR's `keys` (default: `default_keys`) to
  `out` (default WORKDIR/curves.png) and returns the path written."""
  records = load_metrics(workdir)
  if not records:
    raise ValueError(f"{os.path.join(workdir, 'metrics.jsonl')} holds no numeric metrics yet; "
                     "the run logs them from its first step on.")
  keys = list(keys) if keys else default_keys(records)
  return plot_metrics(records, keys, out or os.path.join(workdir, "curves.png"))


def _metrics_path(workdir: str) -> str:
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"No workdir {workdir!r}; `python -m tokjax.train --config ... "
                            f"--workdir DIR` creates it and writes DIR/metrics.jsonl.")
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No {path}; `python -m tokjax.train --config ... --workdir "
                            f"{workdir}` writes it (one JSON object per logged step).")
  return path


def _read_records(path: str):
  """Yields (step, record) per line; a truncated last line (a killed run) is skipped."""
  with open(path) as f:
    lines = f.read().splitlines()
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines):  # Killed while writing; earlier lines are complete.
        continue
      raise ValueError(f"{path}:{number} is not valid JSON ({e}); metrics.jsonl holds one "
                       "JSON object per line.") from e
    if not isinstance(record, dict) or not _is_integer(record.get("step")):
      raise ValueError(f"{path}:{number} must be a JSON object with an integer 'step', got "
                       f"{line[:80]!r}.")
    yield int(record["step"]), record


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value) -> bool:
  return _is_number(value) and float(value).is_integer()


def _sorted_series(by_step: dict[int, float]) -> Series:
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def _draw(ax, key: str, series: Series, stderr: Series | None) -> None:
  from matplotlib import ticker
  steps, values = series
  few = len(steps) <= 50  # Sparse curves (eval) get markers, so one point still shows.
  ax.plot(steps, values, marker="o" if few else None, markersize=3, linewidth=1.2)
  if stderr is not None:
    _draw_band(ax, series, stderr)
  ax.set_title(_TITLES.get(key, key), fontsize=9)
  ax.set_xlabel("step", fontsize=8)
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  if len(steps) == 1:  # Else matplotlib spans +-0.2 steps around it, in fractional ticks.
    ax.set_xlim(steps[0] - 1, steps[0] + 1)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)


def _draw_band(ax, series: Series, stderr: Series) -> None:
  """Shades value +- stderr at the steps where both were logged."""
  err = dict(zip(*stderr))
  points = [(s, v, err[s]) for s, v in zip(*series) if s in err]
  if points:
    steps, values, errs = zip(*points)
    ax.fill_between(steps, [v - e for v, e in zip(values, errs)],
                    [v + e for v, e in zip(values, errs)], alpha=0.25, linewidth=0,
                    label="±1 s.e.")
    ax.legend(fontsize=7)


def define_flags() -> None:
  """The CLI's flags, defined only when run as a program, so that importing
  load_metrics / plot_metrics elsewhere does not claim --workdir and --keys."""
  flags.DEFINE_string("workdir", None, "The training run's workdir (holding metrics.jsonl).")
  flags.DEFINE_string("out", None, "The PNG to write; default WORKDIR/curves.png.")
  flags.DEFINE_list("keys", None, "Metrics to plot, comma-separated (e.g. "
                    "loss,eval/bits_per_byte); default: the standard curves the run logged.")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
