"""Speed accounting: the device peak and its cache, model FLOPs, and the logged speed."""
import json
import logging
import math
import types

import jax
import pytest

from tiny import tiny_config
from tokjax import device_peak, trainer
from tokjax.experiment import Experiment
from tokjax.metrics import matmul_params, model_flops_per_token


@pytest.fixture
def peak_cache(tmp_path, monkeypatch):
  path = tmp_path / "peaks.json"
  monkeypatch.setenv(device_peak.CACHE_ENV, str(path))
  monkeypatch.setenv(device_peak.MATMUL_N_ENV, "64")
  return path


def test_cpu_peak_is_measured_once_then_read_from_the_cache(peak_cache, monkeypatch):
  calls = []
  measure = device_peak.matmul_peak
  monkeypatch.setattr(device_peak, "matmul_peak", lambda *a: calls.append(a) or measure(*a))
  first, source = device_peak.peak_flops("float32")
  assert first > 0 and str(peak_cache) in source
  assert device_peak.peak_flops(jax.numpy.float32)[0] == first  # Read back, not re-measured.
  assert len(calls) == 1
  device_peak.peak_flops("bfloat16")  # Another dtype is another entry.
  assert len(calls) == 2
  cached = json.loads(peak_cache.read_text())
  assert len(cached) == 2 and any(v["flops_per_s"] == first for v in cached.values())


def test_published_peaks_by_device_kind():
  assert device_peak.published_peak("TPU v5 lite", "bfloat16")[0] == 197e12
  assert device_peak.published_peak("TPU v5", "bfloat16")[0] == 459e12
  assert device_peak.published_peak("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989.5e12
  assert device_peak.published_peak("NVIDIA H100 PCIe", "bfloat16")[0] == 756e12
  assert device_peak.published_peak("NVIDIA A100-SXM4-80GB", "bfloat16")[0] == 312e12
  assert device_peak.published_peak("TPU v4 lite", "bfloat16")[0] is None  # Not a v4.


def test_unknown_accelerator_has_no_peak_and_says_so_once(monkeypatch, caplog):
  gpu = types.SimpleNamespace(platform="gpu", device_kind="Mystery Accelerator 9000")
  monkeypatch.setattr(jax, "devices", lambda *a: [gpu])
  with caplog.at_level(logging.WARNING):
    assert device_peak.peak_flops("bfloat16")[0] is None
    peak, source = device_peak.peak_flops("bfloat16")
  assert peak is None and "Mystery Accelerator 9000" in source
  assert sum("Mystery" in r.getMessage() for r in caplog.records) == 1


def test_matmul_params_leave_out_embedding_tables(tmp_path):
  config = tiny_config(str(tmp_path / "tfds"), objective="electra")
  params = Experiment.create(config).abstract_state["params"]
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  table = params["discriminator"]["embed"].get_value().shape  # The generator's `embed` is a projection.
  assert matmul_params(params) == total - math.prod(table)


def test_tiny_run_logs_its_speed_and_startup(tmp_path, monkeypatch):
  # A fixed peak (10 TFLOP/s, above any CPU these tests run on): one measured
  # while another test worker loads the cores can come out low enough to put
  # this tiny model's MFU above 1. The peak's measurement is tested above.
  peak = 1e13
  monkeypatch.setattr(trainer, "peak_flops", lambda dtype: (peak, "test"))
  config = tiny_config(str(tmp_path / "tfds"))
  trainer.train(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  first = records[0]
  assert first["step"] == 1 and first["peak_flops"] == peak
  phases = sum(v for k, v in first.items() if k.startswith("startup/") and k != "startup/compile_s")
  assert 0 < first["startup_s"] == pytest.approx(phases, abs=0.05)
  assert first["startup/compile_s"] > 0
  params = Experiment.create(config).abstract_state["params"]
  assert first["model_flops_per_token"] == model_flops_per_token(config, params)

  timed = [r for r in records if "tokens_per_s" in r]
  assert [r["step"] for r in timed] == list(range(2, config.num_train_steps + 1))
  for r in timed:
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and 0 <= r["host_fraction"] < 1
    assert r["step_time_s"] == pytest.approx(config.batch_size * config.seq_len / r["tokens_per_s"])
    assert r["mfu"] == pytest.approx(
        first["model_flops_per_token"] * r["tokens_per_s"] / first["peak_flops"], rel=1e-9)
