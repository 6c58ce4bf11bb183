"""Masked diffusion, MD4: the continuous-time ELBO of a masking process.

"Simplified and Generalized Masked Diffusion for Discrete Data" (Shi et al.,
2024), Eq. 5: with z_t keeping each token with probability alpha_t and masking
it otherwise,

  NELBO(x) = int_0^1 w(t) E_{z_t ~ q(.|x)} [ sum_{n: z_t[n] = m} -log p(x_n | z_t) ] dt,
  w(t) = -alpha'_t / (1 - alpha_t).

The network predicts a distribution over the tokens that can occur in text at
masked positions: MASK, PAD and the tokenizer's extra specials get probability
0, and unmasked positions are copied through (MDLM's SUBS parameterisation), so
the bound is an upper bound on the NLL.

Training estimates the integral with one t per sequence, stratified
("antithetic") over the batch, as the paper does.

Evaluation uses a second unbiased estimator of the same NELBO whose variance
is bounded. Writing u = 1 - alpha_t (so w(t) dt = du / u) and K = |{masked}| ~
Binomial(L, u) for a row of L non-PAD tokens, the integral over u gives

  NELBO(x) = sum_{k=1}^{L} (1/k) E_{|M| = k} [ sum_{n in M} -log p(x_n | x_{not M}) ]
           = E_{k ~ U{1..L}, M uniform of size k} [ (L / k) sum_{n in M} -log p(x_n | .) ],

for every schedule: this is importance sampling of (t, K) with K uniform
instead of Binomial, and t | K drawn from its exact conditional u ~ Beta(k,
L - k + 1), which matters only to a time-conditioned network. Each draw is L
times a mean of k cross-entropies, so its variance is finite, whereas the 1/t
weight of the training estimator gives it unbounded variance for the linear
schedule. (The same sum over k is the any-order autoregressive form of the
bound: Hoogeboom et al. 2022, "Autoregressive Diffusion Models"; Ou et al.
2024, "Your Absorbing Discrete Diffusion Secretly Models the Conditional
Distributions of Clean Data".) Draws are independent across rows and across
the `eval_samples` repeats, so the reported standard error is honest.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.masking import count_mask
from tokjax.objectives.base import (
    MaskInfilling, ModelInputs, Objective, SamplingSpec, Targets, forbid_ids, from_tokenizer)
from tokjax.schedules import MaskingSchedule


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
class MD4(MaskInfilling, Objective):
  """MD4 masked diffusion (see module docstring).

  Attributes:
    mask_id: the MASK token id m (tokenizer.mask_id).
    forbidden_ids: ids that never occur in text (PAD, MASK, extra specials;
      tokenizer.non_text_ids): the denoiser gives them probability 0, in the
      loss and in the sampler.
    noise_schedule: the alpha_t schedule shared with the sampler; the config
      stores its name (`config.md4.noise_schedule`: 'linear', 'cosine', 'polyK').
    antithetic: stratify t over the batch (lower variance, same expectation).
    time_conditioning: feed t to the backbone.
    eval_samples: Monte-Carlo draws per sequence for evaluation; >= 2 gives a
      standard error, 1 gives the estimate alone.
  """

  mask_id: int = from_tokenizer("mask_id", -1)
  forbidden_ids: tuple[int, ...] = from_tokenizer("non_text_ids", ())
  noise_schedule: MaskingSchedule = MaskingSchedule("linear")
  antithetic: bool = True
  time_conditioning: bool = False
  eval_samples: int = 4

  name: str = dataclasses.field(default="md4", init=False)
  attention: str = dataclasses.field(default="bidirectional", init=False)
  likelihood_kind: str = dataclasses.field(default="elbo_upper_bound", init=False)
  samplers: tuple[str, ...] = dataclasses.field(
      default=("md4", "first_hitting", "maskgit"), init=False)

  def __post_init__(self):
    if self.eval_samples < 1:
      raise ValueError(f"md4.eval_samples={self.eval_samples} must be >= 1 (>= 2 for an error bar).")

  def sampling_spec(self) -> SamplingSpec:
    return SamplingSpec(self.mask_id, self.forbidden_ids, self.noise_schedule,
                        self.time_conditioning)

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

  def corrupt_eval(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    """One draw of the bounded-variance NELBO estimator (module docstring).

    Per row of L non-PAD tokens: k ~ U{1..L}, a uniform set of k positions is
    masked and each gets loss weight L / k; a time-conditioned network sees
    t with 1 - alpha_t ~ Beta(k, L - k + 1).
    """
    count_rng, mask_rng, time_rng = jax.random.split(rng, 3)
    valid = tokens != self.pad_id
    length = jnp.maximum(valid.sum(-1), 1)
    k = jax.random.randint(count_rng, length.shape, 1, length + 1)
    masked = count_mask(mask_rng, valid, k)
    z = jnp.where(masked, self.mask_id, tokens)
    weights = jnp.where(masked, (length / k)[:, None].astype(jnp.float32), 0.0)
    time = None
    if self.time_conditioning:
      u = jax.random.beta(time_rng, k.astype(jnp.float32), (length - k + 1).astype(jnp.float32))
      time = jnp.clip(self.noise_schedule.time_at(1.0 - u), 1e-6, 1.0)
    return ModelInputs(z, time=time), Targets(tokens, weights, valid.astype(jnp.float32))

  def mask_logits(self, logits: jax.Array) -> jax.Array:
    return forbid_ids(logits, self.mask_id, *self.forbidden_ids)
