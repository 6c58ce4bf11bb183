"""Sampler speed: AR decoding beside Hugging Face `generate`, and the masked-token samplers.

  python benchmarks/sampler_speed.py [--family ar|masked|all] [--sizes base,large]
      [--batches 1,32] [--prompt_len 64] [--new_tokens 256] [--repeats 3]
      [--torch_threads 2,1] [--prefill_len 1000] [--prefill_batches 1,8] [--num_beams 4]
      [--cpu_devices 2]

AR (--family ar, the default; needs `pip install -e '.[bench]'` for the peer).
For each size (configs/shakespeare.py size=base: 6 layers x d_model 256, 4
heads, d_ff 1024; size=large: 8 x 512, 8 heads, d_ff 2048; causal objective,
byte vocabulary of 260), random weights, float32, one process. With
--cpu_devices N, XLA:CPU presents the host as N devices (what `tokjax.sample
--cpu_devices` does) and every tokjax row below shards its batch over them,
parameters replicated, when N divides the batch; a batch it does not divide
(batch 1) runs tensor parallel instead, each weight split over the devices
(the fsdp_tp preset, `tokjax.sample --mesh=fsdp_tp`). XLA:CPU runs each
batched matmul, such as decode attention over the KV cache, on one core, while
devices run concurrently.

  generate  tokens/s of `tokjax.samplers.autoregressive.sample` with the KV
            cache (the compiled program's second call; temperature 0 for
            greedy, 1 for sampled; eos_id -1, so no row stops early), next
            to `transformers` `GPT2LMHeadModel.generate(max_new_tokens=N,
            min_new_tokens=N, use_cache=True)` of the same shape (n_layer,
            n_embd, n_head, n_inner = d_ff, the same vocabulary, n_positions
            1024; GPT-2 also has learned positions, biases and LayerNorms)
            under `torch.inference_mode()`, greedy or do_sample with top_k 0,
            top_p 1. Prompts of --prompt_len random bytes; batch 1 and 32.
            Each round times tokjax and HF alternately, so background load
            hits both alike; the figure is the best of --repeats rounds (the
            median in parentheses). HF runs with each of --torch_threads
            (default: the core count) and the faster counts.
  step      one decode step, q_len 1, as the AR sampler runs it, on a cache of
            prompt_len + new_tokens slots filled to the middle (it reads the
            filled blocks of model.kv_block_len slots), against the plain
            one-token forward `model(tokens[batch, 1])` of the same batch:
            per step in a jitted `fori_loop` of 32 steps each (no dispatch in
            either). Also printed: the filled cache's bytes over the copy
            bandwidth, the least a step must add to the forward, and so the
            lowest decode / forward ratio that this forward time allows.
  prefill   tokens/s of `decode` on a --prefill_len prompt into an empty cache
            of that length (batch 1 and 8), against the jitted full causal
            forward on [batch, prefill_len] (the train step's forward).
  beam      `tokjax.samplers.beam.sample` with --num_beams beams against
            greedy AR on the same rows: tokens/s and the time ratio.

Rooflines, printed beside each figure. Bandwidth: bytes that must cross the
memory bus per step (parameters, plus for decoding the filled part of the KV
cache: the mean over the run for generate, the middle for step) over the
in-place copy bandwidth measured in this process (train_throughput's). Compute:
matmul FLOPs (2 per parameter per token, plus 4 d_model per layer per
attended slot) over the float32 2048^3 matmul peak measured in this process.
The roofline is the lower of the two rates.

Masked (--family masked): network calls (NFE), wall time and sample quality of
the masked-token samplers, for an md4 model (a trained run given by --workdir,
and random weights of --random_size) at the model's sequence length: md4
ancestral on a --grid_steps grid, the same grid cached (a network call only
after a step that unmasked a token), first_hitting (one call per token), and
maskgit at 8, 16 and 32 steps. Each line gives NFE, wall seconds (second call,
compiled) and first_hitting's speed-up over the grid. With --judge, each
sampler is also scored in float32 and float64 Gumbel precision: bits per byte
under the judge and the samples' unigram entropy (`tokjax.sample_quality`).

  python benchmarks/sampler_speed.py --family masked [--workdir MD4_RUN] \
      [--judge CAUSAL_RUN] [--random_size large] [--grid_steps 1000] [--num_samples 4]

On a shared machine compare only figures from one invocation, and look at the
spread between best and median before trusting a ratio within ~10%.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "shakespeare.py")


# ----------------------------------------------------------------------------
# Masked-token samplers (--family masked).


def samplers(grid_steps: int) -> list[tuple[str, str, dict]]:
  """(label, sampler name, settings) rows."""
  rows = [(f"md4 grid {grid_steps}", "md4", dict(num_steps=grid_steps)),
          (f"md4 grid {grid_steps} cached", "md4", dict(num_steps=grid_steps, cached=True)),
          ("first_hitting", "first_hitting", {})]
  return rows + [(f"maskgit {k}", "maskgit", dict(num_steps=k)) for k in (8, 16, 32)]


def timed(exp, params, name: str, settings: dict, precision: str, num_samples: int):
  """(texts, record, wall seconds of a second, compiled call)."""
  from tokjax import generation

  s = exp.config.sampler
  s.name, s.precision, s.num_samples = name, precision, num_samples
  s[name].update(settings)
  generation.generate(exp, params, prompt="", num_samples=num_samples, seed=0)  # Compile.
  start = time.perf_counter()
  texts, record = generation.generate(exp, params, prompt="", num_samples=num_samples, seed=1)
  return texts, record, time.perf_counter() - start


def run(label: str, exp, params, args, judge=None) -> None:
  from tokjax import sample_quality

  print(f"\n[{label}] seq_len {exp.config.seq_len}, {args.num_samples} samples")
  first_hitting_s = {}
  for row, name, settings in samplers(args.grid_steps):
    for precision in ("float32", "float64") if judge else ("float64",):
      texts, record, wall = timed(exp, params, name, dict(settings), precision, args.num_samples)
      first_hitting_s.setdefault(precision, {})[row] = wall
      line = f"  {row:<24} {precision}: NFE {record['nfe']:>5}, {wall:7.2f} s"
      if judge:
        q = sample_quality.judge_report(judge[0], judge[1], texts, seed=0)
        line += (f", judge {q['gen_bits_per_byte']:.3f} bits/byte, entropy "
                 f"{sample_quality.unigram_entropy(texts):.3f} bits/byte")
      print(line)
  for precision, walls in first_hitting_s.items():
    grid = walls[f"md4 grid {args.grid_steps}"]
    print(f"  first_hitting speed-up over the {args.grid_steps}-step grid ({precision}): "
          f"{grid / walls['first_hitting']:.1f}x")


def random_md4(size: str):
  from tokjax.config import load_config_file
  from tokjax.experiment import Experiment

  config = load_config_file(CONFIG, f"objective=md4,size={size}")
  config.mesh.shape = (1,)
  exp = Experiment.create(config)
  return exp, exp.init_state()["params"]


def masked_family(args) -> None:
  from tokjax.restore import load_run

  if args.workdir:
    exp, params, step = load_run(args.workdir)
    judge = load_run(args.judge)[:2] if args.judge else None
    run(f"{args.workdir} (step {step})", exp, params, args, judge)
  exp, params = random_md4(args.random_size)
  m = exp.config.model
  run(f"random weights, {m.num_layers} x {m.d_model}", exp, params, args)


# ----------------------------------------------------------------------------
# Autoregressive decoding (--family ar).


def cpu_model_name() -> str:
  """`lscpu`'s model name (with family / model / stepping), else /proc/cpuinfo's."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("Model name", "unknown")
    extra = ", ".join(f"{k.lower()} {fields[k]}" for k in ("CPU family", "Model", "Stepping")
                      if k in fields)
    caches = ", ".join(f"{k} {fields[k]}" for k in ("L2 cache", "L3 cache") if k in fields)
    return f"{name} ({extra}; {caches})"
  except (OSError, subprocess.CalledProcessError, ValueError):
    from tokjax.device_peak import cpu_model
    return cpu_model()


