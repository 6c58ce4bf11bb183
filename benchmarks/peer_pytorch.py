"""Training throughput of tokjax next to the same model in eager PyTorch, in one process.

  python benchmarks/peer_pytorch.py [--sizes 6x256,8x512] [--dtypes float32,bfloat16]
                                    [--steps 10] [--windows 3] [--warmup 2]

Needs PyTorch (`pip install -e '.[bench]'`); the library and its tests never do.

What is measured. For each size LxD (L layers, d_model D, D/64 heads, d_ff 4D)
and precision, one train step of causal LM on a fixed random batch of
16 x 256 byte tokens (vocab 260, the causal objective's tokenizer):

  tokjax   the real jitted, donated train step (`tokjax.trainer.make_train_step`
           on `Experiment.create` of configs/shakespeare.py), with the config's
           AdamW (global-norm clipping, warmup + cosine schedule, weight decay on
           matrices only). bfloat16 = `config.model.dtype='bfloat16'`: float32
           parameters, bfloat16 activations, float32 logits.
  PyTorch  the same network written as a PyTorch user would, run eagerly (no
           torch.compile): pre-norm blocks, `nn.RMSNorm(eps=1e-6)`, RoPE
           (rotate-half), `F.scaled_dot_product_attention(is_causal=True)`, a
           bias-free tanh-GELU MLP, final RMSNorm, untied head; the same loss
           (mean token cross-entropy, last position unscored) and
           `torch.optim.AdamW` + `clip_grad_norm_` + the same schedule.
           bfloat16 = `torch.autocast('cpu', dtype=torch.bfloat16)` around the
           forward pass (float32 parameters and residual stream).

The PyTorch model starts from tokjax's initial parameters, the script asserts
that both have exactly the same parameter count and (float32) the same logits
before training, and prints both losses after warm-up and after the timed
steps: equal architectures, data and optimizers give matching loss curves.

Each precision runs in its own process with the XLA:CPU flags `tokjax.train`
chooses for it (`tokjax.runtime.configure_xla_cpu`: Eigen matmuls for float32,
YNNPACK's for bfloat16), since XLA reads its flags once per process.

Timing: `--warmup` steps each (tokjax compiles here), then `--windows` windows
of `--steps` steps, alternating tokjax and PyTorch windows so that background
load hits both alike; each window ends on `jax.block_until_ready` (the PyTorch
step is synchronous on CPU). The figure is the median window, in tokens/s
counting all batch x seq_len positions, as benchmarks/train_throughput.py does.

How to read it. MFU = flops_per_token x tokens/s / peak, with flops_per_token
= 6 N + 12 L D T from `tokjax.metrics.flops_per_token` (N = matmul parameters,
i.e. all but the embedding table) and peak = the best 2048^3 matmul rate of that
framework in that precision, measured in this process (JAX: f32 accumulation;
PyTorch: `torch.matmul` on the CPU backend). The two MFUs therefore use
different denominators; tokens/s and the ratio tokjax / PyTorch (> 1: tokjax is
faster) compare the frameworks directly. On a shared or small CPU, rerun and
look at the spread between windows before trusting a ratio within ~10%.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError as e:  # pragma: no cover - depends on the environment
  raise SystemExit("benchmarks/peer_pytorch.py needs PyTorch: pip install -e '.[bench]' "
                   "(CPU-only wheels suffice).") from e

try:  # Run as a script: benchmarks/ is on sys.path.
  from train_throughput import CONFIG, matmul_peak
except ImportError:  # python -m benchmarks.peer_pytorch from the repository root.
  from benchmarks.train_throughput import CONFIG, matmul_peak

from tokjax import runtime
from tokjax.config import load_config_file
from tokjax.experiment import Experiment
from tokjax.metrics import flops_per_token
from tokjax.trainer import make_train_step

SEQ_LEN, BATCH = 256, 16


def parse_size(size: str) -> dict:
  """'6x256' -> 6 layers, d_model 256, head_dim 64 (4 heads), d_ff 1024."""
  layers, d_model = (int(x) for x in size.lower().split("x"))
  if d_model % 64:
    raise ValueError(f"Size {size!r}: d_model must be a multiple of 64 (head_dim 64).")
  return dict(num_layers=layers, d_model=d_model, num_heads=d_model // 64, d_ff=4 * d_model)


def make_config(size: str, dtype: str):
  """configs/shakespeare.py (causal, its optimizer) at this size, seq 256, batch 16, 1 device."""
  config = load_config_file(CONFIG)
  config.model.update(parse_size(size), dtype=dtype)
  config.seq_len, config.batch_size = SEQ_LEN, BATCH
  config.mesh.shape = (1,)
  config.progress_bar = False
  return config


def cpu_model_name() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return "unknown"


def torch_matmul_peak(dtype, n: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of an n x n x n `torch.matmul` in `dtype`, best of `repeats` runs."""
  a = torch.ones(n, n, dtype=dtype)
  b = torch.ones(n, n, dtype=dtype)
  out = torch.matmul(a, b)
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    torch.matmul(a, b, out=out)
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


