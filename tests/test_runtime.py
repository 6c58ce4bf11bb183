"""tokjax.runtime: the XLA:CPU flags chosen per compute dtype."""
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
