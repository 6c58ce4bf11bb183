"""MaskGIT's training objective: masked token modelling with a scheduled ratio.

"MaskGIT: Masked Generative Image Transformer" (Chang et al., 2022), Sec. 3.1:
draw r ~ U(0, 1), mask exactly ceil(gamma(r) * N) of the N tokens (cosine
gamma(r) = cos(pi r / 2) by default), and minimise the cross-entropy of the
masked tokens under bidirectional attention, with no ELBO weighting.

The schedule is tokjax's `MaskingSchedule`: the masked fraction at time
t = 1 - r is 1 - alpha_t, and MD4's cosine schedule gives exactly
1 - alpha_{1-r} = cos(pi r / 2). The figure reported is a pseudo-likelihood
per masked token (MASK and PAD get probability 0), not a bound.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.masking import count_mask
from tokjax.objectives.base import (
    MaskInfilling, ModelInputs, Objective, SamplingSpec, Targets, forbid_ids, from_tokenizer)
from tokjax.schedules import MaskingSchedule


def num_to_mask(schedule: MaskingSchedule, t: jax.Array, num_tokens: jax.Array) -> jax.Array:
  """int32[batch] ceil((1 - alpha_t) * N) masked tokens per row, MaskGIT Sec. 3.1."""
  return jnp.ceil((1.0 - schedule.alpha(t)) * num_tokens).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class MaskGIT(MaskInfilling, Objective):
  """MaskGIT training (see module docstring).

  Attributes:
    mask_id: the MASK token id (tokenizer.mask_id).
    noise_schedule: the mask-ratio schedule (cosine in the paper); the config
      stores its name (`config.maskgit.noise_schedule`, e.g. 'poly2').
  """

  mask_id: int = from_tokenizer("mask_id", -1)
  noise_schedule: MaskingSchedule = MaskingSchedule("cosine")

  name: str = dataclasses.field(default="maskgit", init=False)
  attention: str = dataclasses.field(default="bidirectional", init=False)
  likelihood_kind: str = dataclasses.field(default="pseudo_likelihood", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=("maskgit",), init=False)

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    t_rng, order_rng = jax.random.split(rng)
    t = 1.0 - jax.random.uniform(t_rng, tokens.shape[:1])  # t = 1 - r in (0, 1].
    valid = tokens != self.pad_id
    count = num_to_mask(self.noise_schedule, t, valid.sum(-1))
    masked = count_mask(order_rng, valid, count)
    weights = masked.astype(jnp.float32)
    return ModelInputs(jnp.where(masked, self.mask_id, tokens)), Targets(tokens, weights, weights)

  def sampling_spec(self) -> SamplingSpec:
    return SamplingSpec(self.mask_id, (self.pad_id,), self.noise_schedule)

  def mask_logits(self, logits: jax.Array) -> jax.Array:
    return forbid_ids(logits, self.mask_id, self.pad_id)