# ----------------------------------------------------------------------------
# The PyTorch peer: tokjax/models/{transformer,block,attention,layers}.py.


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
  """Rotate-half RoPE on x: [batch, heads, seq, head_dim], angles in float32."""
  x1, x2 = x.float().chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
  def __init__(self, d_model: int, num_heads: int):
    super().__init__()
    self.num_heads, self.head_dim = num_heads, d_model // num_heads
    self.wq = nn.Linear(d_model, d_model, bias=False)
    self.wk = nn.Linear(d_model, d_model, bias=False)
    self.wv = nn.Linear(d_model, d_model, bias=False)
    self.wo = nn.Linear(d_model, d_model, bias=False)

  def forward(self, x, cos, sin):
    b, t, d = x.shape
    split = lambda y: y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
    q = apply_rope(split(self.wq(x)), cos, sin)
    k = apply_rope(split(self.wk(x)), cos, sin)
    out = F.scaled_dot_product_attention(q, k, split(self.wv(x)), is_causal=True)
    return self.wo(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
  def __init__(self, d_model: int, d_ff: int):
    super().__init__()
    self.w_in = nn.Linear(d_model, d_ff, bias=False)
    self.w_out = nn.Linear(d_ff, d_model, bias=False)

  def forward(self, x):
    return self.w_out(F.gelu(self.w_in(x), approximate="tanh"))


class Block(nn.Module):
  def __init__(self, d_model: int, num_heads: int, d_ff: int):
    super().__init__()
    self.attn_norm = nn.RMSNorm(d_model, eps=1e-6)
    self.attn = Attention(d_model, num_heads)
    self.mlp_norm = nn.RMSNorm(d_model, eps=1e-6)
    self.mlp = Mlp(d_model, d_ff)

  def forward(self, x, cos, sin):
    x = x + self.attn(self.attn_norm(x), cos, sin)
    return x + self.mlp(self.mlp_norm(x))


class TorchLM(nn.Module):
  """Embedding -> pre-norm blocks with RoPE -> RMSNorm -> untied head (no biases)."""

  def __init__(self, vocab_size, num_layers, d_model, num_heads, d_ff, max_seq_len,
               rope_base=10000.0):
    super().__init__()
    self.embed = nn.Embedding(vocab_size, d_model)
    self.blocks = nn.ModuleList(Block(d_model, num_heads, d_ff) for _ in range(num_layers))
    self.final_norm = nn.RMSNorm(d_model, eps=1e-6)
    self.head = nn.Linear(d_model, vocab_size, bias=False)
    half = d_model // num_heads // 2
    inv_freq = rope_base ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(max_seq_len, dtype=torch.float32)[:, None] * inv_freq
    self.register_buffer("cos", angles.cos(), persistent=False)
    self.register_buffer("sin", angles.sin(), persistent=False)

  def forward(self, tokens):
    t = tokens.shape[1]
    cos, sin = self.cos[:t], self.sin[:t]
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, cos, sin)
    return self.head(self.final_norm(x))

  @torch.no_grad()
  def load_tokjax(self, params: dict) -> None:
    """Copies tokjax parameters (a pure dict of arrays) into this model."""
    t = lambda a: torch.from_numpy(np.array(a, np.float32))
    d = self.embed.weight.shape[1]
    self.embed.weight.copy_(t(params["embed"]))
    self.head.weight.copy_(t(params["head"]).T)
    self.final_norm.weight.copy_(t(params["final_norm"]["scale"]))
    for i, block in enumerate(self.blocks):
      p = params["blocks"][i]
      block.attn_norm.weight.copy_(t(p["attn_norm"]["scale"]))
      block.mlp_norm.weight.copy_(t(p["mlp_norm"]["scale"]))
      for name in ("wq", "wk", "wv"):  # [embed, heads, kv] -> Linear [heads*kv, embed]
        getattr(block.attn, name).weight.copy_(t(p["attn"][name]).reshape(d, d).T)
      block.attn.wo.weight.copy_(t(p["attn"]["wo"]).reshape(d, d).T)  # [heads, kv, embed]
      block.mlp.w_in.weight.copy_(t(p["mlp"]["w_in"]).T)
      block.mlp.w_out.weight.copy_(t(p["mlp"]["w_out"]).T)


