"""The persistent compilation cache must not break sharded steps on a second run.

XLA:CPU executables with collectives, restored from the cache, deadlocked on 8
fake devices (see runtime.configure_compile_cache). Each run is a fresh process,
as a rerun of the suite or of a CLI is.
"""
import json
import os
import subprocess
import sys

from tiny import FAST_COMPILE, ROOT

# Two cm3 training steps on the (2,2,2) mesh: its span sampler is a while loop
# whose condition all-reduces, next to the step's all-gathers.
SCRIPT = """
import json, sys
import jax
from test_train import _two_step_losses
from tiny import tiny_config
from tokjax import runtime

cache_dir, data_dir = sys.argv[1:]
runtime.configure_compile_cache(cache_dir, min_compile_time_secs=0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
config = tiny_config(data_dir, objective="cm3", mesh="fsdp_tp")
config.mesh.shape = (2, 2, 2)
print(json.dumps(_two_step_losses(config)))
"""

def test_sharded_step_runs_twice_against_one_cache(tmp_path):
  env = dict(
      os.environ, JAX_PLATFORMS="cpu",
      PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")]),
      # A deadlocked collective aborts after 20 s instead of XLA's default 40 s.
      XLA_FLAGS=f"{FAST_COMPILE} --xla_force_host_platform_device_count=8"
                " --xla_cpu_collective_call_terminate_timeout_seconds=20",
  )
  args = [sys.executable, "-c", SCRIPT, str(tmp_path / "cache"), str(tmp_path / "tfds")]
  runs = []
  for _ in range(2):  # Cold cache, then whatever the first run left in it.
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
  assert runs[0] == runs[1]
