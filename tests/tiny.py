"""A tiny config on the fixture corpus, shared by the training and CLI tests."""
import os
import subprocess
import sys

from tokjax.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "fixtures", "corpus")
# Every XLA program in the tests, in process and in the CLIs' subprocesses, is
# compiled with XLA:CPU's backend (LLVM) optimisations off. Compiling is most of
# the suite's time and this halves it. Results may differ from the default
# level's in the last bits of a float32 (measured: 2 of 6 training losses by
# 1-2 ulp), so every test compares programs compiled with the same flags.
FAST_COMPILE = "--xla_backend_optimization_level=0"
# XLA's default level, for the few in-process programs whose time is running
# rather than compiling: `jax.jit(f, compiler_options=OPTIMIZED)`.
OPTIMIZED = {"xla_backend_optimization_level": 3}
# The CLI tests' subprocesses: one CPU device each (not the suite's 8).
CLI_ENV = dict(os.environ, XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu")


def run_cli(module, *args, timeout=300) -> str:
  """Runs `python -m tokjax.MODULE ARGS...`, asserts it succeeded, returns its stdout."""
  out = subprocess.run([sys.executable, "-m", f"tokjax.{module}", *args], cwd=ROOT, env=CLI_ENV,
                       capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def load_config(arg: str):
  """configs/shakespeare.py:ARG, as `--config` would load it."""
  return load_config_file(os.path.join(ROOT, "configs", "shakespeare.py"), arg)


# The same settings as --config.KEY=VALUE flags, so CLI tests and in-process
# tests train the identical model.
TINY_OVERRIDES = dict(
    seq_len=32, batch_size=8, num_train_steps=6, log_every_steps=1,
    eval_every_steps=3, eval_steps=2, final_eval_steps=2, checkpoint_every_steps=3,
    progress_bar=False,
)
TINY_SAMPLER = {"sampler.num_samples": 2, "sampler.ar.max_new_tokens": 12, "sampler.md4.num_steps": 8,
                "sampler.maskgit.num_steps": 4}


def tiny_config(data_dir: str, objective: str = "causal", mesh: str = "dp"):
  config = load_config(f"objective={objective},size=tiny,mesh={mesh}")
  config.data.name = "text_files"
  config.data.path = CORPUS
  config.data.data_dir = data_dir
  config.update(TINY_OVERRIDES)
  for key, value in TINY_SAMPLER.items():
    section, *rest = key.split(".")
    target = config[section]
    for part in rest[:-1]:
      target = target[part]
    target[rest[-1]] = value
  return config


def cli_flags(data_dir: str, objective: str = "causal") -> list[str]:
  flags = [f"--config={ROOT}/configs/shakespeare.py:objective={objective},size=tiny",
           "--config.data.name=text_files", f"--config.data.path={CORPUS}",
           f"--config.data.data_dir={data_dir}"]
  flags += [f"--config.{k}={v}" for k, v in TINY_OVERRIDES.items()]
  flags += [f"--config.{k}={v}" for k, v in TINY_SAMPLER.items()]
  return flags
