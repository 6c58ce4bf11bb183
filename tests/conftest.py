"""Test setup: 8 fake CPU devices and the persistent compilation cache.

The XLA flag must be set before jax is imported anywhere, which is why it lives
here at module import time.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update(
    "jax_compilation_cache_dir",
    # Its own directory: executables compiled for 8 fake devices are never
    # shared with the CLIs' (one device, or several processes).
    os.environ.get("TOKJAX_JAX_CACHE", os.path.expanduser("~/.cache/tokjax/jax-tests")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
