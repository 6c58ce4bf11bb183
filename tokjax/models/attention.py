"""Multi-head self-attention with RoPE, mask modes and a KV-cache path.

Masks are boolean, True where a query may attend to a key, shaped
[batch or 1, 1, q_len, kv_len] for `jax.nn.dot_product_attention`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tokjax.models.layers import fan_in_init, param

ATTENTION_MODES = ("causal", "bidirectional", "prefix")


def apply_rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (Su et al. 2021, "RoFormer: Enhanced Transformer
  with Rotary Position Embedding").

  Rotates the pairs (x[..., i], x[..., i + kv/2]) by the angle
  position * base^(-2i / kv) (the GPT-NeoX "rotate half" layout).

  Args:
    x: float[batch, seq_len, heads, kv] queries or keys; kv must be even.
    positions: int32[batch, seq_len] absolute positions.
    base: wavelength base, 10000 in the paper.

  Returns:
    float[batch, seq_len, heads, kv], dtype of x; angles are float32.
  """
  half = x.shape[-1] // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def attention_mask(mode: str, seq_len: int, prefix_len: jax.Array | None) -> jax.Array:
  """Boolean mask for a full sequence of `seq_len` tokens.

  Args:
    mode: 'causal' (key j visible to query i iff j <= i), 'bidirectional'
      (all visible) or 'prefix' (j <= i or j < prefix_len[b]; Raffel et al.
      2020, "T5", Fig. 3).
    seq_len: number of tokens.
    prefix_len: int32[batch], required by and only allowed with 'prefix'.

  Returns:
    bool[1 or batch, 1, seq_len, seq_len].

  Raises:
    ValueError: an unknown mode, or prefix_len missing / given when unused.
  """
  if mode not in ATTENTION_MODES:
    raise ValueError(f"Unknown attention mode {mode!r}; use one of {ATTENTION_MODES}.")
  if (mode == "prefix") != (prefix_len is not None):
    raise ValueError("Pass prefix_len (int32[batch]) exactly when attention='prefix'.")
  idx = jnp.arange(seq_len, dtype=jnp.int32)
  if mode == "bidirectional":
    return jnp.ones((1, 1, seq_len, seq_len), dtype=bool)
  causal = idx[None, None, :, None] >= idx[None, None, None, :]
  if mode == "causal":
    return causal
  in_prefix = idx[None, :] < jnp.asarray(prefix_len, jnp.int32)[:, None]
  return causal | in_prefix[:, None, None, :]


def cache_mask(positions: jax.Array, cache_len: int, prefix_len: jax.Array | None = None) -> jax.Array:
  """Mask over KV-cache slots: slot s is visible iff s <= position, or s < prefix_len.

  positions: int32[batch, q_len]; prefix_len: int32[batch] or None (causal)
  -> bool[batch, 1, q_len, cache_len]. With prefix_len, a prefill of the prefix
  attends bidirectionally inside it, as attention_mask('prefix') does.
  """
  slots = jnp.arange(cache_len, dtype=jnp.int32)
  visible = slots[None, None, None, :] <= positions[:, None, :, None]
  if prefix_len is None:
    return visible
  return visible | (slots[None, :] < jnp.asarray(prefix_len, jnp.int32)[:, None])[:, None, None, :]


class Attention(nnx.Module):
  """Multi-head attention; q/k/v kernels are [embed, heads, kv]."""

  def __init__(self, d_model: int, num_heads: int, rope_base: float, *, rngs: nnx.Rngs):
    head_dim = d_model // num_heads
    shape, axes = (d_model, num_heads, head_dim), ("embed", "heads", "kv")
    self.wq = param(rngs, fan_in_init(0, (1, 2)), shape, axes)
    self.wk = param(rngs, fan_in_init(0, (1, 2)), shape, axes)
    self.wv = param(rngs, fan_in_init(0, (1, 2)), shape, axes)
    self.wo = param(
        rngs, fan_in_init((0, 1), 2), (num_heads, head_dim, d_model), ("heads", "kv", "embed")
    )
    self.rope_base = rope_base

  def qkv(self, x: jax.Array, positions: jax.Array):
    """Projects x: float[batch, seq_len, embed] to RoPE'd q, k and plain v.

    Returns three float[batch, seq_len, heads, kv] arrays in the dtype of x.
    """
    def project(w):
      return jnp.einsum("bld,dhk->blhk", x, w[...].astype(x.dtype))

    q = apply_rope(project(self.wq), positions, self.rope_base)
    k = apply_rope(project(self.wk), positions, self.rope_base)
    return q, k, project(self.wv)

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) + output projection.

    Args:
      q: float[batch, q_len, heads, kv].
      k, v: float[batch, kv_len, heads, kv].
      mask: bool[batch or 1, 1, q_len, kv_len], True = visible.

    Returns:
      float[batch, q_len, embed] in the dtype of q; softmax runs in float32.
    """
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return jnp.einsum("blhk,hkd->bld", out, self.wo[...].astype(q.dtype))
