"""Backbone building blocks: annotated parameters, RMSNorm, MLP, time embedding.

Every parameter is float32 and names its logical axes ('vocab', 'embed', 'mlp',
'heads', 'kv') through `nnx.with_partitioning`; `tokjax.sharding` maps those
names to mesh axes. Activations run in the compute dtype chosen by the caller.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from tokjax.sharding import constrain


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[str]) -> nnx.Param:
  """A float32 `nnx.Param` of `shape` whose dimensions are named `axes`."""
  annotated = nnx.with_partitioning(init, tuple(axes))
  return nnx.Param(annotated(rngs.params(), tuple(shape), jnp.float32))


def fan_in_init(in_axis, out_axis):
  """LeCun truncated normal (variance 1 / fan_in) for multi-axis kernels."""
  return jax.nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def mixed_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """einsum(spec, x, w) in the compute dtype of x (w is cast to it),
  accumulated and returned in float32, with the backward matmuls also in the
  compute dtype and each gradient returned in its operand's own dtype.

  For spec 'X,W->Y' the gradients are einsum('Y,W->X', g, w) and
  einsum('X,Y->W', x, g) (every index of X must occur in Y or W, as in a
  matmul), with the float32 cotangent g cast to the compute dtype first. That
  is mixed precision as autocast does it: JAX's own rule would run both
  backward matmuls in float32 (it converts the operands to the result type),
  and on XLA:CPU a bfloat16 matmul runs natively only with a float32 result
  (and, for the second gradient, only in the layout `_weight_grad` gives it).
  A float32 weight w gets the float32 result of its gradient matmul as it is;
  with the cast outside (autocast's way), that gradient would be rounded to
  the compute dtype first.
  """
  return jnp.einsum(spec, x, w.astype(x.dtype), preferred_element_type=jnp.float32)


def _mixed_einsum_fwd(spec, x, w):
  return mixed_einsum(spec, x, w), (x, w)


def _mixed_einsum_bwd(spec, residuals, g):
  x, w = residuals
  (x_axes, w_axes), y_axes = spec.replace(" ", "").split("->")[0].split(","), spec.split("->")[1]
  g = g.astype(x.dtype)
  dx = jnp.einsum(f"{y_axes},{w_axes}->{x_axes}", g, w.astype(x.dtype),
                  preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), _weight_grad(x, g, x_axes, y_axes, w_axes).astype(w.dtype)


def _weight_grad(x, g, x_axes: str, y_axes: str, w_axes: str) -> jax.Array:
  """einsum('X,Y->W', x, g) with a float32 result: the contraction over the
  tokens (the axes of x that W lacks).

  XLA:CPU has no native bf16 x bf16 -> f32 kernel for this transposed-lhs
  layout and upcasts both operands to float32, so in a low precision on CPU x
  is first copied with the tokens last (`materialised_transpose`). At 6 x 256
  in bfloat16 the weight gradients then ran at 118-154 GFLOP/s instead of
  80-97 in float32 (profiled train steps). In float32 the dot stays as it
  is: XLA:CPU's float32 kernels take the transposed layout.
  """
  if jax.default_backend() == "cpu" and x.dtype != jnp.float32:
    order = sorted(range(len(x_axes)), key=lambda i: x_axes[i] not in w_axes)  # Stable.
    x_axes = "".join(x_axes[i] for i in order)
    x = materialised_transpose(x, order)
  return jnp.einsum(f"{x_axes},{y_axes}->{w_axes}", x, g, preferred_element_type=jnp.float32)


def materialised_transpose(x: jax.Array, order: list[int]) -> jax.Array:
  """x.transpose(order) as a copy in memory, for a dot that needs that layout.

  XLA's layout assignment turns a plain transpose into a change of layout (a
  bitcast), which gives the consuming dot its operand in the old order after
  all; XLA:CPU then runs a low-precision dot in float32 (or not at all). With
  the last axis of `order` split in two around the transpose, XLA:CPU (jax
  0.10) keeps the copy; tests/test_layers.py checks the compiled program. An
  axis of odd length is transposed plainly.

  Args:
    x: any array.
    order: a permutation of range(x.ndim).

  Returns:
    x.transpose(order), the same values.
  """
  axis = order[-1]
  n = x.shape[axis]
  if n % 2:
    return x.transpose(order)
  split = x.reshape(*x.shape[:axis], 2, n // 2, *x.shape[axis + 1:])
  split_order = [j for i in order for j in ((i, i + 1) if i == axis else (i + (i > axis),))]
  return split.transpose(split_order).reshape([x.shape[i] for i in order])


mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


def dense(x: jax.Array, w: jax.Array, num_contract: int = 1,
          out_dtype: jnp.dtype | None = None, transposed_w: bool = False) -> jax.Array:
  """Contracts the last `num_contract` axes of x with the first ones of w (with
  transposed_w, the last ones of w), as one 2-D matmul.

  float[*lead, *w.shape[:num_contract]] x w -> float[*lead, *w.shape[num_contract:]];
  with transposed_w, float[*lead, *w.shape[-num_contract:]] x w
  -> float[*lead, *w.shape[:-num_contract]].
  The product is a `mixed_einsum` in the dtype of x (float32 accumulation,
  backward in that dtype, w's gradient in w's dtype), returned in `out_dtype`
  (default: the dtype of x). Flattening to [prod(lead), K] @ [K, N] keeps the
  backward pass two plain matmuls: on XLA:CPU the weight gradient of the
  equivalent 3-D einsum (a contraction over batch and length) runs ~2x slower.
  """
  lead = x.shape[: x.ndim - num_contract]
  rows = x.reshape(-1, math.prod(x.shape[len(lead):]))
  if transposed_w:
    out = w.shape[: w.ndim - num_contract]
    y = mixed_einsum("mk,nk->mn", rows, w.reshape(math.prod(out), -1))
  else:
    out = w.shape[num_contract:]
    y = mixed_einsum("mk,kn->mn", rows, w.reshape(rows.shape[1], -1))
  return y.astype(out_dtype or x.dtype).reshape(*lead, *out)


class RMSNorm(nnx.Module):
  """Root-mean-square layer norm with a learned scale (Zhang & Sennrich 2019).

  y = x / sqrt(mean(x^2) + eps) * scale, computed in float32 and returned in
  the dtype of x.
  """

  def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6):
    self.scale = param(rngs, jax.nn.initializers.ones, (dim,), ("embed",))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[..., embed] -> float[..., embed] (same dtype)."""
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * inv_rms * self.scale[...]).astype(x.dtype)