class Rates:
  """Interleaved timings: best and median seconds per label."""

  def __init__(self):
    self.times: dict[str, list[float]] = {}

  def time(self, label: str, fn) -> None:
    start = time.perf_counter()
    fn()
    self.times.setdefault(label, []).append(time.perf_counter() - start)

  def best(self, label: str) -> float:
    return min(self.times[label])

  def median(self, label: str) -> float:
    return statistics.median(self.times[label])


class Roofline:
  """The memory-bandwidth and matmul-peak bounds of one model on this machine."""

  def __init__(self, bandwidth: float, peak: float, param_bytes: int, matmul_params: int,
               num_layers: int, d_model: int, kv_bytes_per_slot: int):
    self.bandwidth, self.peak = bandwidth, peak
    self.param_bytes, self.matmul_params = param_bytes, matmul_params
    self.num_layers, self.d_model = num_layers, d_model
    self.kv_bytes_per_slot = kv_bytes_per_slot  # Keys and values of all layers, one row.

  def step_seconds(self, batch: int, tokens: int, attended: float, kv_read: float) -> float:
    """The fastest a forward over `tokens` tokens per row, each attending to
    `attended` slots on average, with `kv_read` cache slots read per row, can be."""
    bytes_moved = self.param_bytes + batch * kv_read * self.kv_bytes_per_slot
    flops = batch * tokens * (2 * self.matmul_params + 4 * self.num_layers * self.d_model * attended)
    return max(bytes_moved / self.bandwidth, flops / self.peak)

  def describe(self, rate: float, bound: float, unit: str = "tokens/s") -> str:
    return f"{rate:,.0f} {unit} (roofline {bound:,.0f}, {100 * rate / bound:.0f}%)"


