"""What a sampler needs from a model, as closures, plus the shared loop driver.

Samplers never see the model class (docs/design.md): they get a `ModelFns` of pure
functions of `params` (the model's `nnx.State`) and run their `step` either in
`jax.lax.while_loop` inside one `jax.jit`, or, with debug=True, in a Python loop.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from tokjax.models.transformer import TransformerConfig, init_cache
from tokjax.samplers.categorical import precision_scope
from tokjax.schedules import MaskingSchedule


class ModelFns(NamedTuple):
  """Pure model closures.

  Attributes:
    forward: (params, tokens int32[batch, seq_len], **kw) -> logits
      float32[batch, seq_len, vocab]; kw may hold attention=..., time=float32[batch].
    decode: (params, tokens int32[batch, q_len], positions int32[batch, q_len],
      cache, prefix_len=None) -> (logits float32[batch, q_len, vocab], cache);
      None if no KV cache.
      Keyword arguments (write_at=, kv_mask=, sink_shift=) place tokens in
      the cache other than slot == position, and filled_len= bounds the
      slots it reads: see `Transformer.decode`.
    init_cache: (batch_size, max_len) -> empty cache; None if no KV cache.
    max_seq_len: longest sequence the model accepts; None if unbounded.
    decode_drafts: as decode, but returns (logits, drafts float32[n - 1,
      batch, q_len, vocab], cache) with the multi-token heads' predictions of
      the tokens 2..n places ahead (`MultiTokenModel.decode_drafts`); None
      for a model without extra heads.
  """

  forward: Callable
  decode: Callable | None = None
  init_cache: Callable | None = None
  max_seq_len: int | None = None
  decode_drafts: Callable | None = None


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
  """What a sampler needs from the objective that trained the model
  (`Objective.sampling_spec()`).

  Attributes:
    mask_id: the MASK id a denoising sampler starts from (-1: none).
    forbidden_ids: ids the trained distribution gives probability 0.
    noise_schedule: the masking schedule alpha_t (None: not masked diffusion).
    time_conditioning: whether the network takes the diffusion time t.
    prefix_attention: whether a prompt is a bidirectional prefix (prefix LM).
    null_id: the token that replaces a window's first token (its class
      token) for the unconditional logits of classifier-free guidance; -1
      when the model was not trained with class dropout.
  """

  mask_id: int = -1
  forbidden_ids: tuple[int, ...] = ()
  noise_schedule: MaskingSchedule | None = None
  time_conditioning: bool = False
  prefix_attention: bool = False
  null_id: int = -1


def forbid(logits: jax.Array, ids: tuple[int, ...]) -> jax.Array:
  """float[..., vocab] logits with `ids` at -inf (probability 0).

  Raises:
    ValueError: an id outside the model's vocabulary.
  """
  if not ids:
    return logits
  vocab = logits.shape[-1]
  if not all(0 <= i < vocab for i in ids):
    raise ValueError(f"mask_id / forbidden_ids {ids} must lie in the model's vocabulary "
                     f"[0, {vocab}).")
  return logits.at[..., jnp.asarray(ids)].set(-jnp.inf)


class SampleOutput(NamedTuple):
  """What every sampler returns.

  Attributes:
    tokens: int32[batch, length] the generated sequences (prompt included).
    nfe: int32[] network calls made inside the sampling loop (a prefill is
      one more).
  """

  tokens: jax.Array
  nfe: jax.Array


def model_fns(graphdef: nnx.GraphDef, config: TransformerConfig) -> ModelFns:
  """Closures over a Transformer split as `graphdef, params = nnx.split(model)`.

  Build it once per model and reuse it: the samplers' compiled programs are
  cached on the identity of these closures.
  """

  def forward(params, tokens, **kwargs):
    return nnx.merge(graphdef, params)(tokens, **kwargs)

  def decode(params, tokens, positions, cache, prefix_len=None, **kwargs):
    return nnx.merge(graphdef, params).decode(tokens, positions, cache, prefix_len, **kwargs)

  def decode_drafts(params, tokens, positions, cache, prefix_len=None, **kwargs):
    return nnx.merge(graphdef, params).decode_drafts(tokens, positions, cache, prefix_len,
                                                     **kwargs)

  def new_cache(batch_size, max_len):
    return init_cache(config, batch_size, max_len)

  has_drafts = hasattr(graphdef.nodes[0].type, "decode_drafts")  # The root module's class.
  return ModelFns(forward, decode, new_cache, config.max_seq_len,
                  decode_drafts if has_drafts else None)


def run_loop(cond: Callable[[Any], jax.Array], step: Callable[[Any], Any], state: Any, *,
             debug: bool, on_step: Callable[[Any], None] | None) -> Any:
  """Iterates `state = step(state)` while `cond(state)`.

  debug=False: `jax.lax.while_loop` (call it inside `jax.jit`).
  debug=True: a Python loop over the same `step`, calling `on_step(state)`
  after every step so a researcher can print or record intermediate states.
  """
  if not debug:
    return jax.lax.while_loop(cond, step, state)
  while bool(cond(state)):
    state = step(state)
    if on_step is not None:
      on_step(state)
  return state


def run_sampler(generate: Callable, fns: ModelFns, settings: Any, params: Any, prompt: jax.Array,
                rng: jax.Array, *, debug: bool, on_step: Callable[[Any], None] | None) -> jax.Array:
  """Runs `generate(fns, settings, params, prompt, rng, debug=, on_step=)`.

  As one `jax.jit` program (fns and settings static), or with debug=True as a
  Python loop over the same step; either way under the categorical precision
  `settings.precision`.

  Raises:
    ValueError: on_step given without debug=True.
  """
  if on_step is not None and not debug:
    raise ValueError("on_step is only called in the Python loop: pass debug=True.")
  with precision_scope(settings.precision):
    if debug:
      return generate(fns, settings, params, prompt, rng, debug=True, on_step=on_step)
    return _jitted(generate)(fns, settings, params, prompt, rng)


@functools.cache
def _jitted(generate: Callable) -> Callable:
  return jax.jit(generate, static_argnums=(0, 1))
