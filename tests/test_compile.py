"""tokjax.compile: the train step compiled ahead of time for a target topology."""
import dataclasses
import importlib.util
import math
import subprocess
import sys

import jax
import pytest
from tiny import CLI_ENV, ROOT, load_config

from tokjax import compile as aot
from tokjax import sharding
from tokjax.config import load_config_file
from tokjax.experiment import Experiment

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
NO_LIBTPU = "libtpu is not installed (pip install 'tokjax[tpu]')"


def tiny_config(mesh="fsdp_tp", **overrides):
  config = load_config(f"size=tiny,mesh={mesh}")
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def cpu8():
  """The (2,2,2) fsdp_tp step compiled for cpu-8: (config, topology, report)."""
  config = tiny_config()
  config.mesh.shape = (2, 2, 2)
  topology = aot.get_topology("cpu-8")
  return config, topology, aot.compile_train_step(config, topology)


def _bytes_on_first_device(abstract, shardings) -> int:
  """Per-device bytes from the index ranges JAX gives device 0 (not shard_shape)."""
  total = 0
  for leaf, placement in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    device = placement.mesh.devices.flat[0]
    index = placement.devices_indices_map(leaf.shape)[device]
    extent = [len(range(*s.indices(n))) for s, n in zip(index, leaf.shape)]
    total += math.prod(extent) * leaf.dtype.itemsize
  return total


def test_cpu_topology_memory_matches_the_shardings(cpu8):
  config, topology, report = cpu8
  exp = Experiment.create(config, topology.devices)
  params = _bytes_on_first_device(exp.abstract_state["params"], exp.state_shardings["params"])
  opt = _bytes_on_first_device(exp.abstract_state["opt_state"], exp.state_shardings["opt_state"])
  full = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(exp.abstract_state["params"]))
  assert report.mesh == {"data": 2, "fsdp": 2, "tensor": 2}
  assert report.param_bytes == params < full  # Sharded, not replicated.
  assert report.opt_state_bytes == opt
  # The compiler's arguments: parameters, optimizer state, the int32 step and
  # this device's int32[16 / 4 data shards, 128] batch.
  batch = config.batch_size // 4 * config.seq_len * 4
  assert report.argument_bytes == params + opt + 4 + batch
  assert report.per_device_batch == 4
  assert report.temp_bytes > 0 and report.flops > 0 and report.model_flops > 0
  assert report.total_bytes >= report.argument_bytes + report.temp_bytes
  assert report.hbm_bytes is None and report.fits
  assert "cpu-8" in report.format() and "fits" in report.format()


def test_a_step_too_big_for_hbm_says_what_to_change(cpu8):
  config, _, report = cpu8
  aot.check_fits(report, config)  # No HBM given: nothing to check.
  small = dataclasses.replace(report, hbm_bytes=report.total_bytes - 1)
  assert not small.fits and "DOES NOT FIT" in small.format()
  with pytest.raises(aot.DoesNotFit) as error:
    aot.check_fits(small, config)
  message = str(error.value)
  assert "cpu-8" in message and "HBM" in message
  for fix in ("--config.model.remat=full", "--config.model.dtype=bfloat16",
              "--config.batch_size=8 (2 sequences per device instead of 4)",
              "mesh=fsdp"):
    assert fix in message