def ar_model(size: str, max_len: int):
  """(Experiment, params) of configs/shakespeare.py, causal, at `size`, seq_len
  max_len, on a data-parallel mesh over all devices (one, without --cpu_devices)."""
  from tokjax.config import load_config_file
  from tokjax.experiment import Experiment

  config = load_config_file(CONFIG, f"size={size}")
  config.seq_len = max_len  # The model's max_seq_len: the cache and the prefill.
  config.mesh.shape = (-1,)
  exp = Experiment.create(config)
  return exp, exp.init_state()["params"]


def placed(exp, params, *rows):
  """params and `rows` (arrays of one batch size) where the benchmark runs them:
  the rows sharded over the mesh's devices (params replicated) when their
  number divides the batch, else tensor parallel on the fsdp_tp preset's mesh
  (on 2 devices: Megatron-style over heads and MLP width): the params split
  over the devices, the rows replicated."""
  import jax

  from tokjax import sharding

  if rows[0].shape[0] % exp.batch_sharding.num_devices == 0:
    return (params, *(jax.device_put(r, exp.batch_sharding) for r in rows))
  preset = sharding.preset("fsdp_tp")
  mesh = sharding.make_mesh(preset["shape"])
  split = sharding.state_shardings(exp.abstract_state["params"], mesh, preset["rules"])
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return (jax.device_put(params, split), *(jax.device_put(r, replicated) for r in rows))


def hf_model(exp, n_positions: int):
  """A randomly initialised GPT2LMHeadModel of the tokjax model's shape."""
  import torch
  from transformers import GPT2Config, GPT2LMHeadModel

  m, tok = exp.model_config, exp.tokenizer
  config = GPT2Config(vocab_size=m.vocab_size, n_positions=n_positions, n_embd=m.d_model,
                      n_layer=m.num_layers, n_head=m.num_heads, n_inner=m.d_ff,
                      bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id)
  torch.manual_seed(0)
  return GPT2LMHeadModel(config).eval()


