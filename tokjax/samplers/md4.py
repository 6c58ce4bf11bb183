"""MD4 ancestral sampler, as one compiled program.

From "Simplified and Generalized Masked Diffusion for Discrete Data" (Shi et
al. 2024): the reverse transition q(z_s | z_t, x) with x ~ p_theta(. | z_t).

Time runs from t = 1 (all MASK) to 0 on the grid t_i = i / num_steps. In the
step from t to s = t - 1 / num_steps every still-masked position draws a token
from p_theta(. | z_t) (MASK excluded) and keeps it with probability
`noise_schedule.unmask_probability(s, t)` = (alpha_s - alpha_t) / (1 - alpha_t);
unmasked positions never change. The last step keeps every draw, so the output
has no MASK left (at s = 0 that probability is 1 up to rounding anyway).

With `cached=True` (for a network that ignores t), a step in which no token
was unmasked leaves z_t unchanged, so the next step reuses the logits instead
of calling the network (a `lax.cond` in the loop); on a fine grid most steps
unmask nothing, and the number of function evaluations (NFE) falls to about
the number of distinct unmasking steps, with the same tokens as uncached for
the same key.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.samplers.base import ModelFns, SampleOutput, SamplingSpec, run_loop, run_sampler
from tokjax.samplers.categorical import sample_categorical
from tokjax.samplers.denoise import bind as bind  # Binds as every masked sampler does.
from tokjax.samplers.denoise import denoiser_logits, masked_canvas, validate


# The user's settings, `config.sampler.md4`; their defaults are `sample`'s.
SETTINGS = ("num_steps", "temperature", "top_k", "top_p", "cached")


@struct.dataclass
class MD4State:
  """Loop state.

  Attributes:
    z: int32[batch, seq_len] current sequence; mask_id where still masked.
    step: int32[] number of steps taken; the current time is 1 - step / num_steps.
    rng: PRNG key.
    nfe: int32[] network calls made.
    logits: float32[batch, seq_len, vocab] the last call's logits (cached mode), else None.
    stale: bool[] whether z changed since `logits` were computed (cached mode).
  """

  z: jax.Array
  step: jax.Array
  rng: jax.Array
  nfe: jax.Array
  logits: jax.Array | None = None
  stale: jax.Array | None = None


class MD4Settings(NamedTuple):
  """Static settings of one `sample` call (see `sample` for meanings)."""

  spec: SamplingSpec
  seq_len: int
  num_steps: int
  temperature: float
  top_k: int
  top_p: float
  precision: str
  cached: bool


def sample(
    fns: ModelFns,
    params: Any,
    prompt: jax.Array,
    rng: jax.Array,
    *,
    spec: SamplingSpec,
    seq_len: int,
    num_steps: int = 256,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    precision: str = "float32",
    cached: bool = False,
    debug: bool = False,
    on_step: Callable[[MD4State], None] | None = None,
) -> SampleOutput:
  """Generates `seq_len` tokens per row by iterative unmasking.

  Args:
    fns: model closures; only `forward` is used, with attention='bidirectional'.
    params: model parameters passed to `fns.forward`.
    prompt: int32[batch, prompt_len], prompt_len <= seq_len (may be 0). Its
      tokens are kept; any mask_id inside it is generated (infilling).
    rng: PRNG key.
    seq_len: output length, <= fns.max_seq_len.
    num_steps: T >= 1 steps on the grid t_i = i / T.
    spec: the objective's `SamplingSpec`: the MASK id, the ids that never
      occur in text (drawn with probability 0, as in the loss), the masking
      schedule alpha_t the model was trained with, and whether the network
      reads t (then passed as time=float32[batch]).
    temperature, top_k, top_p, precision: see `categorical.sample_categorical`.
    cached: reuse the logits when no token changed (module docstring).
    debug: run `step` in a Python loop instead of `jax.lax.while_loop` in `jax.jit`.
    on_step: with debug=True, called with the `MD4State` after every step.

  Returns:
    SampleOutput: tokens int32[batch, seq_len] without mask_id or forbidden_ids
    (outside the prompt), and nfe, the network calls made (T uncached).

  Raises:
    ValueError: bad shapes or lengths, num_steps < 1, a spec without a mask
      schedule, ids outside the model's vocabulary, cached with
      time_conditioning, on_step without debug, or a bad sampling setting.
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  validate(fns, prompt, seq_len=seq_len, spec=spec, num_steps=num_steps)
  if cached and spec.time_conditioning:
    raise ValueError("cached=True reuses logits across times: it needs a network that ignores "
                     "t (time_conditioning=False).")
  settings = MD4Settings(spec, seq_len, num_steps, temperature, top_k, top_p, precision, cached)
  return run_sampler(_generate, fns, settings, params, prompt, rng, debug=debug, on_step=on_step)


def _generate(fns, settings, params, prompt, rng, *, debug=False, on_step=None):
  state = init_state(fns, settings, params, prompt, rng)

  def cond(s):
    return s.step < settings.num_steps

  state = run_loop(cond, make_step(fns, settings, params), state, debug=debug, on_step=on_step)
  return SampleOutput(state.z, state.nfe)


def init_state(fns, settings: MD4Settings, params, prompt: jax.Array, rng: jax.Array) -> MD4State:
  """The prompt followed by MASK up to seq_len, at t = 1 (stale logits in cached mode)."""
  z = masked_canvas(prompt, settings.seq_len, settings.spec.mask_id)
  if not settings.cached:
    return MD4State(z, jnp.int32(0), rng, jnp.int32(0))
  shape = jax.eval_shape(lambda: denoiser_logits(fns, settings.spec, params, z, 1.0))
  return MD4State(z, jnp.int32(0), rng, jnp.int32(0), jnp.zeros(shape.shape, shape.dtype),
                  jnp.bool_(True))


def make_step(fns: ModelFns, settings: MD4Settings, params) -> Callable[[MD4State], MD4State]:
  """One ancestral step from t = 1 - step / T to s = t - 1 / T."""
  num_steps = settings.num_steps

  def step(state: MD4State) -> MD4State:
    t = (num_steps - state.step).astype(jnp.float32) / num_steps
    s = (num_steps - state.step - 1).astype(jnp.float32) / num_steps
    rng, draw_key, unmask_key = jax.random.split(state.rng, 3)
    logits, calls = _logits(fns, settings, params, state, t)
    draw = sample_categorical(
        draw_key, logits, temperature=settings.temperature, top_k=settings.top_k,
        top_p=settings.top_p, precision=settings.precision,
    )
    keep = jax.random.uniform(unmask_key, state.z.shape, jnp.float32)
    unmask_p = settings.spec.noise_schedule.unmask_probability(s, t)
    keep = (keep < unmask_p) | (state.step == num_steps - 1)
    unmask = (state.z == settings.spec.mask_id) & keep
    z = jnp.where(unmask, draw, state.z)
    new = MD4State(z, state.step + 1, rng, state.nfe + calls)
    if settings.cached:
      new = new.replace(logits=logits, stale=unmask.any())
    return new

  return step


def _logits(fns, settings, params, state: MD4State, t):
  """The denoiser's logits at z_t, and int32[] network calls made (0 when reused)."""
  if not settings.cached:
    return denoiser_logits(fns, settings.spec, params, state.z, t), jnp.int32(1)
  logits = jax.lax.cond(state.stale, lambda: denoiser_logits(fns, settings.spec, params, state.z, t),
                        lambda: state.logits)
  return logits, state.stale.astype(jnp.int32)
