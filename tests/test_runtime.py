"""tokjax.runtime: the XLA:CPU flags chosen per compute dtype, and the CPU device count."""
import os

import pytest

from tokjax import runtime

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


@pytest.mark.parametrize("dtype, before, after", [
    ("float32", "", f"{FLAG}="),
    ("float32", "--xla_force_host_platform_device_count=8",
     f"--xla_force_host_platform_device_count=8 {FLAG}="),
    ("bfloat16", "--xla_force_host_platform_device_count=8",
     "--xla_force_host_platform_device_count=8"),
    ("float32", f"{FLAG}=dot", f"{FLAG}=dot"),  # The user's own choice wins.
])
def test_configure_xla_cpu(monkeypatch, dtype, before, after):
  monkeypatch.setenv("XLA_FLAGS", before)
  runtime.configure_xla_cpu(dtype)
  runtime.configure_xla_cpu(dtype)  # Idempotent.
  assert os.environ["XLA_FLAGS"] == after


@pytest.mark.parametrize("before, after", [
    ("", "--xla_force_host_platform_device_count=2"),
    (f"--xla_force_host_platform_device_count=8 {FLAG}=",
     f"{FLAG}= --xla_force_host_platform_device_count=2"),  # Replaced, the rest kept.
])
def test_configure_cpu_devices(monkeypatch, before, after):
  monkeypatch.setenv("XLA_FLAGS", before)
  runtime.configure_cpu_devices(2)
  assert os.environ["XLA_FLAGS"] == after


def test_cpu_devices_errors(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(ValueError, match="cpu_devices must be >= 1"):
    runtime.configure_cpu_devices(0)
  # This process's backend started with 8 devices (conftest): too late for 2.
  with pytest.raises(ValueError, match="already started with 8 devices"):
    runtime.initialize(cpu_devices=2)