class Mlp(nnx.Module):
  """Position-wise feed-forward layer: W_out gelu(W_in x), no biases.

  GELU with the tanh approximation (Hendrycks & Gimpel 2016), as in GPT-2; two
  matmuls keep the cost at 2 * d_model * d_ff multiply-adds per token.
  """

  def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs):
    self.w_in = param(rngs, fan_in_init(0, 1), (d_model, d_ff), ("embed", "mlp"))
    self.w_out = param(rngs, fan_in_init(0, 1), (d_ff, d_model), ("mlp", "embed"))

  def __call__(self, x: jax.Array, w_out_t: jax.Array | None = None) -> jax.Array:
    """x: float[batch, seq_len, embed] -> same shape and dtype.

    w_out_t: `transposed_w_out()`, as decoding passes it, or None (w_out as stored).
    """
    h = dense(x, self.w_in[...])
    h = jax.nn.gelu(constrain(h, ("batch", "activation_length", "activation_mlp")), approximate=True)
    if w_out_t is None:
      return dense(h, self.w_out[...])
    return dense(h, w_out_t, transposed_w=True)

  def transposed_w_out(self) -> jax.Array:
    """w_out as float32[(layers,) embed, mlp], a copy in that layout.

    For decoding: a matrix-vector product reads [embed, mlp] faster than
    [mlp, embed] on XLA:CPU (see `Block.decode_kernels`). Built as the
    concatenation of two transposed halves, which XLA computes once outside a
    decode loop: a lone transpose it folds back into the matmul or, made a
    copy, redoes in every step.
    """
    w = self.w_out[...]
    half = w.shape[-1] // 2
    return jnp.concatenate([w[..., :half].swapaxes(-1, -2), w[..., half:].swapaxes(-1, -2)],
                           axis=-2)


def sinusoidal_embedding(time: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features of a diffusion time (Vaswani et al. 2017, Sec. 3.5).

  Args:
    time: float[batch] in [0, 1]; scaled by 1000 so that the fastest
      frequencies resolve steps of 1e-3.
    dim: even number of features.
    max_period: longest period, in units of time * 1000.

  Returns:
    float32[batch, dim]: [cos(1000 t w_k), sin(1000 t w_k)] with
    w_k = max_period^(-k / (dim / 2)).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = 1000.0 * time.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimeEmbedding(nnx.Module):
  """Diffusion-time conditioning: sinusoid(t) -> Dense -> SiLU -> Dense.

  The result, float[batch, embed], is added to every token embedding (the
  time-embedding MLP of DDPM / DiT, Ho et al. 2020; Peebles & Xie 2023).
  The d_model sinusoid features reuse the axis name 'embed'; the hidden
  width is d_ff, named 'mlp'.
  """

  def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs):
    self.w1 = param(rngs, fan_in_init(0, 1), (d_model, d_ff), ("embed", "mlp"))
    self.b1 = param(rngs, jax.nn.initializers.zeros, (d_ff,), ("mlp",))
    self.w2 = param(rngs, fan_in_init(0, 1), (d_ff, d_model), ("mlp", "embed"))
    self.b2 = param(rngs, jax.nn.initializers.zeros, (d_model,), ("embed",))

  def __call__(self, time: jax.Array) -> jax.Array:
    """time: float[batch] in [0, 1] -> float32[batch, embed]."""
    features = sinusoidal_embedding(time, self.w1.shape[0])
    h = jax.nn.silu(features @ self.w1[...] + self.b1[...])
    return h @ self.w2[...] + self.b2[...]
