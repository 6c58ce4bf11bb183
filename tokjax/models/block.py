"""One pre-norm transformer block (Xiong et al. 2020), full-sequence and KV-cache paths.

  x = x + Attention(RMSNorm(x));  x = x + Mlp(RMSNorm(x))
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from tokjax.models.attention import Attention, cache_mask
from tokjax.models.layers import Mlp, RMSNorm

if TYPE_CHECKING:
  from tokjax.models.transformer import TransformerConfig


class Block(nnx.Module):
  """One pre-norm transformer block."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(config.d_model, rngs=rngs)
    self.attn = Attention(config.d_model, config.num_heads, rngs=rngs,
                          implementation=config.attention_impl)
    self.mlp_norm = RMSNorm(config.d_model, rngs=rngs)
    self.mlp = Mlp(config.d_model, config.d_ff, rngs=rngs)

  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], mask: jax.Array) -> jax.Array:
    """x: float[batch, seq_len, embed] -> same; rope from `rope_tables`, mask as
    in `Attention.attend`."""
    q, k, v = self.attn.qkv(self.attn_norm(x), rope)
    x = x + self.attn.attend(q, k, v, mask)
    return x + self.mlp(self.mlp_norm(x))

  def decode(self, x: jax.Array, positions: jax.Array, rope: tuple[jax.Array, jax.Array],
             cache_k: jax.Array, cache_v: jax.Array, prefix_len: jax.Array | None = None):
    """Block step that writes the new keys/values into this layer's KV cache.

    Args:
      x: float[batch, q_len, embed] hidden states of the new tokens.
      positions: int32[batch, q_len], contiguous, same start in every row.
      rope: `rope_tables(positions, ...)`.
      cache_k, cache_v: float[batch, cache_len, heads, kv]; slot == position.
      prefix_len: int32[batch] slots every query sees (see `cache_mask`), or None.

    Returns:
      (x, cache_k, cache_v) with x float[batch, q_len, embed].
    """
    q, k, v = self.attn.qkv(self.attn_norm(x), rope)
    zero = jnp.zeros((), jnp.int32)  # int32 indices also under 64-bit mode
    start = (zero, positions[0, 0].astype(jnp.int32), zero, zero)
    cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
    cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
    mask = cache_mask(positions, cache_k.shape[1], prefix_len)
    x = x + self.attn.attend(q, cache_k, cache_v, mask)
    return x + self.mlp(self.mlp_norm(x)), cache_k, cache_v