def lr_lambda(config):
  """optax.warmup_cosine_decay_schedule(0, lr, warmup, decay_steps, lr * min_lr_ratio) / lr."""
  o = config.optimizer
  warmup = o.warmup_steps
  decay_steps = max(config.num_train_steps, warmup + 1) - warmup

  def fn(step):
    if step < warmup:
      return step / warmup
    frac = min(step - warmup, decay_steps) / decay_steps
    return (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)) + o.min_lr_ratio

  return fn


# ----------------------------------------------------------------------------
# The two runners: `run(n)` takes n train steps and returns when they are done.


class TokjaxRunner:
  def __init__(self, config, tokens: np.ndarray):
    self.exp = Experiment.create(config)
    self.step = make_train_step(self.exp)
    self.state = self.exp.init_state()
    self.batch = jax.device_put(tokens, self.exp.batch_sharding)
    params = self.state["params"]
    self.num_params = sum(x.size for x in jax.tree.leaves(params))
    self.embed_params = params["embed"].get_value().size
    self.loss = float("nan")

  def initial_params(self) -> dict:
    return jax.device_get(nnx.to_pure_dict(self.state["params"]))

  def logits(self) -> np.ndarray:
    """Forward logits of the current parameters on the batch (float32, jitted)."""
    fwd = jax.jit(lambda p, x: self.exp.model(p)(x, attention="causal"))
    return np.asarray(fwd(self.state["params"], self.batch))

  def run(self, n: int) -> None:
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    self.loss = float(metrics["loss"])


class TorchRunner:
  def __init__(self, config, tokens: np.ndarray, vocab_size: int):
    m, o = config.model, config.optimizer
    self.model = TorchLM(vocab_size, m.num_layers, m.d_model, m.num_heads, m.d_ff,
                         config.seq_len)
    self.num_params = sum(p.numel() for p in self.model.parameters())
    self.embed_params = self.model.embed.weight.numel()
    decay = [p for p in self.model.parameters() if p.ndim >= 2]  # tokjax: matrices only
    no_decay = [p for p in self.model.parameters() if p.ndim < 2]
    self.opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=o.learning_rate, betas=(o.b1, o.b2), eps=1e-8,  # optax.adamw's eps
    )
    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(config))
    self.clip = o.grad_clip_norm
    self.bf16 = m.dtype == "bfloat16"
    self.tokens = torch.from_numpy(tokens.astype(np.int64))
    self.inputs, self.targets = self.tokens, self.tokens[:, 1:].reshape(-1)
    self.loss = float("nan")

  def logits(self) -> np.ndarray:
    with torch.no_grad():
      return self.model(self.tokens).float().numpy()

  def train_step(self) -> torch.Tensor:
    self.opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
      logits = self.model(self.inputs)
    # Position n predicts token n + 1; the last position is unscored (tokjax's `next_token`).
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), self.targets)
    loss.backward()
    nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    self.sched.step()
    return loss.detach()

  def run(self, n: int) -> None:
    for _ in range(n):
      loss = self.train_step()
    self.loss = loss.item()


