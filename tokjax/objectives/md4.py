"""Masked diffusion, MD4: the continuous-time ELBO of a masking process.

"Simplified and Generalized Masked Diffusion for Discrete Data" (Shi et al.,
2024), Eq. 5: with z_t keeping each token with probability alpha_t and masking
it otherwise,

  NELBO(x) = int_0^1 w(t) E_{z_t ~ q(.|x)} [ sum_{n: z_t[n] = m} -log p(x_n | z_t) ] dt,
  w(t) = -alpha'_t / (1 - alpha_t).

The network predicts a distribution over the real tokens at masked positions:
MASK gets probability 0 and unmasked positions are copied through (MDLM's SUBS
parameterisation), so the bound is an upper bound on the NLL. The integral is
estimated with one t per sequence, stratified ("antithetic") over the batch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.objectives.base import ModelInputs, Objective, Targets, forbid_ids
from tokjax.schedules import MaskingSchedule, get_schedule


def stratified_times(rng: jax.Array, batch: int, antithetic: bool) -> jax.Array:
  """float32[batch] times in (0, 1], each marginally uniform.

  With `antithetic`, t_b = 1 - ((u + b / batch) mod 1) for one shared u, so the
  batch covers [0, 1] evenly (MD4 Sec. 4). t is never 0, where w(t) diverges.
  """
  if antithetic:
    u = jax.random.uniform(rng, ())
    offsets = jnp.arange(batch, dtype=jnp.float32) / batch
    return 1.0 - jnp.mod(u + offsets, 1.0)
  return 1.0 - jax.random.uniform(rng, (batch,))


@dataclasses.dataclass(frozen=True)
class MD4(Objective):
  """MD4 masked diffusion (see module docstring).

  Attributes:
    mask_id: the MASK token id m.
    noise_schedule: the alpha_t schedule shared with the sampler.
    antithetic: stratify t over the batch (lower variance, same expectation).
    time_conditioning: feed t to the backbone.
    eval_samples: Monte-Carlo time samples per sequence for evaluation.
  """

  mask_id: int = -1
  noise_schedule: MaskingSchedule = MaskingSchedule("linear")
  antithetic: bool = True
  time_conditioning: bool = False
  eval_samples: int = 4

  name: str = dataclasses.field(default="md4", init=False)
  attention: str = dataclasses.field(default="bidirectional", init=False)
  likelihood_kind: str = dataclasses.field(default="elbo_upper_bound", init=False)
  default_sampler: str = dataclasses.field(default="md4", init=False)

  @classmethod
  def from_config(cls, config, tokenizer) -> "MD4":
    return cls(
        pad_id=tokenizer.pad_id,
        num_bytes=tokenizer.num_bytes,
        mask_id=tokenizer.mask_id,
        noise_schedule=get_schedule(config.noise_schedule),
        antithetic=config.antithetic,
        time_conditioning=config.time_conditioning,
        eval_samples=config.eval_samples,
    )

  @property
  def uses_time(self) -> bool:
    return self.time_conditioning

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    t_rng, mask_rng = jax.random.split(rng)
    t = stratified_times(t_rng, tokens.shape[0], self.antithetic)
    return self.corrupt_at(tokens, t, mask_rng)

  def corrupt_at(self, tokens: jax.Array, t: jax.Array, rng: jax.Array):
    """Masks each non-PAD token of row b with probability 1 - alpha(t[b]).

    tokens: int32[batch, seq_len]; t: float32[batch] in (0, 1].
    Loss weights are w(t) on masked positions and 0 elsewhere.
    """
    valid = tokens != self.pad_id
    keep_prob = self.noise_schedule.alpha(t)[:, None]
    masked = (jax.random.uniform(rng, tokens.shape) >= keep_prob) & valid
    z_t = jnp.where(masked, self.mask_id, tokens)
    weights = jnp.where(masked, self.noise_schedule.weight(t)[:, None], 0.0)
    time = t if self.time_conditioning else None
    return ModelInputs(z_t, time=time), Targets(tokens, weights, valid.astype(jnp.float32))

  def mask_logits(self, logits: jax.Array) -> jax.Array:
    return forbid_ids(logits, self.mask_id)
