"""Beam search with the GNMT length penalty, as one compiled program.

Score of a hypothesis Y of |Y| generated tokens (EOS included), "Google's
Neural Machine Translation System", Wu et al. 2016, Sec. 7, Eq. 14 (without
its coverage penalty, which needs a source sentence):

  s(Y) = log P(Y | X) / lp(Y),   lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha.

Layout: the batch x num_beams hypotheses are the rows of one KV cache (row
b * num_beams + k is beam k of prompt b), in the shared-slot layout of
`autoregressive.shared_slots` (so left-padded ragged prompts work as in AR).
Each step extends every alive beam by every token and keeps the 2K best
extensions by log P (K = num_beams; at most K end in EOS). Those ending in
EOS and ranked among the K best enter the prompt's finished set (its K best
by s(Y)); the K best others stay alive, and the cache rows follow their
parents (`kv_cache.select_beams`). After the last step the alive beams join
the finished set with |Y| = max_new_tokens. With num_beams=1 and alpha=0
this is greedy decoding.

The loop stops early once no prompt's alive beam can beat its best finished
hypothesis: a descendant of an alive beam of log-probability L <= 0 ends
with log P <= L at some length n in (|Y|, max_new_tokens], so its score is
at most max(L / lp(|Y| + 1), L / lp(max_new_tokens)) (lp is monotone in n).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.models.kv_cache import select_beams
from tokjax.samplers.autoregressive import (
    leading_pads, prefill, resolve_max_new_tokens, shared_slots,
)
from tokjax.samplers.base import ModelFns, SampleOutput, forbid, run_loop, run_sampler

# The user's settings, `config.sampler.beam`; their defaults are `sample`'s.
SETTINGS = ("num_beams", "length_penalty", "max_new_tokens")


def bind(settings: dict, spec, tokenizer, *, seq_len: int, prompt_len: int) -> dict:
  """`sample`'s keyword arguments for a run: its settings plus what the run fixes.

  max_new_tokens 0 becomes seq_len - prompt_len; EOS, PAD, the forbidden ids
  and the prefix attention come from the tokenizer and the objective's
  `SamplingSpec`.

  Raises:
    ValueError: max_new_tokens < 0, or prompt_len + max_new_tokens > seq_len.
  """
  max_new_tokens = resolve_max_new_tokens(settings["max_new_tokens"], seq_len=seq_len,
                                          prompt_len=prompt_len, section="beam")
  return dict(settings, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
              pad_id=tokenizer.pad_id, forbidden_ids=tuple(spec.forbidden_ids),
              prefix_attention=spec.prefix_attention)


@struct.dataclass
class BeamState:
  """Loop state (B prompts, K = num_beams, L = prompt_len + max_new_tokens).

  Attributes:
    tokens: int32[B * K, L] the alive hypotheses; pad_id past `pos`.
    scores: float[B, K] their log P(Y | X), best first; -inf: no hypothesis.
    finished: int32[B, K, L] the finished hypotheses (EOS, then pad_id).
    finished_scores: float[B, K] their s(Y), best first; -inf: none.
    pos: int32[] the column the next step writes.
    done: bool[] whether no alive beam can beat any prompt's best finished one.
    cache: the KV cache of the B * K alive rows.
    pad_len: int32[B * K] each row's left padding.
  """

  tokens: jax.Array
  scores: jax.Array
  finished: jax.Array
  finished_scores: jax.Array
  pos: jax.Array
  done: jax.Array
  cache: Any
  pad_len: jax.Array


class BeamSettings(NamedTuple):
  """Static settings of one `sample` call (see `sample` for meanings)."""

  num_beams: int
  length_penalty: float
  max_new_tokens: int
  eos_id: int
  pad_id: int
  precision: str
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
    num_beams: int = 4,
    length_penalty: float = 0.6,
    max_new_tokens: int = 0,
    precision: str = "float32",
    prefix_attention: bool = False,
    forbidden_ids: tuple[int, ...] = (),
    debug: bool = False,
    on_step: Callable[[BeamState], None] | None = None,
) -> SampleOutput:
  """The best hypothesis of a beam search per prompt row.

  Args:
    fns: model closures; needs `decode` and `init_cache`.
    params: model parameters passed to the closures.
    prompt: int32[batch, prompt_len], kept verbatim; rows may be left padded
      with pad_id (ragged prompts, as in `autoregressive`).
    rng: unused (beam search is deterministic); kept for the sampler protocol.
    eos_id: ends a hypothesis, which then joins the finished set.
    pad_id: fills every position after a hypothesis's EOS; left padding.
    num_beams: K, the alive hypotheses per prompt.
    length_penalty: alpha of Wu et al. 2016, Eq. 14 (0: plain log P, which
      favours short hypotheses; larger: longer ones).
    max_new_tokens: the most tokens a hypothesis generates; 0 = up to the
      model's max_seq_len.
    precision: 'float64' accumulates the log-probabilities in float64.
    prefix_attention: treat the prompt as a bidirectional prefix (prefix LM).
    forbidden_ids: ids given probability 0.
    debug: run `step` in a Python loop instead of `jax.lax.while_loop` in `jax.jit`.
    on_step: with debug=True, called with the `BeamState` after every step.

  Returns:
    SampleOutput: tokens int32[batch, prompt_len + max_new_tokens], the best
    hypothesis by s(Y), pad_id after its EOS; nfe the decoding steps taken.

  Raises:
    ValueError: a bad prompt shape, num_beams < 1, max_new_tokens < 1 or
      prompt_len + max_new_tokens > fns.max_seq_len, a model without
      fns.decode / fns.init_cache, on_step without debug, or forbidden ids
      outside the vocabulary.
  """
  del rng
  prompt = jnp.asarray(prompt, jnp.int32)
  if max_new_tokens == 0 and fns.max_seq_len is not None and prompt.ndim == 2:
    max_new_tokens = fns.max_seq_len - prompt.shape[1]
  settings = BeamSettings(num_beams, float(length_penalty), max_new_tokens, eos_id, pad_id,
                          precision, prefix_attention, tuple(int(i) for i in forbidden_ids))
  _validate(fns, prompt, settings)
  return run_sampler(_generate, fns, settings, params, prompt, jax.random.key(0), debug=debug,
                     on_step=on_step)


def _generate(fns, settings, params, prompt, rng, *, debug=False, on_step=None):
  del rng
  state = init_state(fns, settings, params, prompt)
  total_len = state.tokens.shape[1]
  state = run_loop(lambda s: (s.pos < total_len) & ~s.done, make_step(fns, settings, params),
                   state, debug=debug, on_step=on_step)
  return SampleOutput(best_hypothesis(settings, state), state.pos - prompt.shape[1])


def lp(length: jax.Array, alpha: float) -> jax.Array:
  """lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016, Eq. 14) for |Y| = length."""
  return ((5.0 + length) / 6.0) ** alpha


def init_state(fns: ModelFns, settings: BeamSettings, params, prompt) -> BeamState:
  """K copies of each prompt and of its prefilled cache; beam 0 alone alive
  (log P 0, the others -inf), so the first step expands one hypothesis."""
  batch, prompt_len = prompt.shape
  k, total_len = settings.num_beams, prompt_len + settings.max_new_tokens
  dtype = _score_dtype(settings.precision)
  pad_len = leading_pads(prompt, settings.pad_id)
  cache = prefill(fns, params, prompt, pad_len, fns.init_cache(batch, total_len), total_len,
                  prefix_attention=settings.prefix_attention)
  tokens = jnp.full((batch, total_len), settings.pad_id, jnp.int32).at[:, :prompt_len].set(prompt)
  scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf).astype(dtype)
  return BeamState(
      tokens=jnp.repeat(tokens, k, axis=0), scores=jnp.broadcast_to(scores, (batch, k)),
      finished=jnp.full((batch, k, total_len), settings.pad_id, jnp.int32),
      finished_scores=jnp.full((batch, k), -jnp.inf, dtype), pos=jnp.int32(prompt_len),
      done=jnp.zeros((), bool), cache=select_beams(cache, jnp.zeros((batch, k), jnp.int32)),
      pad_len=jnp.repeat(pad_len, k))


def make_step(fns: ModelFns, settings: BeamSettings, params) -> Callable[[BeamState], BeamState]:
  """One step: extend every alive beam, keep the 2K best, split off the EOS ones."""
  k = settings.num_beams

  def step(state: BeamState) -> BeamState:
    batch = state.scores.shape[0]
    logp, cache = _log_probs(fns, settings, params, state)  # [B, K, V]
    vocab = logp.shape[-1]
    top, index = jax.lax.top_k((state.scores[:, :, None] + logp).reshape(batch, -1), 2 * k)
    parent = jnp.arange(batch, dtype=jnp.int32)[:, None] * k + index // vocab  # [B, 2K] rows
    token = (index % vocab).astype(jnp.int32)
    extended = state.tokens[parent].at[:, :, state.pos].set(token)  # [B, 2K, L]
    is_eos = token == settings.eos_id
    length = state.pos + 1 - (state.tokens.shape[1] - settings.max_new_tokens)  # |Y|
    ended = jnp.where(is_eos & (jnp.arange(2 * k) < k),
                      top / lp(length, settings.length_penalty), -jnp.inf)
    finished, finished_scores = _best(jnp.concatenate([state.finished, extended], axis=1),
                                      jnp.concatenate([state.finished_scores, ended], axis=1), k)
    scores, keep = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, top), k)
    tokens = jnp.take_along_axis(extended, keep[:, :, None], axis=1).reshape(batch * k, -1)
    done = jnp.all(finished_scores[:, 0] >= _bound(scores[:, 0], length, settings))
    return BeamState(tokens, scores, finished, finished_scores, state.pos + 1, done,
                     select_beams(cache, jnp.take_along_axis(index // vocab, keep, axis=1)),
                     state.pad_len)

  return step


def _log_probs(fns, settings, params, state) -> tuple[jax.Array, Any]:
  """(float[B, K, V] log-probabilities of each alive beam's next token, the
  cache with the last tokens written, rows still in `state` order)."""
  col = state.pos - 1
  token = jax.lax.dynamic_slice_in_dim(state.tokens, col, 1, axis=1)
  positions, kwargs = shared_slots(col, 1, state.pad_len, state.tokens.shape[1])
  logits, cache = fns.decode(params, token, positions, state.cache, **kwargs)
  logits = forbid(logits[:, 0], settings.forbidden_ids).astype(state.scores.dtype)
  return jax.nn.log_softmax(logits, axis=-1).reshape(*state.scores.shape, -1), cache


def _best(tokens: jax.Array, scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k best of hypotheses tokens int32[B, n, L] with scores float[B, n], best first."""
  scores, keep = jax.lax.top_k(scores, k)
  return jnp.take_along_axis(tokens, keep[:, :, None], axis=1), scores


