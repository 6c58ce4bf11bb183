"""CM3 causal-masked LM, plus the span-rearranging helpers FIM and T5 share.

"CM3: A Causal Masked Multimodal Model of the Internet" (Aghajanyan et al.,
2022), Sec. 2.1: pick a few spans of the document, replace each by a sentinel
where it stood, move `<sentinel_i> span_i` to the end in order, and train an
ordinary causal LM on the whole rearranged sequence, so a left-to-right model
learns to infill from both sides.

Span scheme (per row, static shapes). The count is n ~ Poisson(1) clipped to
[1, max_spans] (the paper clips to [1, 16]), then to at most N, the row's
non-PAD length. Given n, the n spans are drawn uniformly among all placements
of n non-empty, non-overlapping spans inside the N tokens (spans may touch):
such placements s_0 < e_0 <= s_1 < ... < e_{n-1} <= N are in bijection with
the 2n-subsets {s_i + i, e_i + i} of {0, ..., N + n - 1}, so a uniform subset
gives a uniform placement. After the last span comes `<eos>`, the paper's
end-of-document marker, so a sampler knows where the infill stops.

Layout: only the first L_clean = seq_len - 2 * max_spans - 1 tokens of a
window are used, so the N + 2n + 1 rearranged tokens always fit; the rest of
the row is PAD (weight 0). PAD is assumed to sit only at the end of a window.
The training loss is next-token NLL at every position with a real next token,
sentinels and `<eos>` included: the NLL of the rearranged sequence, which
depends on the span draw. Evaluation instead scores the text in its plain
left-to-right order (no spans), so the reported figure is the exact NLL of the
text, comparable with `causal`. (With n >= 1, CM3 trains on the plain order
only up to its first sentinel.)
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.objectives.base import CAUSAL_LM_SAMPLERS, ModelInputs, Objective, Targets, from_tokenizer
from tokjax.objectives.causal import PlainOrderEvaluation


def sentinel_names(count: int) -> tuple[str, ...]:
  """'<sentinel_0>', ..., rounded up to an even count (the vocab is sharded by 2)."""
  return tuple(f"<sentinel_{i}>" for i in range(count + count % 2))


def sentinel_ids(tokenizer, count: int) -> tuple[int, ...]:
  """The ids of `sentinel_names(count)` in a tokenizer built with them."""
  return tuple(tokenizer.special_tokens[n] for n in sentinel_names(count))


def sentinel_prompt(pieces: list[np.ndarray], sentinels: tuple[int, ...]) -> np.ndarray:
  """int32: piece_0 <sentinel_0> piece_1 <sentinel_1> ... piece_n, a sentinel per hole.

  Raises:
    ValueError: more holes than sentinels.
  """
  holes = len(pieces) - 1
  if holes > len(sentinels):
    raise ValueError(f"The text has {holes} holes but the model knows {len(sentinels)} sentinels.")
  parts = [x for piece, s in zip(pieces[:-1], sentinels) for x in (piece, [s])] + [pieces[-1]]
  return np.concatenate(parts).astype(np.int32)


def splice_spans(pieces: list[np.ndarray], generated: np.ndarray, sentinels: tuple[int, ...],
                 stop_ids: tuple[int, ...]) -> np.ndarray:
  """Fills the holes between `pieces` from `<sentinel_i> span_i ...` in `generated`.

  A span runs from its sentinel to the next sentinel or a stop id; a hole whose
  sentinel was never generated stays empty.
  """
  spans, current = {}, None
  for token in generated.tolist():
    if token in stop_ids:
      break
    if token in sentinels:
      current = sentinels.index(token)
      spans.setdefault(current, [])
    elif current is not None:
      spans[current].append(token)
  parts = [x for i, piece in enumerate(pieces[:-1]) for x in (piece, spans.get(i, []))]
  return np.concatenate(parts + [pieces[-1]]).astype(np.int32)


def real_length(tokens: jax.Array, pad_id: int) -> jax.Array:
  """int32[batch]: non-PAD tokens per row of int32[batch, length] (PAD only at the end)."""
  return (tokens != pad_id).sum(axis=1, dtype=jnp.int32)


def _arrange_row(clean, starts, lengths, ids, *, pad_id, out_len):
  ends = jnp.cumsum(lengths)
  positions = jnp.arange(out_len, dtype=jnp.int32)
  seg = jnp.searchsorted(ends, positions, side="right")
  inside = seg < lengths.shape[0]
  seg = jnp.minimum(seg, lengths.shape[0] - 1)
  src = jnp.clip(starts[seg] + positions - (ends[seg] - lengths[seg]), 0, clean.shape[0] - 1)
  tokens = jnp.where(ids[seg] >= 0, ids[seg], clean[src])
  return jnp.where(inside, tokens, pad_id)


def arrange(clean, segments, *, pad_id: int, out_len: int):
  """Concatenates each row's segments, then pads to out_len.

  Args:
    clean: int32[batch, clean_len] the clean tokens segments copy from.
    segments: a list of (start, length, token_id), each an int or int32[batch].
      token_id -1 copies clean[start : start + length]; token_id >= 0 writes
      that token `length` times (use length 0 or 1).
    pad_id: fills positions after the last segment.
    out_len: the output length; the caller ensures the segments fit.

  Returns:
    (int32[batch, out_len] arranged tokens, int32[batch] total segment length).
  """
  batch = clean.shape[0]

  def column(k):
    values = [jnp.broadcast_to(jnp.asarray(s[k], jnp.int32), (batch,)) for s in segments]
    return jnp.stack(values, axis=1)

  starts, lengths, ids = column(0), column(1), column(2)
  row = functools.partial(_arrange_row, pad_id=pad_id, out_len=out_len)
  return jax.vmap(row)(clean, starts, lengths, ids), lengths.sum(axis=1)


def causal_targets(arranged: jax.Array, total: jax.Array) -> Targets:
  """Next-token targets for int32[batch, seq_len]; scores n with n + 1 < total[batch]."""
  positions = jnp.arange(arranged.shape[1])[None, :]
  weights = (positions + 1 < total[:, None]).astype(jnp.float32)
  return Targets(jnp.roll(arranged, -1, axis=1), weights, weights)


def uniform_spans(rng, num_spans, length, *, clean_len: int, max_spans: int):
  """Uniform placements of num_spans non-empty, non-overlapping spans (module docstring).

  Args:
    rng: a PRNG key.
    num_spans: int32[batch] in [0, min(max_spans, length)].
    length: int32[batch] tokens available per row, at most clean_len.
    clean_len: static upper bound on length, >= max_spans.
    max_spans: static upper bound on num_spans.

  Returns:
    (starts, ends) int32[batch, max_spans]; spans i >= num_spans are [length, length).
  """
  batch, width = num_spans.shape[0], clean_len + max_spans
  in_pool = jnp.arange(width) < (length + num_spans)[:, None]
  keys = jnp.where(in_pool, jax.random.uniform(rng, (batch, width)), 2.0)
  chosen = jnp.argsort(keys, axis=1)[:, : 2 * max_spans].astype(jnp.int32)
  used = jnp.arange(2 * max_spans) < 2 * num_spans[:, None]
  z = jnp.sort(jnp.where(used, chosen, width), axis=1)
  i = jnp.arange(max_spans, dtype=jnp.int32)
  active = i < num_spans[:, None]
  starts = jnp.where(active, z[:, 0::2] - i, length[:, None])
  ends = jnp.where(active, z[:, 1::2] - i, length[:, None])
  return starts, ends


@dataclasses.dataclass(frozen=True)
class CM3(PlainOrderEvaluation, Objective):
  """CM3 causal masking (see module docstring).

  Attributes:
    sentinel_ids: the tokenizer's ids of '<sentinel_0>', ... (at least max_spans of them).
    eos_id: the id appended after the last moved span (tokenizer.eos_id).
    max_spans: static cap on spans per row, >= 1.
  """

  sentinel_ids: tuple[int, ...] = from_tokenizer(default=())
  eos_id: int = from_tokenizer("eos_id", -1)
  max_spans: int = 3

  name: str = dataclasses.field(default="cm3", init=False)
  attention: str = dataclasses.field(default="causal", init=False)
  likelihood_kind: str = dataclasses.field(default="exact", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=CAUSAL_LM_SAMPLERS, init=False)

  def __post_init__(self):
    if self.max_spans < 1:
      raise ValueError(f"cm3.max_spans={self.max_spans} must be >= 1 (the paper clips to 16).")
    if len(self.sentinel_ids) < self.max_spans or self.eos_id < 0:
      raise ValueError(
          f"CM3 needs {self.max_spans} sentinel ids and an eos id; build it with "
          "CM3.from_config(config, tokenizer) on a tokenizer made with its extra_special_tokens."
      )

  @classmethod
  def extra_special_tokens(cls, config) -> tuple[str, ...]:
    """'<sentinel_0>', ..., max_spans of them rounded up to an even count."""
    return sentinel_names(config.max_spans)

  @classmethod
  def tokenizer_fields(cls, tokenizer, section) -> dict:
    """Adds sentinel_ids, those of `extra_special_tokens(section)`."""
    return dict(super().tokenizer_fields(tokenizer, section),
                sentinel_ids=sentinel_ids(tokenizer, section.max_spans))

  def infill_prompt(self, pieces, hole_len):
    """The text with a sentinel per hole, then <sentinel_0>: the model writes span 0 next."""
    del hole_len  # Each span ends at the next sentinel or <eos>.
    prompt = sentinel_prompt(pieces, self.sentinel_ids[: self.max_spans])
    return np.concatenate([prompt, [self.sentinel_ids[0]]]).astype(np.int32)

  def infill_result(self, pieces, prompt, generated):
    return splice_spans(pieces, generated[len(prompt) - 1:], self.sentinel_ids,
                        (self.eos_id, self.pad_id))

  def clean_len(self, seq_len: int) -> int:
    """L_clean = seq_len - 2 * max_spans - 1 tokens of each window are used.

    Raises:
      ValueError: seq_len leaves fewer than max_spans clean tokens.
    """
    clean_len = seq_len - 2 * self.max_spans - 1
    if clean_len < self.max_spans:
      raise ValueError(
          f"seq_len={seq_len} is too short for cm3.max_spans={self.max_spans}: it needs "
          f"seq_len >= {3 * self.max_spans + 1}. Raise seq_len or lower cm3.max_spans."
      )
    return clean_len

  def num_spans(self, rng: jax.Array, length: jax.Array) -> jax.Array:
    """int32[batch]: Poisson(1) clipped to [1, max_spans], then to at most length."""
    draws = jax.random.poisson(rng, 1.0, length.shape).astype(jnp.int32)
    return jnp.minimum(jnp.clip(draws, 1, self.max_spans), length)

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    """tokens: int32[batch, seq_len] -> (rearranged tokens, causal Targets).

    Raises:
      ValueError: seq_len too short (see `clean_len`).
    """
    seq_len = tokens.shape[1]
    clean = tokens[:, : self.clean_len(seq_len)]
    length = real_length(clean, self.pad_id)
    count_rng, place_rng = jax.random.split(rng)
    n = self.num_spans(count_rng, length)
    starts, ends = uniform_spans(
        place_rng, n, length, clean_len=clean.shape[1], max_spans=self.max_spans
    )
    arranged, total = arrange(
        clean, self.segments(starts, ends, n, length), pad_id=self.pad_id, out_len=seq_len
    )
    return ModelInputs(arranged), causal_targets(arranged, total)

  def segments(self, starts, ends, n, length):
    """The (start, length, id) list: text with sentinels, then moved spans, then eos."""
    inline, moved = [], []
    previous_end = jnp.zeros_like(length)
    for i in range(self.max_spans):
      active = (i < n).astype(jnp.int32)
      inline += [(previous_end, starts[:, i] - previous_end, -1), (0, active, self.sentinel_ids[i])]
      moved += [(0, active, self.sentinel_ids[i]), (starts[:, i], ends[:, i] - starts[:, i], -1)]
      previous_end = ends[:, i]
    tail = (previous_end, length - previous_end, -1)
    return inline + [tail] + moved + [(0, (n > 0).astype(jnp.int32), self.eos_id)]
