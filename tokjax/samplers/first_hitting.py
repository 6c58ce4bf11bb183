"""The first-hitting sampler for masked diffusion, as one compiled program.

"Masked Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit
Inaccurate Categorical Sampling" (Zheng et al., 2024), Sec. 4 and Alg. 1. For a
network that does not read t, the ancestral chain only changes state when a
token unmasks, so it can jump from one unmasking to the next. With k tokens
still masked at time t, each one's unmasking time s has P(s <= r) =
(1 - alpha_r) / (1 - alpha_t), and the next event is the latest of the k:

  1 - alpha_tau = (1 - alpha_t) * u^(1/k),  u ~ U(0, 1)   (linear: tau = t u^(1/k)),

at which one uniformly chosen masked position draws its token from
p_theta(. | z). Each row takes exactly as many network calls as it has masked
tokens; the loop runs until every row is full. It samples the same
distribution as the ancestral sampler in the limit of a fine time grid.
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
from tokjax.schedules import MaskingSchedule


# The user's settings, `config.sampler.first_hitting`; their defaults are `sample`'s.
SETTINGS = ("temperature", "top_k", "top_p")


@struct.dataclass
class FirstHittingState:
  """Loop state.

  Attributes:
    z: int32[batch, seq_len] current sequence; mask_id where still masked.
    t: float32[batch] each row's current time.
    nfe: int32[] network calls made.
    rng: PRNG key.
  """

  z: jax.Array
  t: jax.Array
  nfe: jax.Array
  rng: jax.Array


class FirstHittingSettings(NamedTuple):
  """Static settings of one `sample` call (see `sample` for meanings)."""

  spec: SamplingSpec
  seq_len: int
  temperature: float
  top_k: int
  top_p: float
  precision: str


def sample(
    fns: ModelFns,
    params: Any,
    prompt: jax.Array,
    rng: jax.Array,
    *,
    spec: SamplingSpec,
    seq_len: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    precision: str = "float32",
    debug: bool = False,
    on_step: Callable[[FirstHittingState], None] | None = None,
) -> SampleOutput:
  """Unmasks one token per network call until no MASK is left.

  Args:
    fns: model closures; only `forward` is used, with attention='bidirectional'.
    params: model parameters passed to `fns.forward`.
    prompt: int32[batch, prompt_len], prompt_len <= seq_len (may be 0); a
      mask_id inside it is a hole to fill.
    rng: PRNG key.
    seq_len: output length, <= fns.max_seq_len.
    spec: the objective's `SamplingSpec` (MASK id, forbidden ids, masking
      schedule alpha_t; with time_conditioning the row's current t reaches the
      network, but the sampler is exact only for networks that ignore t, the
      paper's setting).
    temperature, top_k, top_p, precision: see `categorical.sample_categorical`.
    debug: run `step` in a Python loop instead of `jax.lax.while_loop` in `jax.jit`.
    on_step: with debug=True, called with the `FirstHittingState` after every step.

  Returns:
    SampleOutput: tokens int32[batch, seq_len] without mask_id, and nfe, the
    most masked tokens of any row.

  Raises:
    ValueError: bad shapes or lengths, a spec without a mask schedule, ids
      outside the vocabulary, on_step
      without debug, or a bad sampling setting.
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  validate(fns, prompt, seq_len=seq_len, spec=spec)
  settings = FirstHittingSettings(spec, seq_len, temperature, top_k, top_p, precision)
  return run_sampler(_generate, fns, settings, params, prompt, rng, debug=debug, on_step=on_step)


def _generate(fns, settings, params, prompt, rng, *, debug=False, on_step=None):
  z = masked_canvas(prompt, settings.seq_len, settings.spec.mask_id)
  state = FirstHittingState(z, jnp.ones(z.shape[:1], jnp.float32), jnp.int32(0), rng)

  def cond(s):
    return jnp.any(s.z == settings.spec.mask_id)

  state = run_loop(cond, make_step(fns, settings, params), state, debug=debug, on_step=on_step)
  return SampleOutput(state.z, state.nfe)


def next_time(schedule: MaskingSchedule, t: jax.Array, num_masked: jax.Array, u: jax.Array):
  """float32[batch] tau: 1 - alpha_tau = (1 - alpha_t) u^(1/k), the next unmasking time."""
  k = jnp.maximum(num_masked, 1).astype(jnp.float32)
  return schedule.time_at(1.0 - (1.0 - schedule.alpha(t)) * u ** (1.0 / k)).astype(jnp.float32)


def make_step(fns: ModelFns, settings: FirstHittingSettings, params):
  """One network call: every row with a MASK left unmasks one uniformly chosen position."""

  def step(state: FirstHittingState) -> FirstHittingState:
    rng, time_key, pick_key, draw_key = jax.random.split(state.rng, 4)
    masked = state.z == settings.spec.mask_id
    logits = denoiser_logits(fns, settings.spec, params, state.z, state.t)
    scores = jax.random.uniform(pick_key, masked.shape, jnp.float32)
    pick = jnp.argmax(jnp.where(masked, scores, -1.0), axis=-1)  # Uniform among the masked.
    row_logits = jnp.take_along_axis(logits, pick[:, None, None], axis=1)[:, 0]
    token = sample_categorical(draw_key, row_logits, temperature=settings.temperature,
                               top_k=settings.top_k, top_p=settings.top_p,
                               precision=settings.precision)
    active = masked.any(-1)
    rows = jnp.arange(state.z.shape[0])
    z = state.z.at[rows, pick].set(jnp.where(active, token, state.z[rows, pick]))
    u = jax.random.uniform(time_key, state.t.shape, jnp.float32)
    t = jnp.where(active, next_time(settings.spec.noise_schedule, state.t, masked.sum(-1), u), state.t)
    return FirstHittingState(z, t, state.nfe + 1, rng)

  return step
