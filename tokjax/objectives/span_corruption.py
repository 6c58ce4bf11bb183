"""T5 span corruption in decoder-only (prefix LM) form.

"Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer" (Raffel et al., 2020), Sec. 3.1.4 and 3.3: of a sequence of
L_clean tokens, exactly num_noise = round(L_clean * noise_density) (clipped to
[1, L_clean - 1]) are noise, in num_spans = max(1, round(num_noise /
mean_noise_span_length)) spans. As in T5's `random_spans_noise_mask`, the
noise and the non-noise tokens are each split into num_spans non-empty
segments, with lengths drawn uniformly among all such compositions, and the
segments alternate non-noise, noise, ..., ending with noise. Each noise span
is replaced in the input by a distinct sentinel; the target is
`<sentinel_0> span_0 <sentinel_1> span_1 ...` (T5's final EOS is dropped).

Decoder-only form (Sec. 3.2.1, "prefix LM"): the row is [input][target], the
input is a bidirectional prefix (`prefix_len` = L_clean - num_noise +
num_spans), and position n predicts n + 1 for prefix_len - 1 <= n < total - 1,
total = L_clean + 2 * num_spans. L_clean is the largest length whose total
fits seq_len (static), so the row ends with seq_len - total PAD.

The reported figure is the NLL of the sentinels and noise spans given the rest
of the sequence: a conditional, pseudo-likelihood-like figure, not a bound on
log p(x). PAD (only at the end of a window) is kept as a token, so it may fall
in a noise span; PAD targets are never scored.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.objectives.base import ModelInputs, Objective, SamplingSpec, Targets, from_tokenizer
from tokjax.objectives.cm3 import (
    arrange, sentinel_ids, sentinel_names, sentinel_prompt, splice_spans)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static sizes for one seq_len: all in tokens."""

  clean_len: int
  num_noise: int
  num_spans: int

  @property
  def prefix_len(self) -> int:
    """Length of the corrupted input: kept tokens plus one sentinel per span."""
    return self.clean_len - self.num_noise + self.num_spans

  @property
  def total(self) -> int:
    """Length of [input][target]: every clean token plus two sentinels per span."""
    return self.clean_len + 2 * self.num_spans


