"""MaskGIT confidence-based parallel decoding, as one compiled program.

"MaskGIT: Masked Generative Image Transformer" (Chang et al., 2022), Sec. 3.2.
Start from the prompt followed by MASK (MASKs inside the prompt are holes);
let N_0 be each row's masked count. At step k = 0, ..., K - 1:

1. draw a token at every masked position from p_theta(. | z) (MASK and the
   objective's forbidden ids excluded);
2. score each draw by its confidence log p(token) + tau_k * g, with Gumbel
   noise g and tau_k = choice_temperature * (1 - (k + 1) / K); tokens already
   known get confidence +inf;
3. keep the n_k = floor(gamma((k + 1) / K) * N_0) lowest-confidence draws
   masked and commit the rest, with n_k clipped so that each step commits at
   least one token and the last step commits all.

With guidance_scale w != 0 the logits of step 1 are classifier-free guided
on the class token (`denoise.guided_logits`; class-conditional runs only).

gamma(r) = 1 - alpha_{1 - r} is the masked fraction of the objective's
`MaskingSchedule` (the cosine schedule gives MaskGIT's cos(pi r / 2)), so the
sampler unmasks on the schedule the model was trained with. Committed and
prompt tokens never change. log p is taken under the tempered distribution
the token was drawn from.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.masking import lowest
from tokjax.samplers.base import ModelFns, SampleOutput, SamplingSpec, run_loop, run_sampler
from tokjax.samplers.categorical import sample_categorical
from tokjax.samplers.denoise import bind as bind  # Binds as every masked sampler does.
from tokjax.samplers.denoise import check_guidance, guided_logits, masked_canvas, validate


# The user's settings, `config.sampler.maskgit`; their defaults are `sample`'s.
SETTINGS = ("num_steps", "temperature", "choice_temperature", "guidance_scale")


@struct.dataclass
class MaskGITState:
  """Loop state.

  Attributes:
    z: int32[batch, seq_len] current canvas; mask_id where still masked.
    num_masked_at_start: int32[batch] N_0, the masked count before step 0.
    step: int32[] steps taken.
    rng: PRNG key.
  """

  z: jax.Array
  num_masked_at_start: jax.Array
  step: jax.Array
  rng: jax.Array


class MaskGITSettings(NamedTuple):
  """Static settings of one `sample` call (see `sample` for meanings)."""

  spec: SamplingSpec
  seq_len: int
  num_steps: int
  temperature: float
  choice_temperature: float
  precision: str
  guidance_scale: float


def sample(
    fns: ModelFns,
    params: Any,
    prompt: jax.Array,
    rng: jax.Array,
    *,
    spec: SamplingSpec,
    seq_len: int,
    num_steps: int = 16,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    precision: str = "float32",
    guidance_scale: float = 0.0,
    debug: bool = False,
    on_step: Callable[[MaskGITState], None] | None = None,
) -> SampleOutput:
  """Fills every MASK of prompt + MASK * (seq_len - prompt_len) in `num_steps` steps.

  Args:
    fns: model closures; only `forward` is used, with attention='bidirectional'.
    params: model parameters passed to `fns.forward`.
    prompt: int32[batch, prompt_len], prompt_len <= seq_len (may be 0); a
      mask_id inside it is a hole to fill.
    rng: PRNG key.
    seq_len: output length, <= fns.max_seq_len.
    num_steps: K >= 1 network calls.
    spec: the objective's `SamplingSpec` (MASK id, forbidden ids, whether the
      network reads t = 1 - k / K); its noise_schedule gives gamma(r) = 1 - alpha_{1 - r}.
    temperature, precision: of the token draws, see `categorical.sample_categorical`.
    choice_temperature: scale of the Gumbel noise on confidences at step 0
      (4.5 in the MaskGIT reference); it decays linearly to 0.
    guidance_scale: classifier-free guidance weight w on the class token
      prompt[:, 0] (0: none); needs a model trained with class dropout.
    debug: run `step` in a Python loop instead of `jax.lax.while_loop` in `jax.jit`.
    on_step: with debug=True, called with the `MaskGITState` after every step.

  Returns:
    SampleOutput: tokens int32[batch, seq_len] without mask_id, and nfe = K.

  Raises:
    ValueError: bad shapes or lengths, num_steps < 1, a spec without a mask
      schedule, ids outside the vocabulary,
      on_step without debug, or a bad sampling setting.
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  validate(fns, prompt, seq_len=seq_len, spec=spec, num_steps=num_steps)
  check_guidance(spec, guidance_scale)
  settings = MaskGITSettings(spec, seq_len, num_steps, temperature, choice_temperature, precision,
                             guidance_scale)
  return run_sampler(_generate, fns, settings, params, prompt, rng, debug=debug, on_step=on_step)


def _generate(fns, settings, params, prompt, rng, *, debug=False, on_step=None):
  z = masked_canvas(prompt, settings.seq_len, settings.spec.mask_id)
  masked = (z == settings.spec.mask_id).sum(-1, dtype=jnp.int32)
  state = MaskGITState(z, masked, jnp.int32(0), rng)

  def cond(s):
    return s.step < settings.num_steps

  state = run_loop(cond, make_step(fns, settings, params), state, debug=debug, on_step=on_step)
  return SampleOutput(state.z, state.step)


def num_still_masked(settings: MaskGITSettings, step, num_masked_at_start, num_masked):
  """int32[batch] n_k: positions left masked after step k (0-based).

  floor(gamma((k + 1) / K) * N_0), clipped to [0, num_masked - 1] so each step
  commits at least one token, and 0 after the last step.
  """
  r = (step + 1).astype(jnp.float32) / settings.num_steps
  gamma = 1.0 - settings.spec.noise_schedule.alpha(1.0 - r)
  # + 1e-3: a count that is an integer in exact arithmetic (e.g. 2/3 of 18) must
  # not drop by one to float32 rounding; far below 1 / seq_len for any real length.
  target = jnp.floor(gamma * num_masked_at_start + 1e-3).astype(jnp.int32)
  target = jnp.clip(target, 0, jnp.maximum(num_masked - 1, 0))
  return jnp.where(step == settings.num_steps - 1, 0, target)


def make_step(fns: ModelFns, settings: MaskGITSettings, params) -> Callable[[MaskGITState], MaskGITState]:
  """One MaskGIT step: draw everywhere masked, commit all but the n_k least confident."""

  def step(state: MaskGITState) -> MaskGITState:
    rng, draw_key, gumbel_key = jax.random.split(state.rng, 3)
    t = 1.0 - state.step.astype(jnp.float32) / settings.num_steps
    logits = guided_logits(fns, settings.spec, params, state.z, t, settings.guidance_scale)
    draw = sample_categorical(draw_key, logits, temperature=settings.temperature,
                              precision=settings.precision)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / max(settings.temperature, 1e-6))
    log_p = jnp.take_along_axis(log_p, draw[..., None], axis=-1)[..., 0]
    tau = settings.choice_temperature * (1.0 - (state.step + 1).astype(jnp.float32) / settings.num_steps)
    confidence = log_p + tau * jax.random.gumbel(gumbel_key, log_p.shape)
    masked = state.z == settings.spec.mask_id
    confidence = jnp.where(masked, confidence, jnp.inf)
    keep_masked = num_still_masked(settings, state.step, state.num_masked_at_start,
                                   masked.sum(-1, dtype=jnp.int32))
    remask = lowest(confidence, keep_masked)
    z = jnp.where(masked & ~remask, draw, state.z)
    return MaskGITState(z, state.num_masked_at_start, state.step + 1, rng)

  return step