def _bound(log_p: jax.Array, length: jax.Array, settings: BeamSettings) -> jax.Array:
  """float[B]: the best s(Y) a descendant of an alive beam of log P = log_p
  float[B] and |Y| = length can reach (module docstring)."""
  alpha = settings.length_penalty
  return jnp.maximum(log_p / lp(length + 1, alpha),
                     log_p / lp(settings.max_new_tokens, alpha))


def best_hypothesis(settings: BeamSettings, state: BeamState) -> jax.Array:
  """int32[B, L]: each prompt's best finished hypothesis, the alive beams
  counted as finished when the loop ran to max_new_tokens."""
  batch, k = state.scores.shape
  ran_out = state.pos == state.tokens.shape[1]
  final = state.scores / lp(settings.max_new_tokens, settings.length_penalty)
  alive = jnp.where(ran_out, final, -jnp.inf)
  tokens = jnp.concatenate([state.finished, state.tokens.reshape(batch, k, -1)], axis=1)
  return _best(tokens, jnp.concatenate([state.finished_scores, alive], axis=1), 1)[0][:, 0]


def _score_dtype(precision: str):
  return jnp.float64 if precision == "float64" else jnp.float32


def _validate(fns, prompt, settings) -> None:
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be int32[batch, prompt_len >= 1], got shape {prompt.shape}.")
  if settings.num_beams < 1:
    raise ValueError(f"num_beams must be >= 1, got {settings.num_beams}.")
  if settings.max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1 (0 = up to the model's max_seq_len, when it "
                     f"has one), got {settings.max_new_tokens}.")
  total_len = prompt.shape[1] + settings.max_new_tokens
  if fns.max_seq_len is not None and total_len > fns.max_seq_len:
    raise ValueError(f"prompt_len + max_new_tokens = {total_len} > the model's max_seq_len="
                     f"{fns.max_seq_len}; shorten the prompt or lower max_new_tokens.")
  if fns.decode is None or fns.init_cache is None:
    raise ValueError("Beam search decodes with a KV cache: it needs fns.decode and "
                     "fns.init_cache (a Transformer's `model_fns`).")