def test_cli_compiles_gpt2_small_and_exits_1_when_it_does_not_fit():
  # CLI_ENV has no fake-device flag: the CLI starts JAX with the topology's CPU devices.
  result = subprocess.run(
      [sys.executable, "-m", "tokjax.compile", "--config", "configs/gpt2.py:size=small",
       "--topology", "cpu-8", "--hbm_gib", "4"],
      capture_output=True, text=True, cwd=ROOT, env=CLI_ENV, timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  out, err = result.stdout, result.stderr
  assert "topology cpu-8: 8 x cpu" in out and "DOES NOT FIT" in out
  assert "mesh data=1 x fsdp=8 x tensor=1; 32 sequences per device" in out
  assert f"parameters          {GPT2_PARAMS['small'] * 4 / 8 / 2**20:.2f} MiB" in out
  assert "tokjax.compile: cpu-8: the train step needs" in err and "4.00 GiB of HBM" in err
  # Activations dominate, so their fixes come first.
  remat = err.index("--config.model.remat=full")
  assert remat < err.index("--config.batch_size=128 (16 sequences per device instead of 32)")
  assert remat < err.index("--config.model.param_dtype=bfloat16")


# configs/gpt2.py's docstring: parameters with the byte vocabulary.
GPT2_PARAMS = {"small": 85_353_216, "medium": 302_572_544, "1b": 1_209_124_864}


@pytest.mark.parametrize("size, mesh", [
    ("small", {"data": 1, "fsdp": 8, "tensor": 1}),
    ("medium", {"data": 1, "fsdp": 8, "tensor": 1}),
    ("1b", {"data": 1, "fsdp": 4, "tensor": 2}),
])
def test_gpt2_sizes_shard_fully_and_match_their_parameter_counts(size, mesh):
  config = load_config_file(f"{ROOT}/configs/gpt2.py", f"size={size}")
  exp = Experiment.create(config, aot.get_topology("cpu-8").devices)
  params = exp.abstract_state["params"]
  assert sum(x.size for x in jax.tree.leaves(params)) == GPT2_PARAMS[size]
  assert dict(exp.mesh.shape) == mesh
  assert sharding.fsdp_report(params, exp.state_shardings["params"]) == 1.0
  assert (config.seq_len, config.model.dtype, config.model.scan_layers) == (1024, "bfloat16", True)


@pytest.mark.parametrize("size, per_device_batch", [("medium", 32), ("1b", 64)])
def test_gpt2_sizes_compile_for_cpu8(size, per_device_batch):
  """The CLI test compiles small; these medium (fsdp) and 1b (fsdp_tp, full remat)."""
  config = load_config_file(f"{ROOT}/configs/gpt2.py", f"size={size}")
  report = aot.compile_train_step(config, aot.get_topology("cpu-8", hbm_gib=95))
  assert report.per_device_batch == per_device_batch
  # 1b's parameters are split 8 ways, but the norms' scales only over fsdp (4).
  assert report.param_bytes == pytest.approx(GPT2_PARAMS[size] * 4 / 8, rel=1e-3)
  assert report.opt_state_bytes == pytest.approx(2 * report.param_bytes, rel=1e-3)
  assert report.temp_bytes > 0 and report.fits
  # PaLM's model FLOPs (Chowdhery et al. 2022, App. B): 6N + 12 L d T per token.
  per_token = 6 * GPT2_PARAMS[size] + 12 * config.model.num_layers * config.model.d_model * 1024
  tokens = config.batch_size * config.seq_len / 8
  assert report.model_flops == pytest.approx(per_token * tokens, rel=1e-3)


@pytest.mark.parametrize("name, shape", [
    ("v5p-8", (2, 2, 1)), ("v5p-64", (2, 4, 4)), ("v4-32", (2, 2, 4)), ("v5p-1024", (8, 8, 8)),
    ("v5e-16", (4, 4)), ("v6e-8", (2, 4)), ("v5litepod-256", (16, 16)), ("v5e-1", (1, 1)),
])
def test_slice_shapes_follow_google_cloud_tables(name, shape):
  generation, count = aot.parse_topology(name)
  spec = aot.GENERATIONS[generation]
  assert aot.slice_shape(count // spec.cores_per_chip, spec.dims) == shape


@pytest.mark.parametrize("name, match", [
    ("v9z-8", "Unknown topology 'v9z-8'; use a TPU slice name such as"),
    ("v5p", "Unknown topology"),
    ("cpu-0", "Unknown topology"),
    ("v5p-7", "multiple of 2"),
    ("v5p-12", "6 chips is not a 3-D TPU slice"),
    ("v4-2", "1 chips is not a 3-D TPU slice"),
    ("cpu-64", "needs 64 CPU devices but this process has 8"),
])
def test_bad_topology_names_are_clear_errors(name, match):
  with pytest.raises(ValueError, match=match):
    aot.get_topology(name)


def test_tpu_without_libtpu_names_the_install(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ImportError, match=r"pip install 'tokjax\[tpu\]'"):
    aot.get_topology("v5p-8")


@pytest.mark.parametrize("shape, match", [
    ((1, 3, 1), r"does not divide the 8 available; set --config.mesh.shape"),
    ((1, 2, 2), r"uses 4 of cpu-8's 8 devices; set --config.mesh.shape"),
])
def test_a_mesh_that_does_not_fill_the_topology_is_a_clear_error(shape, match):
  config = tiny_config()
  config.mesh.shape = shape
  with pytest.raises(ValueError, match=match):
    aot.compile_train_step(config, aot.get_topology("cpu-8"))


@pytest.mark.skipif(not HAS_LIBTPU, reason=NO_LIBTPU)
def test_tpu_topology_compiles_and_reports_hbm():
  report = aot.compile_train_step(tiny_config(), aot.get_topology("v5p-8"))
  assert report.device_kind == "TPU v5" and report.mesh == {"data": 1, "fsdp": 2, "tensor": 2}
  assert report.hbm_bytes == 95 * aot.GIB and report.fits
  assert report.peak_flops == 459e12  # device_peak's published v5p figure.
  assert report.param_bytes > 0 and report.temp_bytes > 0 and report.flops > 0


@pytest.mark.skipif(not HAS_LIBTPU, reason=NO_LIBTPU)
def test_tpu_compiler_out_of_memory_is_does_not_fit():
  """libtpu refuses gpt2 medium's 32 sequences per v5e chip (16 GiB) early."""
  config = load_config_file(f"{ROOT}/configs/gpt2.py", "size=medium")
  with pytest.raises(aot.DoesNotFit, match=r"v5e-8: the compiler ran out of device memory"
                     r"(.|\n)*--config.model.remat=full \(recompute"):
    aot.compile_train_step(config, aot.get_topology("v5e-8"))
