"""MaskGIT's training objective: masked token modelling with a scheduled ratio.

"MaskGIT: Masked Generative Image Transformer" (Chang et al., 2022), Sec. 3.1:
draw r ~ U(0, 1), mask exactly ceil(gamma(r) * N) of the N tokens (cosine
gamma(r) = cos(pi r / 2) by default), and minimise the cross-entropy of the
masked tokens under bidirectional attention, with no ELBO weighting.

The schedule is tokjax's `MaskingSchedule`: the masked fraction at time
t = 1 - r is 1 - alpha_t, and MD4's cosine schedule gives exactly
1 - alpha_{1-r} = cos(pi r / 2). The figure reported is a pseudo-likelihood
per masked token (MASK and PAD get probability 0), not a bound.

Class-conditional images (MaskGIT Sec. 4.1 trains class-conditional models on
ImageNet): with class tokens in the tokenizer (`config.data.class_token`),
each window starts with its image's class token, which is the condition and
is never masked nor scored. In training it is replaced by BOS, the null
class, with probability `class_dropout`, so that one network also models the
unconditional distribution and the sampler can apply classifier-free guidance
("Classifier-Free Diffusion Guidance", Ho & Salimans 2022, Sec. 3.2).
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
    bos_id: the BOS id, the null class of class-conditional windows.
    class_ids: the class tokens' ids (tokenizer.class_ids); () for
      unconditional data, where every non-PAD token may be masked.
    noise_schedule: the mask-ratio schedule (cosine in the paper); the config
      stores its name (`config.maskgit.noise_schedule`, e.g. 'poly2').
    class_dropout: with class tokens, the probability that training replaces a
      window's class token by BOS (the unconditional case for guidance).

  Raises:
    ValueError: class_dropout outside [0, 1].
  """

  mask_id: int = from_tokenizer("mask_id", -1)
  bos_id: int = from_tokenizer("bos_id", -1)
  class_ids: tuple[int, ...] = from_tokenizer("class_ids", ())
  noise_schedule: MaskingSchedule = MaskingSchedule("cosine")
  class_dropout: float = 0.1

  name: str = dataclasses.field(default="maskgit", init=False)
  attention: str = dataclasses.field(default="bidirectional", init=False)
  likelihood_kind: str = dataclasses.field(default="pseudo_likelihood", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=("maskgit",), init=False)

  def __post_init__(self):
    if not 0.0 <= self.class_dropout <= 1.0:
      raise ValueError(f"maskgit.class_dropout={self.class_dropout} must lie in [0, 1]; set "
                       "--config.maskgit.class_dropout.")

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    return self._corrupt(tokens, rng, self.class_dropout)

  def corrupt_eval(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    return self._corrupt(tokens, rng, 0.0)  # Scored given the true class.

  def _corrupt(self, tokens, rng, class_dropout: float) -> tuple[ModelInputs, Targets]:
    t_rng, order_rng, drop_rng = jax.random.split(rng, 3)
    t = 1.0 - jax.random.uniform(t_rng, tokens.shape[:1])  # t = 1 - r in (0, 1].
    valid = tokens != self.pad_id
    if self.class_ids:  # The class token is the condition: never masked.
      valid = valid.at[:, 0].set(False)
    count = num_to_mask(self.noise_schedule, t, valid.sum(-1))
    masked = count_mask(order_rng, valid, count)
    weights = masked.astype(jnp.float32)
    inputs = jnp.where(masked, self.mask_id, tokens)
    if self.class_ids and class_dropout > 0:
      drop = jax.random.bernoulli(drop_rng, class_dropout, tokens.shape[:1])
      inputs = inputs.at[:, 0].set(jnp.where(drop, self.bos_id, inputs[:, 0]))
    return ModelInputs(inputs), Targets(tokens, weights, weights)

  @property
  def forbidden_ids(self) -> tuple[int, ...]:
    """Ids a masked position never holds: PAD, and with class tokens BOS and the classes."""
    return (self.pad_id, self.bos_id, *self.class_ids) if self.class_ids else (self.pad_id,)

  def sampling_spec(self) -> SamplingSpec:
    null_id = self.bos_id if self.class_ids and self.class_dropout > 0 else -1
    return SamplingSpec(self.mask_id, self.forbidden_ids, self.noise_schedule, null_id=null_id)

  def mask_logits(self, logits: jax.Array) -> jax.Array:
    return forbid_ids(logits, self.mask_id, *self.forbidden_ids)
