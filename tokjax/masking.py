"""Reusable mask samplers: which positions of a batch an objective corrupts.

Every policy maps `(rng, tokens int32[batch, seq_len], mask_ratio, *, pad_id,
...)` to `bool[batch, seq_len]` (True = selected). All are jittable with static
shapes (`mask_ratio` and the options are Python numbers, fixed at trace time),
never select PAD, and select `mask_ratio` of the eligible tokens in
expectation:

- `token`: each non-PAD token independently (BERT, Devlin et al. 2019, Sec. 3.1).
- `whole_word`: each word independently, all its bytes at once (the BERT
  repository's whole-word masking); eligible tokens are word bytes.
- `span`: spans with truncated-geometric lengths ("SpanBERT: Improving
  Pre-training by Representing and Predicting Spans", Joshi et al. 2020,
  Sec. 3.1).
- `ngram`: n-grams with P(n) proportional to 1/n ("ERNIE-Gram: Pre-Training with
  Explicitly N-Gram Masked Language Modeling", Xiao et al. 2021, Sec. 3).

Static-shape span placement (span and ngram). The papers draw spans one after
another until the budget of mask_ratio * seq_len tokens is spent. Here every
position j (including max_len - 1 virtual positions before the window, so the
first tokens are not under-covered) starts a span with probability q and
draws its own length L_j; position i is covered iff some start j <= i has
j + L_j > i. So, exactly,

  P(i covered) = 1 - prod_{k=0}^{max_len-1} (1 - q P(L > k)),

and q is solved from P(i covered) = mask_ratio by bisection. The selected
fraction therefore equals mask_ratio in expectation at every position, but,
unlike the papers, (a) the count per row is random rather than fixed, and
(b) overlapping or touching spans merge, so covered runs are longer on
average than the sampled lengths (the sampled lengths follow the paper's law).
Spans may run over PAD positions, which are then left unselected.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Byte ids of ' ', '\n', '\t', '\r': the separators between words.
WHITESPACE_BYTES = (32, 10, 9, 13)


def check_mask_ratio(mask_ratio: float) -> None:
  """Raises ValueError unless 0 < mask_ratio < 1."""
  if not 0.0 < mask_ratio < 1.0:
    raise ValueError(
        f"mask_ratio={mask_ratio} must lie strictly between 0 and 1, e.g. 0.15 (BERT)."
    )


def token_mask(rng, tokens, mask_ratio, *, pad_id):
  """Selects each non-PAD token independently with probability mask_ratio.

  Args:
    rng: a PRNG key.
    tokens: int32[batch, seq_len].
    mask_ratio: float in (0, 1), the expected selected fraction of non-PAD tokens.
    pad_id: the PAD id, never selected.

  Returns:
    bool[batch, seq_len], True = selected.
  """
  check_mask_ratio(mask_ratio)
  return jax.random.bernoulli(rng, mask_ratio, tokens.shape) & (tokens != pad_id)


def count_mask(rng, valid, count):
  """bool[batch, seq_len]: exactly count[b] positions of row b, uniformly among its valid ones.

  Args:
    valid: bool[batch, seq_len] the positions that may be chosen.
    count: int32[batch] how many to choose, at most valid.sum(-1).
  """
  scores = jnp.where(valid, jax.random.uniform(rng, valid.shape), 2.0)  # Invalid sort last.
  return lowest(scores, count) & valid


def lowest(scores, count):
  """bool[batch, seq_len]: the count[b] lowest of row b's float[batch, seq_len] scores."""
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return rank < count[:, None]


def word_bytes(tokens, *, num_bytes=256):
  """bool[batch, seq_len]: True at byte ids that are not whitespace.

  Specials (ids >= num_bytes: PAD, BOS, EOS, ...) are not word bytes.
  """
  is_space = jnp.isin(tokens, jnp.asarray(WHITESPACE_BYTES))
  return (tokens < num_bytes) & ~is_space


def whole_word_mask(rng, tokens, mask_ratio, *, pad_id, num_bytes=256):
  """Selects whole words, mask_ratio of the non-PAD tokens in expectation.

  A word is a maximal run of word bytes (`word_bytes`) inside one row; a word
  cut by the window edge counts as a word of its own. Whitespace and specials
  are never selected, so each word of row b is selected with probability
  q_b = min(1, mask_ratio * N_b / W_b), N_b the row's non-PAD tokens and W_b
  its word bytes: the expected selected fraction of the N_b tokens is then
  mask_ratio whenever q_b <= 1 (always for ordinary text, where W_b ~ 0.8 N_b).

  Args:
    rng: a PRNG key.
    tokens: int32[batch, seq_len].
    mask_ratio: float in (0, 1).
    pad_id: the PAD id (never selected: it is not a word byte).
    num_bytes: ids below this are bytes.

  Returns:
    bool[batch, seq_len], True = selected.
  """
  check_mask_ratio(mask_ratio)
  in_word = word_bytes(tokens, num_bytes=num_bytes)
  prev = jnp.pad(in_word[:, :-1], ((0, 0), (1, 0)))
  positions = jnp.arange(tokens.shape[1])
  word_start = jax.lax.cummax(jnp.where(in_word & ~prev, positions, 0), axis=1)
  word_prob = mask_ratio * (tokens != pad_id).sum(1) / jnp.maximum(in_word.sum(1), 1)
  draw = jax.random.uniform(rng, tokens.shape) < jnp.minimum(word_prob, 1.0)[:, None]
  return in_word & jnp.take_along_axis(draw, word_start, axis=1)


