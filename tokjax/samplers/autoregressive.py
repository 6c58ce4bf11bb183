"""Autoregressive decoding, with or without a KV cache, as one compiled program.

KV-cache path: one batched prefill of prompt[:, :-1] via `fns.decode`, then
each step decodes the last written token (one position) and samples the next.
No-cache path: each step runs `fns.forward` causally over the whole
fixed-length buffer and reads the logits at the last written position; causal
attention makes the not-yet-written tail irrelevant. Both paths share `step`.

With prefix_attention (a prefix LM: "What Language Model Architecture and
Pretraining Objective Work Best for Zero-Shot Generalization?", Wang et al.
2022, Sec. 3.1), the prompt is the bidirectional prefix: the prefill covers
the whole prompt with every prompt token seeing all of it, and generated tokens
attend causally, exactly as `attention='prefix'` with prefix_len = prompt_len.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.samplers.base import ModelFns, SampleOutput, forbid, run_loop, run_sampler
from tokjax.samplers.categorical import sample_categorical


# The user's settings, `config.sampler.ar`; their defaults are `sample`'s.
SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "use_kv_cache")


def bind(settings: dict, spec, tokenizer, *, seq_len: int, prompt_len: int) -> dict:
  """`sample`'s keyword arguments for a run: its settings plus what the run fixes.

  max_new_tokens is capped so that the prompt and the output fit seq_len; EOS,
  PAD, the forbidden ids and the prefix attention come from the tokenizer and
  the objective's `SamplingSpec`.
  """
  return dict(settings, max_new_tokens=min(settings["max_new_tokens"], seq_len - prompt_len),
              eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
              forbidden_ids=tuple(spec.forbidden_ids), prefix_attention=spec.prefix_attention)


@struct.dataclass
class ARState:
  """Loop state.

  Attributes:
    tokens: int32[batch, prompt_len + max_new_tokens]; pad_id past `pos`.
    pos: int32[] index of the next token to sample.
    done: bool[batch] whether the row has emitted eos_id.
    rng: PRNG key.
    cache: KV cache from `fns.init_cache`, or None without one.
  """

  tokens: jax.Array
  pos: jax.Array
  done: jax.Array
  rng: jax.Array
  cache: Any


class ARSettings(NamedTuple):
  """Static settings of one `sample` call (see `sample` for meanings)."""

  max_new_tokens: int
  eos_id: int
  pad_id: int
  temperature: float
  top_k: int
  top_p: float
  precision: str
  use_kv_cache: bool
  prefix_attention: bool
  forbidden_ids: tuple[int, ...]


def sample(
    fns: ModelFns,
    params: Any,
    prompt: jax.Array,
    rng: jax.Array,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    precision: str = "float32",
    use_kv_cache: bool = True,
    prefix_attention: bool = False,
    forbidden_ids: tuple[int, ...] = (),
    debug: bool = False,
    on_step: Callable[[ARState], None] | None = None,
) -> SampleOutput:
  """Samples continuations of `prompt` token by token.

  Args:
    fns: model closures; `decode` and `init_cache` are needed with use_kv_cache.
    params: model parameters passed to the closures.
    prompt: int32[batch, prompt_len], prompt_len >= 1, kept verbatim in the output.
    rng: PRNG key.
    max_new_tokens: number of tokens to generate per row (>= 1).
    eos_id: a row stops after emitting it; the loop stops when all rows have.
    pad_id: fills every position after a row's eos_id.
    temperature, top_k, top_p, precision: see `categorical.sample_categorical`.
    use_kv_cache: KV-cache decoding (True) or a full forward per step (False);
      under temperature 0 both give the same tokens.
    prefix_attention: treat the prompt as a bidirectional prefix (prefix LM).
    forbidden_ids: ids drawn with probability 0 (the objective's, as in its
      loss; e.g. every special for an image model, which only emits pixels).
    debug: run `step` in a Python loop instead of `jax.lax.while_loop` in `jax.jit`.
    on_step: with debug=True, called with the `ARState` after every step.

  Returns:
    SampleOutput: tokens int32[batch, prompt_len + max_new_tokens], and nfe,
    the decoding steps taken (fewer than max_new_tokens when all rows stop).

  Raises:
    ValueError: a bad prompt shape, prompt_len + max_new_tokens > fns.max_seq_len,
      use_kv_cache without fns.decode / fns.init_cache, on_step without debug,
      forbidden ids outside the vocabulary, or a bad sampling setting.
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  settings = ARSettings(max_new_tokens, eos_id, pad_id, temperature, top_k, top_p,
                        precision, use_kv_cache, prefix_attention,
                        tuple(int(i) for i in forbidden_ids))
  _validate(fns, prompt, settings)
  return run_sampler(_generate, fns, settings, params, prompt, rng, debug=debug, on_step=on_step)


