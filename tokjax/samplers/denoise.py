"""What the masked-token samplers (md4, maskgit) share: the canvas, the denoiser
call with its forbidden ids, and argument checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tokjax.samplers.base import ModelFns, SampleOutput, SamplingSpec, forbid
from tokjax.schedules import MaskingSchedule


def bind(settings: dict, spec: SamplingSpec, tokenizer, *, seq_len: int, prompt_len: int) -> dict:
  """A masked sampler's keyword arguments for a run: its settings, the output
  length, and the objective's `SamplingSpec` (MASK id, forbidden ids, schedule,
  time conditioning).
  """
  del tokenizer, prompt_len  # The spec carries the ids; the prompt is part of seq_len.
  return dict(settings, seq_len=seq_len, spec=spec)


def masked_canvas(prompt: jax.Array, seq_len: int, mask_id: int) -> jax.Array:
  """int32[batch, seq_len]: the prompt followed by MASK (a MASK inside the prompt is a hole)."""
  batch, prompt_len = prompt.shape
  z = jnp.full((batch, seq_len), mask_id, jnp.int32)
  return z.at[:, :prompt_len].set(prompt)


def denoiser_logits(fns: ModelFns, spec: SamplingSpec, params, z: jax.Array, t) -> jax.Array:
  """float32[batch, seq_len, vocab] logits of p_theta(x | z_t); MASK and forbidden ids at -inf.

  t (a scalar or float32[batch]) reaches the network as time=float32[batch]
  when `spec.time_conditioning` is set.

  Raises:
    ValueError: mask_id or a forbidden id outside the model's vocabulary.
  """
  kwargs = {"time": jnp.full(z.shape[:1], t, jnp.float32)} if spec.time_conditioning else {}
  logits = fns.forward(params, z, attention="bidirectional", **kwargs)
  return forbid(logits, (spec.mask_id, *spec.forbidden_ids))


def guided_logits(fns: ModelFns, spec: SamplingSpec, params, z: jax.Array, t,
                  guidance_scale: float) -> jax.Array:
  """`denoiser_logits` with classifier-free guidance on the class token z[:, 0].

  l = l_c + w (l_c - l_u) ("Classifier-Free Diffusion Guidance", Ho &
  Salimans 2022, Eq. 6, applied to logits as in MUSE, Chang et al. 2023,
  Sec. 2.7), where l_c are the logits given z and l_u those given z with its
  first token replaced by `spec.null_id` (BOS). One forward pass over the
  doubled batch. w = 0 is plain conditional sampling and costs no extra pass.

  Raises:
    ValueError: w != 0 for a model trained without class dropout (spec.null_id < 0).
  """
  if not guidance_scale:
    return denoiser_logits(fns, spec, params, z, t)
  check_guidance(spec, guidance_scale)
  both = jnp.concatenate([z, z.at[:, 0].set(spec.null_id)], axis=0)
  conditional, unconditional = jnp.split(denoiser_logits(fns, spec, params, both, t), 2, axis=0)
  guided = conditional + guidance_scale * (conditional - unconditional)
  return jnp.where(jnp.isneginf(conditional), -jnp.inf, guided)  # Forbidden ids stay at -inf.


def check_guidance(spec: SamplingSpec, guidance_scale: float) -> None:
  """Raises ValueError when guidance is asked of a model trained without class dropout."""
  if guidance_scale and spec.null_id < 0:
    raise ValueError(
        f"guidance_scale={guidance_scale} needs a class-conditional model trained with class "
        "dropout (configs/fashion_mnist.py:objective=maskgit,tokens=fsq); set "
        "--sampler.maskgit.guidance_scale=0 for this one.")


def validate(fns: ModelFns, prompt: jax.Array, *, seq_len: int, spec: SamplingSpec,
             num_steps: int = 1) -> None:
  """Raises ValueError, naming the fix, on shapes, lengths or settings that cannot work."""
  if not isinstance(spec.noise_schedule, MaskingSchedule) or spec.mask_id < 0:
    raise ValueError(
        "This sampler fills MASK positions: spec must be the SamplingSpec of a masked objective "
        "(md4, maskgit, mlm), with a mask_id and a noise_schedule such as get_schedule('linear').")
  if prompt.ndim != 2:
    raise ValueError(f"prompt must be int32[batch, prompt_len], got shape {prompt.shape}.")
  if prompt.shape[1] > seq_len:
    raise ValueError(f"prompt_len={prompt.shape[1]} > seq_len={seq_len}; raise seq_len.")
  if fns.max_seq_len is not None and seq_len > fns.max_seq_len:
    raise ValueError(f"seq_len={seq_len} > the model's max_seq_len={fns.max_seq_len}; lower seq_len.")
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")


def semi_autoregressive(sample, fns, params, prompt, rng, *, length: int, block_len: int,
                        seq_len: int, **settings):
  """Generates `length` tokens with a masked sampler, past its seq_len, block by block.

  The first round fills the window after the prompt; each later round keeps
  the last seq_len - block_len tokens as the prompt and fills block_len new
  MASK positions after them (as in "Semi-autoregressive"
  decoding of masked diffusion models, e.g. SSD-LM and block diffusion): one
  compiled call per round.

  Args:
    sample: a masked sampler's `sample` (md4, maskgit, first_hitting).
    prompt: int32[batch, prompt_len], prompt_len < length.
    length: total output length, may exceed seq_len.
    block_len: new tokens per round, in [1, seq_len].
    seq_len: the model's window.
    settings: the sampler's other settings.

  Returns:
    SampleOutput: tokens int32[batch, length], nfe summed over rounds.

  Raises:
    ValueError: block_len outside [1, seq_len].
  """
  if not 1 <= block_len <= seq_len:
    raise ValueError(f"block_len={block_len} must lie in [1, seq_len={seq_len}].")
  out = sample(fns, params, prompt, rng, seq_len=min(length, seq_len), **settings)
  tokens, nfe, round_index = out.tokens, out.nfe, 0
  while tokens.shape[1] < length:
    round_index += 1
    context = tokens[:, tokens.shape[1] - (seq_len - block_len):]
    new = min(block_len, length - tokens.shape[1])
    out = sample(fns, params, context, jax.random.fold_in(rng, round_index),
                 seq_len=context.shape[1] + new, **settings)
    tokens = jnp.concatenate([tokens, out.tokens[:, context.shape[1]:]], axis=1)
    nfe = nfe + out.nfe
  return SampleOutput(tokens, nfe)
