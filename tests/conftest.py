"""Test setup: 8 fake CPU devices, fast compiles, the persistent compilation cache, the peak cache.

XLA reads XLA_FLAGS when its first backend starts, so the flags are set here,
at import time, before any test runs.
"""
import atexit
import os
import shutil
import tempfile

# With the `tpu` extra installed, tokjax.compile's TPU topologies load libtpu,
# whose lockfile would otherwise fail the second process that loads it (the
# other xdist worker, a CLI subprocess); none of them uses a TPU chip. Set
# before tiny's import, whose CLI_ENV copies os.environ.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
from tiny import FAST_COMPILE  # noqa: E402

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), FAST_COMPILE, "--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# MFU's CPU peak (tokjax.device_peak): a small matmul, cached in a temporary
# file that the CLI tests' subprocesses share, never in ~/.cache.
_peaks = tempfile.mkdtemp(prefix="tokjax-test-peaks-")
atexit.register(shutil.rmtree, _peaks, True)
os.environ["TOKJAX_PEAK_CACHE"] = os.path.join(_peaks, "device_peaks.json")
os.environ["TOKJAX_PEAK_MATMUL_N"] = "256"

import jax  # noqa: E402

from tokjax import runtime  # noqa: E402

# The CLIs' code path: with the 8 fake CPU devices it leaves the persistent
# cache off, since restored multi-device CPU executables can deadlock (see
# runtime.configure_compile_cache). The CLI tests' subprocesses (one device)
# still use their own cache. Its own directory: executables compiled here are
# never shared with the CLIs' (one device, or several processes).
runtime.configure_compile_cache(
    os.environ.get("TOKJAX_JAX_CACHE", os.path.expanduser("~/.cache/tokjax/jax-tests")),
    min_compile_time_secs=0.0,
)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