def ar_family(args) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers

  transformers.logging.set_verbosity_error()  # generate's advice on flags and padding.
  try:  # Run as a script: benchmarks/ is on sys.path.
    from train_throughput import copy_bandwidth
  except ImportError:  # python -m benchmarks.sampler_speed from the repository root.
    from benchmarks.train_throughput import copy_bandwidth
  from tokjax.device_peak import matmul_peak
  from tokjax.samplers import autoregressive, model_fns

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  threads = [int(t) for t in args.torch_threads.split(",")] if args.torch_threads else [cores]
  bandwidth, peak = copy_bandwidth(), matmul_peak()
  print(f"CPU: {cpu_model_name()}, {cores} cores")
  print(f"jax {jax.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"measured: copy bandwidth {bandwidth / 1e9:.1f} GB/s, float32 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s; torch threads {threads}")
  prompt_len, new = args.prompt_len, args.new_tokens
  total = prompt_len + new
  for size in args.sizes.split(","):
    exp, params = ar_model(size, max(total, args.prefill_len))
    fns = model_fns(exp.graphdef, exp.model_config)
    hf = hf_model(exp, max(1024, total))
    m = exp.model_config
    leaves = jax.tree.leaves(params)
    param_bytes = sum(x.nbytes for x in leaves)
    embed = params["embed"].get_value().size
    roof = Roofline(bandwidth, peak, param_bytes, sum(x.size for x in leaves) - embed,
                    m.num_layers, m.d_model, 2 * m.num_layers * m.d_model * 4)
    print(f"\n[{size}] {m.num_layers} layers x d_model {m.d_model}, {m.num_heads} heads, d_ff "
          f"{m.d_ff}, vocab {m.vocab_size}; tokjax {sum(x.size for x in leaves) / 1e6:.2f}M "
          f"params ({param_bytes / 1e6:.0f} MB), HF GPT-2 "
          f"{sum(p.numel() for p in hf.parameters()) / 1e6:.2f}M")
    generate_rows(args, exp, fns, params, hf, roof, threads, autoregressive)
    step_rows(args, exp, fns, params, roof, jax, jnp, np)
    prefill_rows(args, exp, fns, params, roof, jax, jnp, np)
    if args.num_beams:
      beam_rows(args, exp, fns, params, jax, np)


def generate_rows(args, exp, fns, all_params, hf, roof, threads, autoregressive) -> None:
  import jax
  import numpy as np
  import torch

  prompt_len, new = args.prompt_len, args.new_tokens
  mean_fill = prompt_len + new / 2
  print(f"  generate: prompt {prompt_len}, {new} new tokens, KV cache; best of {args.repeats} "
        "(median)")
  for batch in (int(b) for b in args.batches.split(",")):
    prompt = np.random.default_rng(batch).integers(0, 256, (batch, prompt_len), np.int32)
    hf_prompt = torch.from_numpy(prompt.astype(np.int64))
    params, prompt = placed(exp, all_params, prompt)
    for mode, temperature in (("greedy", 0.0), ("sampled", 1.0)):
      def tokjax_run(seed=1):
        out = autoregressive.sample(
            fns, params, prompt, jax.random.key(seed), max_new_tokens=new, eos_id=-1,
            pad_id=exp.tokenizer.pad_id, temperature=temperature)
        jax.block_until_ready(out.tokens)
        assert int(out.nfe) == new, f"a row stopped early: {int(out.nfe)} of {new} steps"

      sampling = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0) if temperature else {}

      def hf_run(num_threads, tokens=new):
        torch.set_num_threads(num_threads)
        with torch.inference_mode():
          out = hf.generate(hf_prompt, attention_mask=torch.ones_like(hf_prompt),
                            max_new_tokens=tokens, min_new_tokens=tokens, use_cache=True,
                            pad_token_id=exp.tokenizer.pad_id, **sampling)
        assert out.shape == (batch, prompt_len + tokens), out.shape

      tokjax_run(seed=0)  # Compile.
      for t in threads:
        hf_run(t, tokens=8)  # Warm up.
      rates = Rates()
      for _ in range(args.repeats):
        rates.time("tokjax", tokjax_run)
        for t in threads:
          rates.time(f"hf{t}", lambda t=t: hf_run(t))
      bound = batch / roof.step_seconds(batch, 1, mean_fill, mean_fill)
      tok = batch * new
      hf_label = min((f"hf{t}" for t in threads), key=rates.best)
      hf_rates = ", ".join(f"{t} threads {tok / rates.best(f'hf{t}'):,.0f} "
                           f"({tok / rates.median(f'hf{t}'):,.0f})" for t in threads)
      print(f"    batch {batch:>2} {mode:<7}: tokjax {roof.describe(tok / rates.best('tokjax'), bound)}"
            f" (median {tok / rates.median('tokjax'):,.0f}); HF {hf_rates} tokens/s; "
            f"tokjax / HF {rates.best(hf_label) / rates.best('tokjax'):.2f}x "
            f"(medians {rates.median(hf_label) / rates.median('tokjax'):.2f}x)")


