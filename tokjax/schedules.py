"""Masking schedules alpha(t) shared by masked-diffusion losses and samplers.

`alpha_t` is the probability that a token is still clean at time t in [0, 1],
with alpha_0 = 1 and alpha_1 = 0 ("Simplified and Generalized Masked Diffusion
for Discrete Data", Shi et al. 2024, Sec. 2 and Table 1). One schedule object is
the single source of truth for the ELBO weight w(t) = -alpha'_t / (1 - alpha_t)
(Eq. 5) used by the loss and for the unmasking probability
(alpha_s - alpha_t) / (1 - alpha_t) used by the ancestral sampler (Eq. 3).
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

SCHEDULES = ("linear", "cosine", "poly")


@dataclasses.dataclass(frozen=True)
class MaskingSchedule:
  """A masking schedule alpha(t).

  Attributes:
    kind: 'linear' (alpha_t = 1 - t), 'cosine' (alpha_t = 1 - cos(pi/2 (1 - t)))
      or 'poly' (alpha_t = 1 - t^exponent).
    exponent: the k of the polynomial schedule; ignored otherwise.
  """

  kind: str = "linear"
  exponent: float = 1.0

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ValueError(
          f"Unknown noise_schedule {self.kind!r}; use one of {SCHEDULES}"
          " (e.g. 'linear', 'cosine', 'poly2')."
      )
    if self.kind == "poly" and self.exponent <= 0:
      raise ValueError(f"poly schedule needs exponent > 0, got {self.exponent}.")

  @property
  def name(self) -> str:
    """The name `get_schedule` parses back: 'linear', 'cosine' or 'polyK' (e.g. 'poly2')."""
    if self.kind != "poly":
      return self.kind
    k = self.exponent
    return f"poly{int(k) if float(k).is_integer() else k}"

  def alpha(self, t):
    """alpha_t: float[...] probability a token is still clean at time t."""
    if self.kind == "linear":
      return 1.0 - t
    if self.kind == "cosine":
      return 1.0 - jnp.cos(0.5 * math.pi * (1.0 - t))
    return 1.0 - t**self.exponent

  def dalpha(self, t):
    """d alpha_t / dt: float[...] (always <= 0)."""
    if self.kind == "linear":
      return -jnp.ones_like(t)
    if self.kind == "cosine":
      return -0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t))
    return -self.exponent * t ** (self.exponent - 1.0)

  def weight(self, t):
    """ELBO weight w(t) = -alpha'_t / (1 - alpha_t) >= 0 (MD4 Eq. 5), closed form.

    linear: 1/t; poly(k): k/t; cosine: (pi/2) tan(pi/2 (1 - t)).
    """
    if self.kind == "linear":
      return 1.0 / t
    if self.kind == "cosine":
      return 0.5 * math.pi * jnp.tan(0.5 * math.pi * (1.0 - t))
    return self.exponent / t

  def time_at(self, alpha):
    """The inverse of alpha_t: the time t at which alpha_t = alpha, for alpha in [0, 1].

    linear: 1 - alpha; cosine: 1 - (2/pi) arccos(1 - alpha); poly(k): (1 - alpha)^(1/k).
    """
    if self.kind == "linear":
      return 1.0 - alpha
    if self.kind == "cosine":
      return 1.0 - 2.0 / math.pi * jnp.arccos(1.0 - alpha)
    return (1.0 - alpha) ** (1.0 / self.exponent)

  def unmask_probability(self, s, t):
    """Probability that a position masked at time t is unmasked at s < t.

    (alpha_s - alpha_t) / (1 - alpha_t), MD4 Eq. 3. Equals 1 at s = 0.
    """
    return (self.alpha(s) - self.alpha(t)) / (1.0 - self.alpha(t))


def get_schedule(name: str) -> MaskingSchedule:
  """Parses 'linear', 'cosine' or 'polyK' (e.g. 'poly2', 'poly0.5').

  Raises:
    ValueError: an unknown name, naming the accepted forms.
  """
  if name.startswith("poly") and name != "poly":
    try:
      return MaskingSchedule("poly", float(name[4:]))
    except ValueError:
      pass
  return MaskingSchedule(name)