def random_composition(rng, total: int, parts: int, batch: int) -> jax.Array:
  """int32[batch, parts]: positive lengths summing to total, uniform over compositions."""
  keys = jax.random.uniform(rng, (batch, total - 1))
  cuts = jnp.sort(jnp.argsort(keys, axis=1)[:, : parts - 1] + 1, axis=1)
  bounds = jnp.concatenate(
      [jnp.zeros((batch, 1), cuts.dtype), cuts, jnp.full((batch, 1), total, cuts.dtype)], 1
  )
  return jnp.diff(bounds, axis=1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SpanCorruption(Objective):
  """T5 span corruption (see module docstring).

  Attributes:
    sentinel_ids: the tokenizer's ids of '<sentinel_0>', ... (num_sentinels of
      them, rounded up to an even count); their count caps num_spans.
    noise_density: fraction of clean tokens that are noise, in (0, 1).
    mean_noise_span_length: mean span length in tokens, >= 1.
    num_sentinels: sentinels the tokenizer gets, >= 1.
  """

  sentinel_ids: tuple[int, ...] = from_tokenizer(default=())
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  num_sentinels: int = 32

  name: str = dataclasses.field(default="span_corruption", init=False)
  attention: str = dataclasses.field(default="prefix", init=False)
  likelihood_kind: str = dataclasses.field(default="pseudo_likelihood", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=("ar",), init=False)

  def __post_init__(self):
    if not 0.0 < self.noise_density < 1.0:
      raise ValueError(
          f"span_corruption.noise_density={self.noise_density} must lie strictly between "
          "0 and 1, e.g. 0.15 (T5)."
      )
    if self.mean_noise_span_length < 1.0:
      raise ValueError(
          f"span_corruption.mean_noise_span_length={self.mean_noise_span_length} must be "
          ">= 1, e.g. 3 (T5)."
      )
    if self.num_sentinels < 1:
      raise ValueError(
          f"span_corruption.num_sentinels={self.num_sentinels} must be >= 1, e.g. 32 (T5 has 100).")
    if len(self.sentinel_ids) < self.num_sentinels:
      raise ValueError(
          f"SpanCorruption needs {self.num_sentinels} sentinel ids; build it with "
          "SpanCorruption.from_config(config, tokenizer) on a tokenizer made with its "
          "extra_special_tokens."
      )

  def sampling_spec(self) -> SamplingSpec:
    """Generation decodes the targets after the input, a bidirectional prefix."""
    return SamplingSpec(prefix_attention=True)

  def infill_prompt(self, pieces, hole_len):
    """The input: the text with a sentinel per hole (the prefix the targets follow)."""
    del hole_len  # Each span ends at the next sentinel.
    return sentinel_prompt(pieces, self.sentinel_ids)

  def infill_result(self, pieces, prompt, generated):
    return splice_spans(pieces, generated[len(prompt):], self.sentinel_ids, (self.pad_id,))

  @classmethod
  def extra_special_tokens(cls, config) -> tuple[str, ...]:
    """'<sentinel_0>', ..., num_sentinels of them rounded up to an even count."""
    return sentinel_names(config.num_sentinels)

  @classmethod
  def tokenizer_fields(cls, tokenizer, section) -> dict:
    """Adds sentinel_ids, those of `extra_special_tokens(section)`."""
    return dict(super().tokenizer_fields(tokenizer, section),
                sentinel_ids=sentinel_ids(tokenizer, section.num_sentinels))

  def sizes(self, clean_len: int) -> Layout:
    """Noise and span counts for clean_len tokens (T5's rounding)."""
    num_noise = min(max(round(clean_len * self.noise_density), 1), clean_len - 1)
    num_spans = max(1, round(num_noise / self.mean_noise_span_length))
    return Layout(clean_len, num_noise, num_spans)

  def layout(self, seq_len: int) -> Layout:
    """The largest L_clean whose corrupted row fits seq_len, with its counts.

    Raises:
      ValueError: no L_clean fits, or it needs more spans than sentinels.
    """
    for clean_len in range(seq_len, 1, -1):
      layout = self.sizes(clean_len)
      fits = layout.num_spans <= min(layout.num_noise, clean_len - layout.num_noise)
      if layout.total <= seq_len and fits:
        break
    else:
      raise ValueError(
          f"seq_len={seq_len} is too short for span corruption: raise seq_len (to at least 4)."
      )
    if layout.num_spans > len(self.sentinel_ids):
      raise ValueError(
          f"seq_len={seq_len} needs {layout.num_spans} noise spans but only "
          f"{len(self.sentinel_ids)} sentinels exist; raise span_corruption.num_sentinels "
          f"to at least {layout.num_spans}."
      )
    return layout

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    """tokens: int32[batch, seq_len] -> ([input][target] tokens with prefix_len, Targets).

    Raises:
      ValueError: see `layout`.
    """
    batch, seq_len = tokens.shape
    layout = self.layout(seq_len)
    clean = tokens[:, : layout.clean_len]
    noise_rng, keep_rng = jax.random.split(rng)
    noise = random_composition(noise_rng, layout.num_noise, layout.num_spans, batch)
    num_keep = layout.clean_len - layout.num_noise
    keep = random_composition(keep_rng, num_keep, layout.num_spans, batch)
    arranged, _ = arrange(clean, self.segments(keep, noise), pad_id=self.pad_id, out_len=seq_len)
    positions = jnp.arange(seq_len)[None, :]
    scored = (positions >= layout.prefix_len - 1) & (positions < layout.total - 1)
    targets = jnp.roll(arranged, -1, axis=1)
    weights = (scored & (targets != self.pad_id)).astype(jnp.float32)
    prefix_len = jnp.full((batch,), layout.prefix_len, jnp.int32)
    return ModelInputs(arranged, prefix_len=prefix_len), Targets(targets, weights, weights)

  def segments(self, keep, noise):
    """The (start, length, id) list: kept text and sentinels, then sentinels and spans."""
    inputs, targets = [], []
    start = jnp.zeros_like(keep[:, 0])
    for i in range(keep.shape[1]):
      span_start = start + keep[:, i]
      inputs += [(start, keep[:, i], -1), (0, 1, self.sentinel_ids[i])]
      targets += [(0, 1, self.sentinel_ids[i]), (span_start, noise[:, i], -1)]
      start = span_start + noise[:, i]
    return inputs + targets
