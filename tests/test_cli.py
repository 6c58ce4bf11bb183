"""End to end through the real CLIs: train, SIGKILL and resume, sample, evaluate."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tiny import ROOT, cli_flags

ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _cli(module, *args, timeout=300):
  out = subprocess.run([sys.executable, "-m", f"tokjax.{module}", *args], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def _losses(workdir):
  """step -> train loss, keeping each step's last record (a resumed run re-logs)."""
  losses = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record:
        losses[record["step"]] = record["loss"]
  return losses


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("causal"))
  stdout = _cli("train", f"--workdir={workdir}", *cli_flags(data_dir))
  return workdir, stdout


def test_causal_train_writes_metrics_checkpoints_and_samples(causal_run):
  workdir, stdout = causal_run
  assert "exact" in stdout and "bits/byte" in stdout
  assert sorted(_losses(workdir)) == [1, 2, 3, 4, 5, 6]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "6"
  samples = json.load(open(os.path.join(workdir, "samples.json")))
  assert samples["precision"] == "float64" and len(samples["samples"]) == 2


def test_sigkill_then_rerun_reproduces_losses_exactly(tmp_path, data_dir):
  """A run killed mid-training and rerun logs exactly the uninterrupted losses."""
  flags = [*cli_flags(data_dir), "--config.num_train_steps=60", "--config.checkpoint_every_steps=10",
           "--config.eval_every_steps=1000"]
  reference = str(tmp_path / "reference")
  _cli("train", f"--workdir={reference}", *flags)
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen([sys.executable, "-m", "tokjax.train", f"--workdir={workdir}", *flags],
                          cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 240
  while not os.path.isdir(os.path.join(checkpoints, "10")) and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  finished = [d for d in os.listdir(checkpoints) if d.isdigit()]
  assert "60" not in finished, "the run ended before it could be killed"
  _cli("train", f"--workdir={workdir}", *flags)
  assert _losses(workdir) == _losses(reference)
  assert len(_losses(reference)) == 60


def test_sample_cli_keeps_the_prompt(causal_run):
  workdir, _ = causal_run
  _cli("sample", f"--workdir={workdir}", "--prompt=ROMEO:", "--num_samples=3",
       "--sampler.ar.max_new_tokens=8")
  record = json.load(open(os.path.join(workdir, "samples_6.json")))
  assert len(record["samples"]) == 3
  assert all(s.startswith("ROMEO:") for s in record["samples"])


def test_md4_train_sample_evaluate(tmp_path, data_dir):
  workdir = str(tmp_path / "md4")
  _cli("train", f"--workdir={workdir}", *cli_flags(data_dir, "md4"))
  stdout = _cli("evaluate", f"--workdir={workdir}", "--split=test")
  report = json.load(open(os.path.join(workdir, "eval_test.json")))
  assert report["kind"] == "elbo_upper_bound" and "elbo_upper_bound" in stdout
  assert report["num_time_samples"] == 4 and report["bits_per_byte_stderr"] > 0
  assert report["step"] == 6 and report["tokens"] > 0


def test_incompatible_checkpoint_is_a_clear_error(causal_run, data_dir):
  workdir, _ = causal_run
  out = subprocess.run(
      [sys.executable, "-m", "tokjax.train", f"--workdir={workdir}", *cli_flags(data_dir),
       "--config.model.d_model=32"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "different config" in out.stderr and "d_model" in out.stderr


@pytest.mark.parametrize("objective, kind, sampler", [
    ("mlm", "pseudo_likelihood", None), ("maskgit", "pseudo_likelihood", None),
    ("prefix_lm", "exact", None), ("meap", "exact", "ar"), ("fim", "exact", "ar"),
    ("cm3", "exact", "ar"), ("span_corruption", "pseudo_likelihood", None),
    ("multi_token", "exact", "ar"), ("mixture", "pseudo_likelihood", None),
    ("electra", "none", None)])
def test_more_objectives_train_and_evaluate(tmp_path, data_dir, objective, kind, sampler):
  workdir = str(tmp_path / objective)
  stdout = _cli("train", f"--workdir={workdir}", *cli_flags(data_dir, objective))
  assert f"{objective}: {kind}" in stdout or f"{objective}: no likelihood" in stdout
  assert (f"({sampler}, precision=" in stdout) if sampler else ("No sampler" in stdout)
  _cli("evaluate", f"--workdir={workdir}")
  report = json.load(open(os.path.join(workdir, "eval_validation.json")))
  assert report["kind"] == kind
  assert ("disc_auc" in report) == (objective == "electra")
