"""Training curves from metrics.jsonl (tokjax.plot): loading, default panels, the CLI."""
import json
import os
import subprocess
import sys

import pytest
from matplotlib import image as mpimage

from tokjax import plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A pixel run's log: a first step with start-up strings, an eval record of its
# own at step 2, a resume from step 2 that logs step 3 again, and a last line
# cut short by a kill.
RECORDS = [
    {"step": 1, "loss": 3.0, "learning_rate": 0.0, "grad_norm": 1.0, "startup_s": 5.0,
     "peak_source": "measured float32 256^3 matmul", "peak_flops": None, "flag": True,
     "vector": [1.0, 2.0]},
    {"step": 2, "loss": 2.5, "learning_rate": 0.1, "grad_norm": 0.9, "tokens_per_s": 100.0,
     "mfu": 0.1},
    {"step": 2, "eval/bits_per_byte": 4.0, "eval/bits_per_byte_stderr": 0.2,
     "eval/bits_per_dim": 4.0, "eval/nats_per_token": 2.8},
    {"step": 3, "loss": 2.0, "learning_rate": 0.1, "grad_norm": 0.8},
    {"step": 3, "loss": 1.9, "learning_rate": 0.1, "grad_norm": 0.7},  # Resumed: this one counts.
    {"step": 4, "loss": 1.5, "learning_rate": 0.05, "grad_norm": 0.6, "tokens_per_s": 120.0,
     "mfu": 0.12, "eval/bits_per_byte": 3.5, "eval/bits_per_dim": 3.5, "eval/fid_fmnist": 30.0},
]


def _write_run(workdir, records=RECORDS, tail='{"step": 5, "lo'):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records) + tail)
  return str(workdir)


def test_load_metrics_keeps_last_value_per_step_and_numbers_only(tmp_path):
  metrics = plot.load_metrics(_write_run(tmp_path))
  assert metrics["loss"] == ([1, 2, 3, 4], [3.0, 2.5, 1.9, 1.5])
  assert metrics["grad_norm"] == ([1, 2, 3, 4], [1.0, 0.9, 0.7, 0.6])
  assert metrics["eval/bits_per_byte"] == ([2, 4], [4.0, 3.5])
  assert metrics["startup_s"] == ([1], [5.0])
  for skipped in ("step", "peak_source", "peak_flops", "flag", "vector"):
    assert skipped not in metrics


def test_default_keys_pixel_and_text_runs(tmp_path):
  metrics = plot.load_metrics(_write_run(tmp_path))
  assert plot.default_keys(metrics) == [
      "loss", "eval/bits_per_dim", "eval/fid_fmnist", "tokens_per_s", "mfu",
      "learning_rate", "grad_norm"]
  text = {"loss", "eval/bits_per_byte", "eval/bits_per_byte_stderr", "eval/nats_per_token",
          "eval/accuracy", "learning_rate", "startup_s"}
  assert plot.default_keys(text) == ["loss", "eval/bits_per_byte", "eval/accuracy",
                                     "learning_rate"]


def test_plot_metrics_png_matches_figure_size(tmp_path):
  metrics = plot.load_metrics(_write_run(tmp_path))
  out = str(tmp_path / "sub" / "two.png")
  assert plot.plot_metrics(metrics, ["loss", "eval/bits_per_byte"], out) == out
  height, width = (plot.PANEL_INCHES[1] * plot.DPI, 2 * plot.PANEL_INCHES[0] * plot.DPI)
  assert mpimage.imread(out).shape == (height, width, 4)


def test_cli_writes_curves_png(tmp_path):
  workdir = _write_run(tmp_path / "run")
  result = subprocess.run([sys.executable, "-m", "tokjax.plot", f"--workdir={workdir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  png = os.path.join(workdir, "curves.png")
  assert result.stdout.strip() == png
  # 7 default panels: 3 rows of 3 columns.
  assert plot.figure_size(7) == (3, 3)
  assert mpimage.imread(png).shape == (3 * 300, 3 * 400, 4)


def test_missing_workdir_or_metrics(tmp_path):
  with pytest.raises(FileNotFoundError, match="No workdir.*tokjax.train"):
    plot.load_metrics(str(tmp_path / "absent"))
  with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl.*tokjax\.train .*--workdir"):
    plot.load_metrics(str(tmp_path))


def test_unknown_key_lists_available(tmp_path):
  workdir = _write_run(tmp_path)
  with pytest.raises(ValueError, match=r"--keys nope: .*available: .*grad_norm, learning_rate"):
    plot.run(workdir, keys=["loss", "nope"])
  assert not os.path.exists(os.path.join(workdir, "curves.png"))


def test_corrupt_line_names_file_and_line(tmp_path):
  workdir = _write_run(tmp_path, RECORDS[:2], tail="")
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write("not json\n" + json.dumps({"step": 3, "loss": 1.0}) + "\n")
  with pytest.raises(ValueError, match=r"metrics\.jsonl:3 is not valid JSON"):
    plot.load_metrics(workdir)
  _write_run(tmp_path, [{"loss": 1.0}], tail="")
  with pytest.raises(ValueError, match="integer 'step'"):
    plot.load_metrics(workdir)


def test_main_turns_errors_into_a_message(tmp_path, monkeypatch):
  """main exits with the error's text (no traceback), as the CLI does."""
  class Flags:
    workdir, out, keys = str(tmp_path / "absent"), None, None
  monkeypatch.setattr(plot.flags, "FLAGS", Flags)
  with pytest.raises(SystemExit, match="tokjax.plot: No workdir"):
    plot.main(["plot"])