def span_length_probs(p: float = 0.2, max_span: int = 10) -> np.ndarray:
  """float64[max_span]: P(L = l) for l = 1..max_span, SpanBERT Sec. 3.1.

  L ~ Geometric(p) on {1, 2, ...}, conditioned on L <= max_span. This is the
  law behind SpanBERT's stated mean of 3.8 for p = 0.2, max_span = 10 (capping
  L at max_span instead would give 4.46).
  """
  if not 0.0 < p <= 1.0:
    raise ValueError(f"span_p={p} must be in (0, 1], e.g. 0.2 (SpanBERT).")
  if max_span < 1:
    raise ValueError(f"max_span={max_span} must be >= 1, e.g. 10 (SpanBERT).")
  probs = p * (1.0 - p) ** np.arange(max_span)
  return probs / probs.sum()


def ngram_length_probs(max_n: int = 3) -> np.ndarray:
  """float64[max_n]: P(n) proportional to 1/n for n = 1..max_n (ERNIE-Gram Sec. 3)."""
  if max_n < 1:
    raise ValueError(f"max_ngram={max_n} must be >= 1, e.g. 3 (ERNIE-Gram).")
  probs = 1.0 / np.arange(1, max_n + 1)
  return probs / probs.sum()


def sample_lengths(rng, probs: np.ndarray, shape) -> jax.Array:
  """int32[*shape] lengths in 1..len(probs), P(L = l) = probs[l - 1]."""
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  return jax.random.categorical(rng, logits, shape=shape).astype(jnp.int32) + 1


def start_probability(mask_ratio: float, probs: np.ndarray) -> float:
  """q with 1 - prod_k (1 - q P(L > k)) = mask_ratio (see the module docstring)."""
  survival = 1.0 - np.concatenate([[0.0], np.cumsum(probs)[:-1]])  # P(L > k).

  def covered(q):
    return 1.0 - np.prod(1.0 - q * survival)

  lo, hi = 0.0, 1.0
  for _ in range(60):  # covered(q) increases from 0 to 1; halve the bracket.
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if covered(mid) < mask_ratio else (lo, mid)
  return 0.5 * (lo + hi)


def spans_mask(rng, tokens, mask_ratio, probs: np.ndarray, *, pad_id):
  """Covers mask_ratio of the non-PAD tokens with spans of law `probs`.

  Shared by `span_mask` and `ngram_mask`; see the module docstring.
  tokens: int32[batch, seq_len] -> bool[batch, seq_len].
  """
  check_mask_ratio(mask_ratio)
  batch, seq_len = tokens.shape
  lead = len(probs) - 1  # Virtual positions before the window.
  start_rng, length_rng = jax.random.split(rng)
  shape = (batch, lead + seq_len)
  starts = jax.random.bernoulli(start_rng, start_probability(mask_ratio, probs), shape)
  ends = jnp.arange(lead + seq_len) + sample_lengths(length_rng, probs, shape)
  reach = jax.lax.cummax(jnp.where(starts, ends, 0), axis=1)[:, lead:]
  covered = reach > jnp.arange(lead, lead + seq_len)
  return covered & (tokens != pad_id)


def span_mask(rng, tokens, mask_ratio, *, pad_id, p=0.2, max_span=10):
  """SpanBERT span masking (Sec. 3.1) with static shapes.

  Args:
    rng: a PRNG key.
    tokens: int32[batch, seq_len].
    mask_ratio: float in (0, 1), the expected selected fraction of non-PAD tokens.
    pad_id: the PAD id, never selected.
    p: geometric parameter of the span length, in (0, 1].
    max_span: longest span, in tokens.

  Returns:
    bool[batch, seq_len], True = selected.
  """
  return spans_mask(rng, tokens, mask_ratio, span_length_probs(p, max_span), pad_id=pad_id)


def ngram_mask(rng, tokens, mask_ratio, *, pad_id, max_n=3):
  """ERNIE-Gram n-gram masking (Sec. 3), P(n) proportional to 1/n, static shapes.

  Args:
    rng: a PRNG key.
    tokens: int32[batch, seq_len].
    mask_ratio: float in (0, 1), the expected selected fraction of non-PAD tokens.
    pad_id: the PAD id, never selected.
    max_n: longest n-gram, in tokens.

  Returns:
    bool[batch, seq_len], True = selected.
  """
  return spans_mask(rng, tokens, mask_ratio, ngram_length_probs(max_n), pad_id=pad_id)


MASKING_POLICIES: dict[str, Callable[..., jax.Array]] = {
    "token": token_mask,
    "whole_word": whole_word_mask,
    "span": span_mask,
    "ngram": ngram_mask,
}


def get_policy(name: str) -> Callable[..., jax.Array]:
  """Returns the mask sampler called `name`.

  Raises:
    ValueError: an unknown name, listing the known ones.
  """
  if name not in MASKING_POLICIES:
    raise ValueError(
        f"Unknown masking_policy {name!r}; use one of {', '.join(MASKING_POLICIES)}."
    )
  return MASKING_POLICIES[name]