def _generate(fns, settings, params, prompt, rng, *, debug=False, on_step=None):
  state = init_state(fns, settings, params, prompt, rng)
  step = make_step(fns, settings, params)
  total_len = state.tokens.shape[1]

  def cond(s):
    return (s.pos < total_len) & ~jnp.all(s.done)

  state = run_loop(cond, step, state, debug=debug, on_step=on_step)
  return SampleOutput(state.tokens, state.pos - prompt.shape[1])


def init_state(fns: ModelFns, settings: ARSettings, params, prompt, rng) -> ARState:
  """Output buffer with the prompt, and the KV cache prefilled with prompt[:, :-1]
  (the whole prompt, bidirectionally, with prefix_attention)."""
  batch, prompt_len = prompt.shape
  total_len = prompt_len + settings.max_new_tokens
  tokens = jnp.full((batch, total_len), settings.pad_id, jnp.int32)
  tokens = tokens.at[:, :prompt_len].set(prompt)
  cache = None
  if settings.use_kv_cache:
    cache = fns.init_cache(batch, total_len)
    if settings.prefix_attention:
      _, cache = fns.decode(params, prompt, _positions(batch, 0, prompt_len), cache,
                            prefix_len=_prefix_len(prompt))
    elif prompt_len > 1:
      positions = _positions(batch, 0, prompt_len - 1)
      _, cache = fns.decode(params, prompt[:, :-1], positions, cache)
  return ARState(tokens, jnp.int32(prompt_len), jnp.zeros((batch,), bool), rng, cache)


def make_step(fns: ModelFns, settings: ARSettings, params) -> Callable[[ARState], ARState]:
  """One decoding step: logits at pos - 1, draw, write at pos, update eos flags."""

  def step(state: ARState) -> ARState:
    rng, key = jax.random.split(state.rng)
    logits, cache = _next_logits(fns, settings, params, state)
    logits = forbid(logits, settings.forbidden_ids)
    token = sample_categorical(
        key, logits, temperature=settings.temperature, top_k=settings.top_k,
        top_p=settings.top_p, precision=settings.precision,
    )
    token = jnp.where(state.done, settings.pad_id, token)
    tokens = jax.lax.dynamic_update_slice(
        state.tokens, token[:, None], (jnp.zeros_like(state.pos), state.pos)
    )
    done = state.done | (token == settings.eos_id)
    return ARState(tokens, state.pos + 1, done, rng, cache)

  return step


def _next_logits(fns, settings, params, state):
  """float32[batch, vocab] logits for position state.pos, and the new cache."""
  last = state.pos - 1
  if settings.use_kv_cache:
    token = jax.lax.dynamic_slice_in_dim(state.tokens, last, 1, axis=1)
    logits, cache = fns.decode(params, token, _positions(token.shape[0], last, 1), state.cache)
    return logits[:, 0], cache
  if settings.prefix_attention:
    prompt = state.tokens[:, : state.tokens.shape[1] - settings.max_new_tokens]
    logits = fns.forward(params, state.tokens, attention="prefix", prefix_len=_prefix_len(prompt))
  else:
    logits = fns.forward(params, state.tokens, attention="causal")
  return jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False), None


def _prefix_len(prompt: jax.Array) -> jax.Array:
  """int32[batch]: the whole prompt is the prefix."""
  return jnp.full(prompt.shape[:1], prompt.shape[1], jnp.int32)


def _positions(batch: int, start, length: int) -> jax.Array:
  """int32[batch, length]: start, start + 1, ... in every row."""
  return jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))


def _validate(fns, prompt, settings) -> None:
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be int32[batch, prompt_len >= 1], got shape {prompt.shape}.")
  if settings.max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}.")
  total_len = prompt.shape[1] + settings.max_new_tokens
  if fns.max_seq_len is not None and total_len > fns.max_seq_len:
    raise ValueError(
        f"prompt_len + max_new_tokens = {total_len} > the model's max_seq_len="
        f"{fns.max_seq_len}; shorten the prompt or lower max_new_tokens."
    )
  if settings.use_kv_cache and (fns.decode is None or fns.init_cache is None):
    raise ValueError("use_kv_cache=True needs fns.decode and fns.init_cache; "
                     "pass use_kv_cache=False for a forward-only model.")