def step_rows(args, exp, fns, all_params, roof, jax, jnp, np, steps: int = 32) -> None:
  """Per-step seconds of decode (q_len 1, cache filled to the middle) and of
  the one-token forward, each in a jitted fori_loop of `steps` steps. The
  step decodes as the AR sampler does (`autoregressive.shared_slots`)."""
  from tokjax.samplers import autoregressive

  cache_len = args.prompt_len + args.new_tokens
  start = cache_len // 2 - steps // 2
  print(f"  decode step vs one-token forward: cache {cache_len} slots, filled to "
        f"{start}..{start + steps} ({steps} steps a call); best of {3 * args.repeats} (median)")
  for batch in (int(b) for b in args.batches.split(",")):
    tokens = np.random.default_rng(0).integers(0, 256, (batch, start), np.int32)
    positions = np.broadcast_to(np.arange(start, dtype=np.int32), (batch, start))
    params, tokens, positions = placed(exp, all_params, tokens, positions)
    prefill = jax.jit(lambda p, t, pos: fns.decode(p, t, pos, fns.init_cache(batch, cache_len)))
    cache = [prefill(params, tokens, positions)[1]]
    first = tokens[:, -1:]

    def decode_loop(params, cache, token):
      no_pads = jnp.zeros((batch,), jnp.int32)

      def body(i, carry):
        cache, token = carry
        positions, kwargs = autoregressive.shared_slots(start + i, 1, no_pads, cache_len)
        logits, cache = fns.decode(params, token, positions, cache, **kwargs)
        return cache, jnp.argmax(logits[:, 0], -1).astype(jnp.int32)[:, None]
      return jax.lax.fori_loop(0, steps, body, (cache, token))

    def forward_loop(params, token):
      def body(i, token):
        return jnp.argmax(fns.forward(params, token)[:, 0], -1).astype(jnp.int32)[:, None]
      return jax.lax.fori_loop(0, steps, body, token)

    decode = jax.jit(decode_loop, donate_argnums=1)
    forward = jax.jit(forward_loop)

    def run_decode():
      cache[0], out = decode(params, cache[0], first)
      jax.block_until_ready(out)

    def run_forward():
      jax.block_until_ready(forward(params, first))

    run_decode(), run_forward()  # Compile.
    rates = Rates()
    for _ in range(3 * args.repeats):
      rates.time("decode", run_decode)
      rates.time("forward", run_forward)
    dec, fwd = rates.best("decode") / steps, rates.best("forward") / steps
    mid = start + steps / 2
    dec_bound = roof.step_seconds(batch, 1, mid, mid)
    fwd_bound = roof.step_seconds(batch, 1, 1, 0)
    # The least a step can add to this forward: reading the filled cache once.
    cache_read = batch * mid * roof.kv_bytes_per_slot / roof.bandwidth
    print(f"    batch {batch:>2}: decode {1e3 * dec:.2f} ms (median "
          f"{1e3 * rates.median('decode') / steps:.2f}; roofline {1e3 * dec_bound:.2f} ms, "
          f"{100 * dec_bound / dec:.0f}%), forward {1e3 * fwd:.2f} ms (median "
          f"{1e3 * rates.median('forward') / steps:.2f}; roofline {1e3 * fwd_bound:.2f} ms, "
          f"{100 * fwd_bound / fwd:.0f}%): decode / forward {dec / fwd:.2f}x; "
          f"cache / bandwidth {1e3 * cache_read:.2f} ms, so at best "
          f"{(fwd + cache_read) / fwd:.2f}x this forward; "
          f"parameters / bandwidth {1e3 * roof.param_bytes / roof.bandwidth:.2f} ms = "
          f"{100 * roof.param_bytes / roof.bandwidth / dec:.0f}% of the decode step")


def beam_rows(args, exp, fns, all_params, jax, np) -> None:
  """Beam search's cost: wall time of `beam.sample` with --num_beams beams
  (length_penalty 0.6, eos_id -1) over greedy KV-cache AR of the same rows."""
  from tokjax.samplers import autoregressive, beam

  prompt_len, new = args.prompt_len, args.new_tokens
  print(f"  beam search, {args.num_beams} beams, vs greedy AR: prompt {prompt_len}, {new} new "
        f"tokens; best of {args.repeats} (median)")
  for batch in (int(b) for b in args.batches.split(",")):
    prompt = np.random.default_rng(batch).integers(0, 256, (batch, prompt_len), np.int32)
    params, prompt = placed(exp, all_params, prompt)
    key, pad = jax.random.key(0), exp.tokenizer.pad_id
    runs = {
        "beam": lambda: beam.sample(fns, params, prompt, key, eos_id=-1, pad_id=pad,
                                    num_beams=args.num_beams, max_new_tokens=new),
        "greedy": lambda: autoregressive.sample(fns, params, prompt, key, eos_id=-1, pad_id=pad,
                                                max_new_tokens=new, temperature=0.0),
    }
    for run in runs.values():
      jax.block_until_ready(run().tokens)  # Compile.
    rates = Rates()
    for _ in range(args.repeats):
      for label, run in runs.items():
        rates.time(label, lambda run=run: jax.block_until_ready(run().tokens))
    tok = batch * new
    print(f"    batch {batch:>2}: beam {tok / rates.best('beam'):,.0f} tokens/s (median "
          f"{tok / rates.median('beam'):,.0f}), greedy {tok / rates.best('greedy'):,.0f} "
          f"(median {tok / rates.median('greedy'):,.0f}): beam costs "
          f"{rates.best('beam') / rates.best('greedy'):.2f}x greedy's time "
          f"(medians {rates.median('beam') / rates.median('greedy'):.2f}x)")


