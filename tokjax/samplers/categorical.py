"""Categorical draws with temperature, top-k, nucleus and min-p filtering and a precision knob.

Draws use the Gumbel-max trick: argmax(logits / temperature + g), g ~ Gumbel(0, 1).
JAX's float32 uniforms carry 23 random bits, so float32 Gumbel noise never
exceeds -log(-log(1 - 2^-23)) ~ 23 ln 2 ~ 15.9 (float64: 52 ln 2 ~ 36.0), and
low-probability tokens are under-sampled on large vocabularies. This lowers the
effective temperature and the entropy of generations ("Masked Diffusion Models
are Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical
Sampling", Zheng et al. 2024, arXiv:2409.02908). precision='float64'
computes the noise and the perturbed logits in float64 instead.

float64 needs JAX's 64-bit mode while the draw is traced, lowered and run.
`precision_scope(precision)` is that context (`jax.enable_x64(True)` for
'float64'); the tokjax samplers enter it around their compiled program.
Calling `sample_categorical(..., precision='float64')` outside it raises.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

PRECISIONS = ("float32", "float64")


def precision_scope(precision: str):
  """Context manager under which draws of `precision` must be traced and run.

  Raises:
    ValueError: an unknown precision.
  """
  _check_precision(precision)
  return jax.enable_x64(True) if precision == "float64" else contextlib.nullcontext()


def gumbel_noise(rng: jax.Array, shape: tuple[int, ...], precision: str = "float32") -> jax.Array:
  """Standard Gumbel noise -log(-log(u)), u ~ U(0, 1), in `precision`.

  Returns:
    float32[shape] or float64[shape].

  Raises:
    ValueError: an unknown precision, or 'float64' outside `precision_scope`.
  """
  return jax.random.gumbel(rng, shape, _dtype(precision))


def sample_categorical(
    rng: jax.Array,
    logits: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    precision: str = "float32",
) -> jax.Array:
  """Draws one token per row of `logits`.

  Args:
    rng: a PRNG key.
    logits: float[..., vocab] unnormalised log-probabilities; -inf excludes a token.
    temperature: a Python number; 0 gives the greedy argmax (rng unused),
      otherwise logits are divided by it before filtering.
    top_k: keep the k largest logits (0 = all); ties with the k-th are kept.
    top_p: nucleus sampling (Holtzman et al. 2020): keep the smallest set of
      most likely tokens whose probability (after temperature and top-k) is
      >= top_p; 1.0 keeps all.
    min_p: min-p sampling ("Turning Up the Heat: Min-p Sampling for Creative
      and Coherent LLM Outputs", Nguyen et al. 2024): keep the tokens whose
      probability after temperature is >= min_p times the largest one's;
      0.0 keeps all. It commutes with top-k and top-p (both keep the argmax).
    precision: 'float32' or 'float64' for the Gumbel noise and perturbed logits.

  Returns:
    int32[...] token ids.

  Raises:
    ValueError: temperature < 0, top_k < 0, top_p outside (0, 1], min_p
      outside [0, 1], an unknown precision, or 'float64' outside `precision_scope`.
  """
  if temperature == 0:
    check_filters(temperature, top_k, top_p, min_p)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = filtered_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                           min_p=min_p, precision=precision)
  noise = gumbel_noise(rng, scaled.shape, precision)
  return jnp.argmax(scaled + noise, axis=-1).astype(jnp.int32)


def filtered_logits(logits: jax.Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                    min_p: float = 0.0, precision: str = "float32") -> jax.Array:
  """The logits whose softmax `sample_categorical` draws from (temperature > 0).

  Args and errors as `sample_categorical`.

  Returns:
    float[..., vocab] in the precision's dtype: logits / temperature with the
    tokens min-p, top-k and top-p remove at -inf.
  """
  check_filters(temperature, top_k, top_p, min_p)
  if temperature == 0:
    raise ValueError("filtered_logits needs temperature > 0; temperature 0 is the argmax.")
  dtype = _dtype(precision)
  scaled = logits.astype(dtype) / jnp.asarray(temperature, dtype)
  if min_p > 0:
    scaled = _min_p_filter(scaled, min_p)
  if 0 < top_k < logits.shape[-1]:
    scaled = _top_k_filter(scaled, top_k)
  if top_p < 1.0:
    scaled = _top_p_filter(scaled, top_p)
  return scaled


def _top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def _min_p_filter(logits: jax.Array, min_p: float) -> jax.Array:
  """Sets to -inf every token with p < min_p * max p, i.e. logit < max logit + log(min_p)."""
  threshold = jnp.max(logits, axis=-1, keepdims=True) + jnp.log(jnp.asarray(min_p, logits.dtype))
  return jnp.where(logits < threshold, -jnp.inf, logits)


def _top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
  """Sets to -inf every token outside the nucleus of mass `top_p`."""
  descending = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(descending, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  kept = jnp.where(mass_before < top_p, descending, jnp.inf)
  threshold = jnp.min(kept, axis=-1, keepdims=True)
  return jnp.where(logits < threshold, -jnp.inf, logits)


def _check_precision(precision: str) -> None:
  if precision not in PRECISIONS:
    raise ValueError(f"Unknown precision {precision!r}; use one of {PRECISIONS}.")


def _dtype(precision: str):
  _check_precision(precision)
  if precision == "float64" and not jax.config.read("jax_enable_x64"):
    raise ValueError(
        "precision='float64' needs JAX's 64-bit mode while tracing and running: wrap the "
        "call in `with tokjax.samplers.categorical.precision_scope('float64'):`."
    )
  return jnp.float64 if precision == "float64" else jnp.float32


def check_filters(temperature: float, top_k: int, top_p: float, min_p: float = 0.0) -> None:
  """Raises ValueError, naming the allowed range, on a bad sampling setting."""
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0 = no top-k filter), got {top_k}.")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus filter), got {top_p}.")
  if not 0 <= min_p <= 1:
    raise ValueError(f"min_p must be in [0, 1] (0 = no min-p filter), got {min_p}.")
