"""Training throughput, MFU, and AR decode speed against measured rooflines.

  python benchmarks/train_throughput.py [--sizes base,large] [--dtype float32]

For each model size: train tokens/s of the real jitted train step (causal
objective, seq_len 256, global batch 16) and model-FLOPs utilisation, i.e.
6 N + 12 L d T FLOPs per token (PaLM, App. B) times tokens/s, divided by a
float32 matmul peak measured in this process. Then AR decode tokens/s with the
KV cache at batch 1 and 32, against the memory-bandwidth roofline
batch / (parameter bytes / measured copy bandwidth).
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from tokjax import runtime
from tokjax.config import load_config_file
from tokjax.device_peak import best_time, matmul_peak
from tokjax.experiment import Experiment
from tokjax.metrics import model_flops_per_token
from tokjax.samplers import autoregressive, model_fns
from tokjax.trainer import make_train_step

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "shakespeare.py")


def copy_bandwidth(num_bytes: int = 256 << 20) -> float:
  """Bytes/s of an in-place array rewrite (bytes copied, not read + written).

  The buffer is donated, so the time excludes fresh allocations (page faults).
  """
  f = jax.jit(lambda x: x * 1.0001, donate_argnums=0)
  x = [f(jnp.ones((num_bytes // 4,), jnp.float32))]

  def step():
    x[0] = f(x[0])
    return x[0]

  return num_bytes / best_time(step, 10)


def train_throughput(size: str, dtype: str, steps: int):
  config = load_config_file(CONFIG, f"size={size}")
  config.seq_len, config.batch_size = 256, 16
  config.model.dtype = dtype
  config.mesh.shape = (1,)
  exp = Experiment.create(config)
  step = make_train_step(exp)
  state = exp.init_state()
  batch = jax.device_put(
      np.random.default_rng(0).integers(0, 256, (config.batch_size, config.seq_len), np.int32),
      exp.batch_sharding,
  )
  for _ in range(2):  # Compile and warm up.
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  tokens_per_s = steps * config.batch_size * config.seq_len / (time.perf_counter() - start)
  params = state["params"]
  num_params = sum(x.size for x in jax.tree.leaves(params))
  flops = model_flops_per_token(config, params)
  return exp, params, num_params, tokens_per_s, flops


def decode_throughput(exp, params, batch: int, new_tokens: int) -> float:
  fns = model_fns(exp.graphdef, exp.model_config)
  prompt = jnp.full((batch, 1), exp.tokenizer.bos_id, jnp.int32)

  def run():
    return autoregressive.sample(
        fns, params, prompt, jax.random.key(0), max_new_tokens=new_tokens,
        eos_id=-1, pad_id=exp.tokenizer.pad_id, temperature=1.0, precision="float32",
    )

  return batch * new_tokens / best_time(run, 3)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="base,large")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  runtime.configure_xla_cpu(args.dtype)  # As tokjax.train does, before jax starts.
  peak = matmul_peak()
  peak_bf16 = matmul_peak(jnp.bfloat16)
  bandwidth = copy_bandwidth()
  print(f"devices: {jax.devices()}")
  print(f"measured matmul peak: float32 {peak / 1e9:.0f} GFLOP/s, "
        f"bfloat16 {peak_bf16 / 1e9:.0f} GFLOP/s; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
  for size in args.sizes.split(","):
    exp, params, n, tok_s, flops = train_throughput(size, args.dtype, args.steps)
    m = exp.config.model
    print(f"\n[{size}] {m.num_layers} layers x {m.d_model} wide, {n / 1e6:.1f}M params, "
          f"{args.dtype}, batch {exp.config.batch_size} x seq {exp.config.seq_len}")
    print(f"  train: {tok_s:,.0f} tokens/s, {flops * tok_s / 1e9:.0f} GFLOP/s model FLOPs, "
          f"MFU {100 * flops * tok_s / peak:.1f}% of the float32 matmul peak")
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    for batch in (1, 32):
      rate = decode_throughput(exp, params, batch, new_tokens=128)
      roofline = batch * bandwidth / param_bytes
      print(f"  decode batch {batch:>2}: {rate:,.0f} tokens/s "
            f"(bandwidth roofline {roofline:,.0f} tokens/s, {100 * rate / roofline:.0f}%)")


if __name__ == "__main__":
  main()