def prefill_rows(args, exp, fns, all_params, roof, jax, jnp, np) -> None:
  length = args.prefill_len
  print(f"  prefill of a {length}-token prompt (decode into an empty {length}-slot cache) vs "
        f"the training forward; best of {args.repeats} (median)")
  for batch in (int(b) for b in args.prefill_batches.split(",")):
    tokens = np.random.default_rng(1).integers(0, 256, (batch, length), np.int32)
    params, tokens = placed(exp, all_params, tokens)

    @jax.jit
    def prefill(params, tokens):
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
      logits, cache = fns.decode(params, tokens, positions, fns.init_cache(batch, length))
      return logits[:, -1], cache  # What a sampler keeps.

    forward = jax.jit(lambda params, tokens: fns.forward(params, tokens, attention="causal"))
    jax.block_until_ready(prefill(params, tokens))
    jax.block_until_ready(forward(params, tokens))
    rates = Rates()
    for _ in range(args.repeats):
      rates.time("prefill", lambda: jax.block_until_ready(prefill(params, tokens)))
      rates.time("forward", lambda: jax.block_until_ready(forward(params, tokens)))
    tok = batch * length
    bound = tok / roof.step_seconds(batch, length, (length + 1) / 2, 0)
    print(f"    batch {batch}: prefill {roof.describe(tok / rates.best('prefill'), bound)} "
          f"(median {tok / rates.median('prefill'):,.0f}), forward "
          f"{roof.describe(tok / rates.best('forward'), bound)} (median "
          f"{tok / rates.median('forward'):,.0f}): prefill / forward "
          f"{rates.best('forward') / rates.best('prefill'):.2f}x")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--family", choices=("ar", "masked", "all"), default="ar")
  ar = parser.add_argument_group("ar")
  ar.add_argument("--sizes", default="base,large")
  ar.add_argument("--batches", default="1,32")
  ar.add_argument("--prompt_len", type=int, default=64)
  ar.add_argument("--new_tokens", type=int, default=256)
  ar.add_argument("--repeats", type=int, default=3)
  ar.add_argument("--torch_threads", default="",
                  help="Comma-separated thread counts for HF (default: the core count).")
  ar.add_argument("--prefill_len", type=int, default=1000)
  ar.add_argument("--prefill_batches", default="1,8")
  ar.add_argument("--num_beams", type=int, default=4, help="0 skips the beam search rows.")
  ar.add_argument("--cpu_devices", type=int, default=0,
                  help="Split the CPU into this many XLA devices (tokjax.runtime."
                       "configure_cpu_devices) and shard the rows of every batch they divide "
                       "over them; other batches run tensor parallel (the fsdp_tp preset). 0: one "
                       "device.")
  masked = parser.add_argument_group("masked")
  masked.add_argument("--workdir", help="A trained md4 run.")
  masked.add_argument("--judge", help="A causal run that scores the trained run's samples.")
  masked.add_argument("--random_size", default="large")
  masked.add_argument("--grid_steps", type=int, default=1000)
  masked.add_argument("--num_samples", type=int, default=4)
  args = parser.parse_args()
  if args.family != "masked":
    if not all(importlib.util.find_spec(name) for name in ("torch", "transformers")):
      raise SystemExit("The AR family needs the HF peer: pip install -e '.[bench]' (CPU-only "
                       "torch wheels suffice), or run --family masked.")
    from tokjax import runtime
    # XLA's default CPU matmul kernels (YNNPACK), as tokjax.sample runs: they
    # decoded 13% (8 x 512, batch 32) to 57% (6 x 256, batch 1) faster than the
    # Eigen ones tokjax.train picks for float32 (`runtime.configure_xla_cpu`).
    if args.cpu_devices:
      runtime.configure_cpu_devices(args.cpu_devices)  # As tokjax.sample --cpu_devices does.
    ar_family(args)
  if args.family != "ar":
    masked_family(args)


if __name__ == "__main__":
  sys.exit(main())
