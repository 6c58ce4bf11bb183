"""The KV cache: its layout, and the few operations samplers need on it.

Layout: heads-major, float[batch, heads, cache_len, kv] per layer (a tuple of
num_layers arrays), or with `TransformerConfig.scan_layers` one stacked
float[layers, batch, heads, cache_len, kv] array (the scan's carry). Heads-major
means decode attention reads each head's keys as one contiguous
[cache_len, kv] matrix, so the score and value matmuls run on the cache in
place instead of transposing all of it every step. Slot s holds the key and
value of whichever token a sampler wrote there: position s for plain decoding,
a ring slot for a rolling cache, a tree node for tree attention.

The functions below take either layout; they tell them apart by the type of
cache['k'] (tuple: per layer; array: stacked).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from tokjax.models.transformer import TransformerConfig


def init_cache(config: TransformerConfig, batch_size: int, max_len: int) -> dict:
  """A zero KV cache for `Transformer.decode`.

  Without scan_layers, one array per layer (not one stacked array) so that
  XLA updates each in place and attention reads it without slicing a copy out
  of a stack.

  Returns:
    {'k': (float[batch_size, heads, max_len, kv],) * num_layers, 'v': same},
    or with scan_layers {'k': float[layers, batch_size, heads, max_len, kv],
    'v': same}; in config.dtype.

  Raises:
    ValueError: max_len > config.max_seq_len.
  """
  if max_len > config.max_seq_len:
    raise ValueError(
        f"Cache length {max_len} > max_seq_len={config.max_seq_len}; "
        "shorten generation or raise TransformerConfig.max_seq_len (or use a rolling "
        "cache: sampler.ar.window)."
    )
  shape = (batch_size, config.num_heads, max_len, config.head_dim)
  if config.scan_layers:
    return {name: jnp.zeros((config.num_layers, *shape), config.dtype) for name in ("k", "v")}
  return {name: tuple(jnp.zeros(shape, config.dtype) for _ in range(config.num_layers))
          for name in ("k", "v")}


def cache_len(cache: dict) -> int:
  """The number of slots."""
  return cache["k"][0].shape[-2]


def _batch_axis(cache: dict) -> int:
  return 0 if isinstance(cache["k"], tuple) else 1


def write(layer_cache: jax.Array, new: jax.Array, slot: jax.Array,
          layer: jax.Array | None = None) -> jax.Array:
  """`layer_cache` with new float[batch, q_len, heads, kv] written at slots
  slot .. slot + q_len - 1 (of layer `layer` of a stacked cache), in place.

  slot: int32[] (the same slots in every row, one dynamic_update_slice) or
  int32[batch] (each row its own, e.g. after speculative rounds that
  accepted different numbers of tokens; a scatter).
  """
  zero = jnp.zeros((), jnp.int32)  # int32 indices also under 64-bit mode
  new = new.transpose(0, 2, 1, 3).astype(layer_cache.dtype)
  slot = jnp.asarray(slot, jnp.int32)
  if slot.ndim == 1:
    def write_row(row_cache, row_new, row_slot):  # [(layers,) heads, slots, kv]
      start = (zero, row_slot, zero)
      if layer is not None:
        row_new, start = row_new[None], (jnp.asarray(layer, jnp.int32), *start)
      return jax.lax.dynamic_update_slice(row_cache, row_new, start)
    return jax.vmap(write_row, in_axes=(0 if layer is None else 1, 0, 0),
                    out_axes=0 if layer is None else 1)(layer_cache, new, slot)
  start = (zero, zero, slot, zero)
  if layer is not None:
    new, start = new[None], (jnp.asarray(layer, jnp.int32), *start)
  return jax.lax.dynamic_update_slice(layer_cache, new, start)


def read(layer_cache: jax.Array, layer: jax.Array | None = None) -> jax.Array:
  """float[batch, heads, cache_len, kv]: this layer's slots (`layer` of a stacked cache)."""
  if layer is None:
    return layer_cache
  return jax.lax.dynamic_index_in_dim(layer_cache, layer, keepdims=False)


def select_beams(cache: dict, beams: jax.Array) -> dict:
  """The cache with row b * n + j copied from row b * m + beams[b, j]: the old
  rows are `batch` groups of m beams, beams is int32[batch, n], and every row
  picks within its own group (beam search reorders its beams' caches so, and
  m = 1 makes n copies of each row). A gather inside each group keeps a batch
  sharded over devices on its devices, where a gather over all rows would
  first collect every device's cache."""
  axis = _batch_axis(cache)
  batch, n = beams.shape

  def pick(x):
    groups = x.reshape(*x.shape[:axis], batch, -1, *x.shape[axis + 1:])
    index = beams.reshape((1,) * axis + (batch, n) + (1,) * (x.ndim - axis - 1))
    picked = jnp.take_along_axis(groups, index, axis=axis + 1)
    return picked.reshape(*x.shape[:axis], batch * n, *x.shape[axis + 1:])

  return jax.tree.map(pick, cache)


def move_slots(cache: dict, src: jax.Array, dst: jax.Array) -> dict:
  """Copies, in every row b and layer, slots src[b, i] to slots dst + i.

  Tree attention uses it to pack the accepted path of a verified draft tree
  (written at scattered slots) into consecutive slots.

  Args:
    cache: a KV cache.
    src: int32[batch, n] source slots.
    dst: int32[] first destination slot.
  """
  axis = _batch_axis(cache)
  index = src[:, None, :, None]  # [batch, heads, n, kv] broadcast
  if axis == 1:
    index = index[None]

  def move(x):
    picked = jnp.take_along_axis(x, index, axis=axis + 2, mode="clip")
    start = [jnp.zeros((), jnp.int32)] * x.ndim
    start[axis + 2] = jnp.asarray(dst, jnp.int32)
    return jax.lax.dynamic_update_slice(x, picked, start)

  return jax.tree.map(move, cache)