def compare(size: str, dtype: str, args, peaks: dict) -> None:
  config = make_config(size, dtype)
  tokens = np.random.default_rng(0).integers(0, 256, (BATCH, SEQ_LEN), np.int32)
  tj = TokjaxRunner(config, tokens)
  pt = TorchRunner(config, tokens, tj.exp.tokenizer.vocab_size)
  assert tj.num_params == pt.num_params, (tj.num_params, pt.num_params)
  assert tj.embed_params == pt.embed_params, (tj.embed_params, pt.embed_params)
  pt.model.load_tokjax(tj.initial_params())
  m = config.model
  print(f"\n[{size} {dtype}] {m.num_layers} layers x d_model {m.d_model}, {m.num_heads} heads, "
        f"d_ff {m.d_ff}, vocab {tj.exp.tokenizer.vocab_size}, batch {BATCH} x seq {SEQ_LEN}")
  print(f"  parameters: tokjax {tj.num_params:,}  PyTorch {pt.num_params:,}  (equal)")
  if dtype == "float32":
    diff = np.max(np.abs(tj.logits() - pt.logits()))
    print(f"  initial logits, max |tokjax - PyTorch|: {diff:.2e}")
    assert diff < 1e-3, f"The PyTorch peer's logits differ from tokjax's by {diff}."

  start = time.perf_counter()
  tj.run(args.warmup)
  compile_s = time.perf_counter() - start
  pt.run(args.warmup)
  print(f"  after {args.warmup} warm-up steps: loss tokjax {tj.loss:.4f}  PyTorch {pt.loss:.4f}  "
        f"(tokjax compile + warm-up {compile_s:.1f} s)")

  tokens_per_window = args.steps * BATCH * SEQ_LEN
  rates = {"tokjax": [], "PyTorch": []}
  for _ in range(args.windows):
    for name, runner in (("tokjax", tj), ("PyTorch", pt)):
      start = time.perf_counter()
      runner.run(args.steps)
      rates[name].append(tokens_per_window / (time.perf_counter() - start))
  total = args.warmup + args.windows * args.steps
  print(f"  after {total} steps: loss tokjax {tj.loss:.4f}  PyTorch {pt.loss:.4f}")

  flops = flops_per_token(tj.num_params - tj.embed_params, m.num_layers, m.d_model, SEQ_LEN)
  median = {k: statistics.median(v) for k, v in rates.items()}
  print(f"  {flops / 1e6:.1f} MFLOP/token; {args.windows} window(s) of {args.steps} steps, "
        f"median (min..max) tokens/s:")
  for name, fw in (("tokjax", "jax"), ("PyTorch", "torch")):
    peak = peaks[fw, dtype]
    print(f"    {name:<8} {median[name]:>9,.0f}  ({min(rates[name]):,.0f}..{max(rates[name]):,.0f})"
          f"   MFU {100 * flops * median[name] / peak:5.1f}% of {fw} {dtype} peak "
          f"{peak / 1e9:.0f} GFLOP/s")
  print(f"    ratio tokjax / PyTorch: {median['tokjax'] / median['PyTorch']:.2f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="6x256,8x512",
                      help="LAYERSxD_MODEL, comma separated (heads = D/64, d_ff = 4D)")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per window")
  parser.add_argument("--windows", type=int, default=3, help="timed windows per framework")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps (tokjax compiles)")
  args = parser.parse_args()
  dtypes = args.dtypes.split(",")
  for dtype in dtypes:
    if dtype not in ("float32", "bfloat16"):
      raise SystemExit(f"Unknown dtype {dtype!r}; use float32 and/or bfloat16.")
  if len(dtypes) > 1:  # XLA's flags are per process (runtime.configure_xla_cpu).
    for dtype in dtypes:
      subprocess.run([sys.executable, __file__, "--dtypes", dtype, "--sizes", args.sizes,
                      "--steps", str(args.steps), "--windows", str(args.windows),
                      "--warmup", str(args.warmup)], check=True)
    return
  (dtype,) = dtypes
  runtime.configure_xla_cpu(dtype)  # As `tokjax.train` does, before jax starts.

  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  print(f"CPU: {cpu_model_name()}; {threads} cores; jax {jax.__version__} on {jax.devices()}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  peaks = {("jax", dtype): matmul_peak(getattr(jnp, dtype)),
           ("torch", dtype): torch_matmul_peak(getattr(torch, dtype))}
  print("2048^3 matmul peak, GFLOP/s: " + ", ".join(
      f"{fw} {dtype} {peaks[fw, dtype] / 1e9:.0f}" for fw, dtype in peaks))
  for size in args.sizes.split(","):
    compare(size, dtype, args, peaks)

if __name__ == "__main__":
  main()
