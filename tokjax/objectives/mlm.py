"""BERT masked language modelling, scored as a pseudo-likelihood.

"BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (Devlin et al., 2019), Sec. 3.1 and Appendix A.1: select
mask_ratio (15%) of the positions; of those, replace 80% by MASK, 10% by a
random token and keep 10% unchanged; predict the original token at every
selected position with a bidirectional backbone.

The loss is the mean cross-entropy over selected positions, which are also the
scored (`valid`) tokens: the reported figure is the pseudo-log-likelihood per
selected token, not a bound on the NLL. Random replacements are drawn uniformly
over the byte ids, never a special. MASK and PAD get probability 0 in the
output (`mask_logits`), so the pseudo-likelihood is over real tokens and
uniform logits score log(V - 2) nats per selected token.

It generates with the `maskgit` sampler (on a cosine schedule).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax import masking
from tokjax.objectives.base import (
    MaskInfilling, ModelInputs, Objective, SamplingSpec, Targets, forbid_ids, from_tokenizer)
from tokjax.schedules import MaskingSchedule


@dataclasses.dataclass(frozen=True)
class MLM(MaskInfilling, Objective):
  """BERT masked LM (see module docstring).

  Attributes:
    mask_id: the MASK token id (tokenizer.mask_id).
    mask_ratio: expected fraction of eligible tokens selected, in (0, 1).
    masking_policy: a name in `tokjax.masking.MASKING_POLICIES`.
    replace_mask: fraction of selected positions replaced by MASK.
    replace_random: fraction replaced by a random byte; the rest are kept.
    span_p: geometric parameter of span lengths ('span' policy).
    max_span: longest span in tokens ('span' policy).
    max_ngram: longest n-gram in tokens ('ngram' policy).
  """

  mask_id: int = from_tokenizer("mask_id", -1)
  mask_ratio: float = 0.15
  masking_policy: str = "token"
  replace_mask: float = 0.8
  replace_random: float = 0.1
  span_p: float = 0.2
  max_span: int = 10
  max_ngram: int = 3

  name: str = dataclasses.field(default="mlm", init=False)
  attention: str = dataclasses.field(default="bidirectional", init=False)
  likelihood_kind: str = dataclasses.field(default="pseudo_likelihood", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=("maskgit",), init=False)

  def __post_init__(self):
    if self.mask_id < 0 or self.mask_id == self.pad_id:
      raise ValueError(f"mask_id={self.mask_id} must be a non-PAD id; pass tokenizer.mask_id.")
    masking.check_mask_ratio(self.mask_ratio)
    masking.get_policy(self.masking_policy)
    masking.span_length_probs(self.span_p, self.max_span)
    masking.ngram_length_probs(self.max_ngram)
    keep = 1.0 - self.replace_mask - self.replace_random
    if min(self.replace_mask, self.replace_random) < 0 or keep < -1e-9:
      raise ValueError(
          f"replace_mask={self.replace_mask} and replace_random={self.replace_random} must be"
          " >= 0 and sum to at most 1 (BERT uses 0.8 and 0.1)."
      )

  def select(self, tokens: jax.Array, rng: jax.Array) -> jax.Array:
    """bool[batch, seq_len]: the positions to predict, by `masking_policy`."""
    options = {
        "whole_word": dict(num_bytes=self.num_bytes),
        "span": dict(p=self.span_p, max_span=self.max_span),
        "ngram": dict(max_n=self.max_ngram),
    }.get(self.masking_policy, {})
    policy = masking.get_policy(self.masking_policy)
    return policy(rng, tokens, self.mask_ratio, pad_id=self.pad_id, **options)

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    """tokens: int32[batch, seq_len] -> (inputs with 80/10/10 replacements, Targets).

    Targets are the clean tokens; weights and valid are 1 at selected positions.
    """
    select_rng, action_rng, random_rng = jax.random.split(rng, 3)
    selected = self.select(tokens, select_rng)
    u = jax.random.uniform(action_rng, tokens.shape)
    to_mask = selected & (u < self.replace_mask)
    to_random = selected & ~to_mask & (u < self.replace_mask + self.replace_random)
    random_bytes = jax.random.randint(random_rng, tokens.shape, 0, self.num_bytes, tokens.dtype)
    corrupted = jnp.where(to_mask, self.mask_id, jnp.where(to_random, random_bytes, tokens))
    weights = selected.astype(jnp.float32)
    return ModelInputs(corrupted), Targets(tokens, weights, weights)

  def sampling_spec(self) -> SamplingSpec:
    return SamplingSpec(self.mask_id, (self.pad_id,), MaskingSchedule("cosine"))

  def mask_logits(self, logits: jax.Array) -> jax.Array:
    """MASK and PAD get probability 0: predictions are over the real tokens."""
    return forbid_ids(logits, self.mask_id, self.pad_id)
