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

Ragged prompts: a batch may hold prompts of different lengths, left padded
with pad_id to one prompt_len. A row's prompt starts at its first token that
is not pad_id (so an unpadded prompt must not begin with pad_id; its last
token always counts). The output keeps the padded prompt verbatim and every
row's new tokens start at column prompt_len. The KV path uses a shared-slot
layout (`shared_slots`): column c goes to slot c in every row (one
dynamic_update_slice), at RoPE position c - pad_len[row], with a kv_mask that
hides the row's padding slots. The no-cache path rotates each row left by its
pad_len before the forward pass (`align_left`): each prompt starts at
position 0 and the padding lands in the causally invisible tail.

Stop sequences: a row is done, as after EOS, once its generated tokens end
with one of `stop_ids` (token ids, from `bind`'s `stop_sequences` strings);
the stop sequence is kept and pad_id follows. The loop compares the last
len(s) generated tokens with each s every step.

Rolling KV cache (window > 0): StreamingLLM ("Efficient Streaming Language
Models with Attention Sinks", Xiao et al. 2024, Sec. 3.2) generates past the
model's max_seq_len with sinks + window cache slots: the first `sinks` tokens
stay, the rest live in a ring of `window` slots, and positions are assigned
within the cache (`ring_slots`). Each row writes its own ring slot (a
scatter), its prompt moved to slots 0.. by the prefill.
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
SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "use_kv_cache",
            "stop_sequences", "window", "sinks")
ROLLING_HINT = ("; or generate past it with the rolling KV cache (StreamingLLM): "
                "--sampler.ar.window=N (with --sampler.ar.sinks=4, sinks + N <= seq_len; in a "
                "training config --config.sampler.ar.window=N)")


def bind(settings: dict, spec, tokenizer, *, seq_len: int, prompt_len: int) -> dict:
  """`sample`'s keyword arguments for a run: its settings plus what the run fixes.

  max_new_tokens 0 becomes seq_len - prompt_len; stop_sequences (strings)
  become stop_ids, each encoded by `tokenizer.encode`; EOS, PAD, the
  forbidden ids and the prefix attention come from the tokenizer and the
  objective's `SamplingSpec`.

  Raises:
    ValueError: as `resolve_max_new_tokens` and `encode_stop_sequences`.
  """
  settings = dict(settings)
  stops = settings.pop("stop_sequences", ())
  max_new_tokens = resolve_max_new_tokens(settings["max_new_tokens"], seq_len=seq_len,
                                          prompt_len=prompt_len,
                                          window=settings.get("window", 0))
  return dict(settings, max_new_tokens=max_new_tokens,
              stop_ids=encode_stop_sequences(tokenizer, stops),
              eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
              forbidden_ids=tuple(spec.forbidden_ids), prefix_attention=spec.prefix_attention)


def resolve_max_new_tokens(max_new_tokens: int, *, seq_len: int, prompt_len: int, window: int = 0,
                           section: str = "ar") -> int:
  """The tokens to generate: max_new_tokens, or with 0 up to seq_len (seq_len - prompt_len).

  Raises:
    ValueError: max_new_tokens < 0, or prompt_len + max_new_tokens > seq_len
      without a rolling cache (window 0); the message names
      sampler.<section>.max_new_tokens and, for AR, how to enable the window.
  """
  if max_new_tokens == 0:
    return seq_len - prompt_len
  if max_new_tokens < 0:
    raise ValueError(f"sampler.{section}.max_new_tokens must be >= 0 (0 = up to seq_len), got "
                     f"{max_new_tokens}.")
  if not window and prompt_len + max_new_tokens > seq_len:
    raise ValueError(
        f"prompt_len + max_new_tokens = {prompt_len} + {max_new_tokens} > seq_len={seq_len}: "
        f"lower sampler.{section}.max_new_tokens (0 = up to seq_len)"
        f"{ROLLING_HINT if section == 'ar' else ''}.")
  return max_new_tokens


def encode_stop_sequences(tokenizer, stops) -> tuple[tuple[int, ...], ...]:
  """Each stop string (one str counts as one) as its token ids, `tokenizer.encode(s)`.

  Raises:
    ValueError: an empty stop string, or stop strings for a run whose
      tokenizer does not encode text (an image run).
  """
  stops = (stops,) if isinstance(stops, str) else tuple(stops)
  if stops and getattr(tokenizer, "unit", "byte") != "byte":
    raise ValueError(f"stop_sequences {stops!r} are text, but this run's tokens are not; leave "
                     "sampler.ar.stop_sequences empty.")
  ids = tuple(tuple(int(i) for i in tokenizer.encode(s)) for s in stops)
  if not all(ids):
    raise ValueError(f"stop_sequences {stops!r} holds an empty string; remove it.")
  return ids


@struct.dataclass
class ARState:
  """Loop state.

  Attributes:
    tokens: int32[batch, prompt_len + max_new_tokens]; pad_id past `pos`.
    pos: int32[] index of the next token to sample.
    done: bool[batch] whether the row has emitted eos_id or a stop sequence.
    rng: PRNG key.
    cache: KV cache from `fns.init_cache`, or None without one.
    pad_len: int32[batch] each row's left padding (`leading_pads`).
    recent: int32[batch, longest stop sequence] the row's last generated
      tokens, -1 before the first.
  """

  tokens: jax.Array
  pos: jax.Array
  done: jax.Array
  rng: jax.Array
  cache: Any
  pad_len: jax.Array
  recent: jax.Array


class ARSettings(NamedTuple):
  """Static settings of one `sample` call (see `sample` for meanings)."""

  max_new_tokens: int
  eos_id: int
  pad_id: int
  temperature: float
  top_k: int
  top_p: float
  min_p: float
  precision: str
  use_kv_cache: bool
  prefix_attention: bool
  forbidden_ids: tuple[int, ...]
  stop_ids: tuple[tuple[int, ...], ...]
  window: int
  sinks: int


def sample(
    fns: ModelFns,
    params: Any,
    prompt: jax.Array,
    rng: jax.Array,
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    precision: str = "float32",
    use_kv_cache: bool = True,
    stop_sequences: tuple[str, ...] = (),
    window: int = 0,
    sinks: int = 4,
    prefix_attention: bool = False,
    forbidden_ids: tuple[int, ...] = (),
    stop_ids: tuple[tuple[int, ...], ...] = (),
    debug: bool = False,
    on_step: Callable[[ARState], None] | None = None,
) -> SampleOutput:
  """Samples continuations of `prompt` token by token.

  Args:
    fns: model closures; `decode` and `init_cache` are needed with use_kv_cache.
    params: model parameters passed to the closures.
    prompt: int32[batch, prompt_len], prompt_len >= 1, kept verbatim in the
      output; rows may be left padded with pad_id (ragged prompts, see the
      module docstring).
    rng: PRNG key.
    max_new_tokens: number of tokens to generate per row; 0 = up to the
      model's max_seq_len (fns.max_seq_len - prompt_len).
    eos_id: a row stops after emitting it; the loop stops when all rows have.
    pad_id: fills every position after a row's eos_id; left padding of prompts.
    temperature, top_k, top_p, min_p, precision: see
      `categorical.sample_categorical`.
    use_kv_cache: KV-cache decoding (True) or a full forward per step (False);
      under temperature 0 both give the same tokens.
    stop_sequences: text is for `bind`, which encodes it into stop_ids; must
      be empty here.
    window: 0, or the ring slots of a StreamingLLM rolling KV cache (Xiao et
      al. 2024, Sec. 3.2), which lets max_new_tokens exceed
      fns.max_seq_len - prompt_len; needs use_kv_cache.
    sinks: with a window, the attention-sink slots holding each row's first
      tokens (the cache has sinks + window slots).
    prefix_attention: treat the prompt as a bidirectional prefix (prefix LM).
    forbidden_ids: ids drawn with probability 0 (the objective's, as in its
      loss; e.g. every special for an image model, which only emits pixels).
    stop_ids: token-id sequences that end a row once its generated tokens end
      with one (kept in the output, pad_id after).
    debug: run `step` in a Python loop instead of `jax.lax.while_loop` in `jax.jit`.
    on_step: with debug=True, called with the `ARState` after every step.

  Returns:
    SampleOutput: tokens int32[batch, prompt_len + max_new_tokens], and nfe,
    the decoding steps taken (fewer than max_new_tokens when all rows stop).

  Raises:
    ValueError: a bad prompt shape; prompt_len + max_new_tokens >
      fns.max_seq_len without a window (set window to go past it); a window
      without use_kv_cache, with sinks + window > fns.max_seq_len or
      < prompt_len; use_kv_cache without fns.decode / fns.init_cache;
      stop_sequences given (pass stop_ids); on_step without debug;
      forbidden ids outside the vocabulary, or a bad sampling setting.
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  if stop_sequences:
    raise ValueError(f"stop_sequences={stop_sequences!r} are strings: pass their token ids as "
                     "stop_ids (autoregressive.bind encodes them with the tokenizer).")
  if max_new_tokens == 0 and fns.max_seq_len is not None and prompt.ndim == 2:
    max_new_tokens = fns.max_seq_len - prompt.shape[1]
  settings = ARSettings(max_new_tokens, eos_id, pad_id, temperature, top_k, top_p, min_p,
                        precision, use_kv_cache, prefix_attention,
                        tuple(int(i) for i in forbidden_ids),
                        tuple(tuple(int(i) for i in s) for s in stop_ids), window, sinks)
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
  pad_len = leading_pads(prompt, settings.pad_id)
  cache = None
  if settings.use_kv_cache:
    size = settings.sinks + settings.window if settings.window else total_len
    cache = prefill(fns, params, prompt, pad_len, fns.init_cache(batch, size), size,
                    prefix_attention=settings.prefix_attention, rolling=settings.window > 0)
  longest_stop = max((len(s) for s in settings.stop_ids), default=0)
  recent = jnp.full((batch, longest_stop), -1, jnp.int32)
  return ARState(tokens, jnp.int32(prompt_len), jnp.zeros((batch,), bool), rng, cache, pad_len,
                 recent)


def make_step(fns: ModelFns, settings: ARSettings, params) -> Callable[[ARState], ARState]:
  """One decoding step: logits at pos - 1, draw, write at pos, update the done flags."""

  def step(state: ARState) -> ARState:
    rng, key = jax.random.split(state.rng)
    if settings.use_kv_cache:
      logits, cache = _cached_logits(fns, settings, params, state)
    else:
      logits, cache = _forward_logits(fns, settings, params, state)
    logits = forbid(logits, settings.forbidden_ids)
    token = sample_categorical(
        key, logits, temperature=settings.temperature, top_k=settings.top_k,
        top_p=settings.top_p, min_p=settings.min_p, precision=settings.precision,
    )
    token = jnp.where(state.done, settings.pad_id, token)
    tokens = jax.lax.dynamic_update_slice(
        state.tokens, token[:, None], (jnp.zeros_like(state.pos), state.pos)
    )
    recent = state.recent
    if recent.shape[1]:
      recent = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
    done = state.done | (token == settings.eos_id) | stop_hit(recent, settings.stop_ids)
    return ARState(tokens, state.pos + 1, done, rng, cache, state.pad_len, recent)

  return step


def _cached_logits(fns, settings, params, state):
  """float32[batch, vocab] logits for column state.pos, and the new cache."""
  col = state.pos - 1
  token = jax.lax.dynamic_slice_in_dim(state.tokens, col, 1, axis=1)
  if settings.window:
    positions, kwargs = ring_slots(col - state.pad_len, settings.sinks, settings.window)
  else:
    positions, kwargs = shared_slots(col, 1, state.pad_len, state.tokens.shape[1])
  logits, cache = fns.decode(params, token, positions, state.cache, **kwargs)
  return logits[:, 0], cache


def _forward_logits(fns, settings, params, state):
  """float32[batch, vocab] logits for column state.pos by a full forward over
  the buffer with each row rotated left by its padding (None for the cache)."""
  tokens = align_left(state.tokens, state.pad_len)
  if settings.prefix_attention:
    prompt_len = tokens.shape[1] - settings.max_new_tokens
    logits = fns.forward(params, tokens, attention="prefix", prefix_len=prompt_len - state.pad_len)
  else:
    logits = fns.forward(params, tokens, attention="causal")
  last = state.pos - 1 - state.pad_len
  return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0], None


def leading_pads(prompt: jax.Array, pad_id: int) -> jax.Array:
  """int32[batch]: each row's left padding, the pad_id tokens before its first
  other token; at most prompt_len - 1 (the last token always counts)."""
  run = jnp.cumprod(prompt == pad_id, axis=1, dtype=jnp.int32).sum(axis=1)
  return jnp.minimum(run, prompt.shape[1] - 1).astype(jnp.int32)


def align_left(tokens: jax.Array, shift: jax.Array) -> jax.Array:
  """int32[batch, length]: row b of `tokens` rotated left by shift[b]
  (its first shift[b] tokens, the padding, move to the end)."""
  length = tokens.shape[1]
  index = (jnp.arange(length, dtype=jnp.int32)[None] + shift[:, None]) % length
  return jnp.take_along_axis(tokens, index, axis=1)


def shared_slots(start, length: int, pad_len: jax.Array, cache_len: int,
                 prefix_end: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Where columns start .. start + length - 1 go in the shared-slot layout
  (column c -> slot c in every row), for `fns.decode`.

  Args:
    start: int32[] the first column.
    length: q_len.
    pad_len: int32[batch] each row's left padding.
    cache_len: the cache's slots.
    prefix_end: int32[batch] or None: slots pad_len .. prefix_end - 1 are a
      bidirectional prefix, visible to every query.

  Returns:
    (positions int32[batch, q_len] = c - pad_len[row], {write_at: int32[]
    start, kv_mask: bool[batch, q_len, cache_len], filled_len: int32[]
    start + q_len, or the largest prefix_end if later}), slot s visible to
    column c iff pad_len[row] <= s <= c (or s < prefix_end[row]).
  """
  cols = start + jnp.arange(length, dtype=jnp.int32)
  slots = jnp.arange(cache_len, dtype=jnp.int32)
  visible = slots[None, None, :] <= cols[None, :, None]
  if prefix_end is not None:
    visible = visible | (slots[None, :] < prefix_end[:, None])[:, None, :]
  visible = visible & (slots[None, :] >= pad_len[:, None])[:, None, :]
  positions = cols[None, :] - pad_len[:, None]
  start = jnp.asarray(start, jnp.int32)
  filled = start + length if prefix_end is None else jnp.maximum(start + length, prefix_end.max())
  return positions, dict(write_at=start, kv_mask=visible, filled_len=filled)


def ring_slots(t: jax.Array, sinks: int, window: int) -> tuple[jax.Array, dict]:
  """One step of a StreamingLLM rolling cache of S = sinks + window slots
  (Xiao et al. 2024, Sec. 3.2: positions are assigned within the cache).

  The token at absolute position t goes to slot t while t < S, then to ring
  slot sinks + (t - sinks) mod window. Its key is stored rotated at t, so the
  window's keys keep their true distance to the query; the sinks are read as
  if rotated by shift = t - P more positions, P = min(t, S - 1) the query's
  position within the cache. Every slot written so far (<= P) is visible.

  Args:
    t: int32[batch] each row's absolute position of the token decoded.

  Returns:
    (positions int32[batch, 1] = t, {write_at: int32[batch] the ring slot,
    kv_mask: bool[batch, 1, S], sink_shift: (sinks, int32[batch] shift),
    left out when sinks is 0}).
  """
  size = sinks + window
  slot = jnp.where(t < size, t, sinks + (t - sinks) % window)
  within = jnp.minimum(t, size - 1)
  visible = jnp.arange(size, dtype=jnp.int32)[None, None, :] <= within[:, None, None]
  kwargs = dict(write_at=slot, kv_mask=visible)
  if sinks:
    kwargs["sink_shift"] = (sinks, t - within)
  return t[:, None], kwargs


def prefill(fns: ModelFns, params, prompt: jax.Array, pad_len: jax.Array, cache, cache_len: int,
            *, prefix_attention: bool, rolling: bool = False):
  """`cache` with prompt[:, :-1] decoded (the whole prompt, bidirectionally,
  with prefix_attention): in the shared-slot layout, or with `rolling` each
  row's prompt moved to slots 0, 1, ... (`align_left`), slot == position."""
  prompt_len = prompt.shape[1]
  q_len = prompt_len if prefix_attention else prompt_len - 1
  if q_len == 0:
    return cache
  lead = jnp.zeros_like(pad_len) if rolling else pad_len
  tokens = align_left(prompt, pad_len) if rolling else prompt
  prefix_end = lead + prompt_len - pad_len if prefix_attention else None
  positions, kwargs = shared_slots(0, q_len, lead, cache_len, prefix_end)
  return fns.decode(params, tokens[:, :q_len], positions, cache, **kwargs)[1]


def stop_hit(recent: jax.Array, stop_ids: tuple[tuple[int, ...], ...]) -> jax.Array:
  """bool[batch]: whether recent int32[batch, m], the last m generated tokens,
  end with any of stop_ids (each at most m long)."""
  hit = jnp.zeros(recent.shape[:1], bool)
  m = recent.shape[1]
  for stop in stop_ids:
    hit = hit | jnp.all(recent[:, m - len(stop):] == jnp.asarray(stop, jnp.int32), axis=1)
  return hit


def _validate(fns, prompt, settings) -> None:
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be int32[batch, prompt_len >= 1], got shape {prompt.shape}.")
  if settings.max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1 (0 = up to the model's max_seq_len, when it "
                     f"has one), got {settings.max_new_tokens}.")
  if not all(settings.stop_ids):
    raise ValueError(f"stop_ids {settings.stop_ids} holds an empty sequence; remove it.")
  if settings.use_kv_cache and (fns.decode is None or fns.init_cache is None):
    raise ValueError("use_kv_cache=True needs fns.decode and fns.init_cache; "
                     "pass use_kv_cache=False for a forward-only model.")
  if settings.window:
    _validate_window(fns, prompt.shape[1], settings)
    return
  total_len = prompt.shape[1] + settings.max_new_tokens
  if fns.max_seq_len is not None and total_len > fns.max_seq_len:
    raise ValueError(
        f"prompt_len + max_new_tokens = {total_len} > the model's max_seq_len="
        f"{fns.max_seq_len}; shorten the prompt or lower max_new_tokens{ROLLING_HINT}."
    )


def _validate_window(fns, prompt_len: int, settings) -> None:
  size = settings.sinks + settings.window
  if settings.window < 0 or settings.sinks < 0:
    raise ValueError(f"window and sinks must be >= 0, got window={settings.window}, "
                     f"sinks={settings.sinks}.")
  if not settings.use_kv_cache:
    raise ValueError("window (a rolling KV cache) needs use_kv_cache=True; or set window=0.")
  if fns.max_seq_len is not None and size > fns.max_seq_len:
    raise ValueError(f"sinks + window = {size} > the model's max_seq_len={fns.max_seq_len}; "
                     "lower sampler.ar.window.")
  if prompt_len > size:
    raise ValueError(f"The prompt ({prompt_len} tokens) must fit the rolling cache, sinks + "
                     f"window = {size}; raise sampler.ar.window or shorten the prompt.")
