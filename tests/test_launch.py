"""The real `launch/local_multiprocess.sh` with 2 processes: train, evaluate, sample.

The global batch of 2 is not a multiple of P² = 4, so an eval that divides the
batch by the process count twice (the old bug) fails; the 2-process figures
must match one process scoring the same checkpoint.
"""
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tiny import FAST_COMPILE, ROOT, cli_flags

LAUNCHER = os.path.join(ROOT, "launch", "local_multiprocess.sh")
ENV = dict(os.environ, XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu", PYTHON=sys.executable)
# seq_len 8 packs the 22 validation tokens into 3 windows: 2 global batches of
# 2, the second padded with an all-PAD row (process 1's whole share).
RUN = ["--config.seq_len=8", "--config.batch_size=2", "--config.num_train_steps=4",
       "--config.eval_every_steps=2", "--config.eval_steps=1", "--config.final_eval_steps=-1",
       "--config.checkpoint_every_steps=2", "--config.sampler.ar.max_new_tokens=7"]
REPORT_KEYS = ("kind", "tokens", "bytes", "nats_per_token", "bits_per_byte", "step")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(cmd, env, timeout=240) -> str:
  """Runs `cmd` in its own process group, killing the whole group on timeout."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    raise
  assert proc.returncode == 0, stderr[-3000:]
  return stdout


def _launch(*args) -> str:
  """`local_multiprocess.sh 2 ARGS...` on a free coordinator port."""
  return _run([LAUNCHER, "2", *args], dict(ENV, JAX_PORT=str(_free_port())))


def _cli(module, *args) -> str:
  """One process: `python -m tokjax.MODULE ARGS...`."""
  return _run([sys.executable, "-m", f"tokjax.{module}", *args], ENV)


def _evals(workdir) -> dict:
  """step -> the eval/* records of WORKDIR/metrics.jsonl."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for record in map(json.loads, f):
      evals = {k[5:]: v for k, v in record.items() if k.startswith("eval/")}
      if evals:
        out[record["step"]] = evals
  return out


def _assert_same_figures(got: dict, want: dict, keys) -> None:
  for key in keys:
    if isinstance(want[key], float):
      assert math.isclose(got[key], want[key], rel_tol=1e-6), (key, got[key], want[key])
    else:
      assert got[key] == want[key], key


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-process training run: steps 1-4, eval and checkpoint at 2, final eval at 4."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))  # Fresh: both processes find it missing.
  flags = [*cli_flags(data_dir), *RUN]
  workdir = str(tmp_path_factory.mktemp("mp"))
  _launch(f"--workdir={workdir}", *flags)  # The old form: no CLI named, so train.
  return workdir


def test_periodic_eval_scores_eval_steps_batches(run, tmp_path):
  """The step-2 eval equals one process scoring 1 batch of the step-2 checkpoint."""
  workdir = str(tmp_path / "step2")
  shutil.copytree(os.path.join(run, "checkpoints", "2"),
                  os.path.join(workdir, "checkpoints", "2"))
  _cli("evaluate", f"--workdir={workdir}", "--max_batches=1")
  want = json.load(open(os.path.join(workdir, "eval_validation.json")))
  assert want["step"] == 2 and want["tokens"] == 14  # Two windows of 8, 7 targets each.
  _assert_same_figures(_evals(run)[2], want, ("nats_per_token", "bits_per_byte"))


def test_two_process_evaluate_matches_one_process(run):
  stdout = _launch("evaluate", f"--workdir={run}")
  assert stdout.count("[validation] causal: exact") == 1  # Printed by process 0 only.
  path = os.path.join(run, "eval_validation.json")
  two = json.load(open(path))
  os.remove(path)
  _cli("evaluate", f"--workdir={run}")
  one = json.load(open(path))
  assert one["step"] == 4 and one["tokens"] == 19  # All 3 windows: 7 + 7 + 5 targets.
  _assert_same_figures(two, one, REPORT_KEYS)
  # The training run's final eval covered the whole split too.
  _assert_same_figures(_evals(run)[4], one, ("nats_per_token", "bits_per_byte"))


def test_two_process_sample(run):
  stdout = _launch("sample", f"--workdir={run}", "--num_samples=2",
                   "--sampler.ar.max_new_tokens=7")
  assert stdout.count("--- sample 0 ") == 1  # Printed by process 0 only.
  record = json.load(open(os.path.join(run, "samples_4.json")))
  assert record["step"] == 4 and len(record["samples"]) == 2
  # The same sampler settings as the run's final samples, so the same texts.
  assert record["samples"] == json.load(open(os.path.join(run, "samples.json")))["samples"]


def _losses(workdir) -> dict:
  """step -> train loss."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _example_ids(workdir, process) -> dict:
  """step -> the window ids `process` fed (the last record of a step redone)."""
  with open(os.path.join(workdir, "example_ids", f"process_{process}.jsonl")) as f:
    return {r["step"]: r["ids"] for r in map(json.loads, f)}


def _assert_fed_the_global_batches(two_process_workdir, reference_workdir) -> None:
  """Each of the 2 processes fed its own half of every global batch of the
  1-process run: process 0 the first half of its window ids, process 1 the
  second. (A batch that straddles two epochs may hold a window twice.)"""
  want = _example_ids(reference_workdir, 0)
  halves = [_example_ids(two_process_workdir, p) for p in range(2)]
  assert halves[0].keys() == halves[1].keys() and halves[0]
  for step in halves[0]:
    assert len(halves[0][step]) == len(halves[1][step]), step
    assert halves[0][step] + halves[1][step] == want[step], step


def test_two_hosts_of_four_devices_train_as_one_of_eight(tmp_path):
  """2 processes x 4 CPU devices (gloo) on the (2, 2, 2) fsdp_tp mesh train
  steps 1-10 on the batches of 1 process x 8 devices (each process feeding its
  half, by the window ids it logs), with the same losses; the 2-process
  checkpoint then resumes in 1 process on an (8,) data-parallel mesh, and the
  1-process checkpoint in 2 processes on that mesh, data position kept, and
  both continue with steps 11-20's losses. The tolerance, 1e-5 relative, is for the
  order of the floating-point sums: gloo all-reduces across processes in
  another order than XLA does within one."""
  data_dir = str(tmp_path / "tfds")
  dp_config, *flags = cli_flags(data_dir)  # --config=...shakespeare.py:...,size=tiny
  flags += ["--config.num_train_steps=20", "--config.checkpoint_every_steps=10",
            "--config.eval_every_steps=1000", "--config.sampler.ar.max_new_tokens=4",
            "--config.data.log_example_ids=True"]
  fsdp_tp = [f"{dp_config},mesh=fsdp_tp", "--config.mesh.shape=(2,2,2)"]
  devices = lambda n: f"{FAST_COMPILE} --xla_force_host_platform_device_count={n}"
  reference, two, resumed, reverse = (str(tmp_path / name)
                                      for name in ("one", "two", "resumed", "reverse"))
  _run([sys.executable, "-m", "tokjax.train", f"--workdir={reference}", *fsdp_tp, *flags],
       dict(ENV, XLA_FLAGS=devices(8)))
  _run([LAUNCHER, "2", f"--workdir={two}", *fsdp_tp, *flags, "--config.num_train_steps=10"],
       dict(ENV, XLA_FLAGS=devices(4), JAX_PORT=str(_free_port())))
  want = _losses(reference)
  _assert_fed_the_global_batches(two, reference)
  for step, loss in _losses(two).items():
    assert math.isclose(loss, want[step], rel_tol=1e-5), (step, loss, want[step])
  shutil.copytree(os.path.join(two, "checkpoints"), os.path.join(resumed, "checkpoints"))
  _run([sys.executable, "-m", "tokjax.train", f"--workdir={resumed}", dp_config, *flags],
       dict(ENV, XLA_FLAGS=devices(8)))
  shutil.copytree(os.path.join(reference, "checkpoints", "10"),
                  os.path.join(reverse, "checkpoints", "10"))
  _run([LAUNCHER, "2", f"--workdir={reverse}", dp_config, *flags],
       dict(ENV, XLA_FLAGS=devices(4), JAX_PORT=str(_free_port())))
  _assert_fed_the_global_batches(reverse, reference)
  for workdir in (resumed, reverse):
    got = _losses(workdir)
    assert sorted(got) == list(range(11, 21)), workdir
    for step, loss in got.items():
      assert math.isclose(loss, want[step], rel_tol=1e-5), (workdir, step, loss, want[step])
