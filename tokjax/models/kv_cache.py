"""The KV cache: its layout, and the few operations samplers need on it.

Layout: heads-major blocks. Each layer's keys (and values) are a tuple of
blocks of consecutive slots (the last block may be shorter), one buffer each:
values float[batch, heads, block_len, kv] and keys transposed, float[batch,
heads, kv, block_len]; with `TransformerConfig.scan_layers` the blocks are
stacked over layers, with a leading [layers] axis (the scan's carry).
Heads-major means decode attention reads each head's keys and values as
contiguous matrices, so the score and value matmuls run on the cache in place,
and with the keys transposed both take their right-hand side in the [contracted,
output] layout that XLA:CPU's YNNPACK matmuls accept (`SLOT_AXIS`). Separate
blocks let `attention.decode_attention` skip the blocks no query sees, such as
the empty end of a cache being filled: XLA:CPU would copy a slice of one long
buffer before a matmul, a separate buffer it reads in place. Slot s holds the
key and value of whichever token a sampler wrote there: position s for plain
decoding, a ring slot for a rolling cache, a tree node for tree attention.

cache = {'k': keys, 'v': values}: without scan_layers, keys is a tuple of
layers, each a tuple of blocks; with it, a tuple of stacked blocks. The
functions below take either layout.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from tokjax.models.transformer import TransformerConfig


# With kv_block_len 0, a block has at least AUTO_BLOCK_SLOTS slots and holds at
# least AUTO_BLOCK_BYTES of one layer's keys. The bytes keep the per-block cost
# of decode attention (a conditional and two small matmuls) small against the
# block's read: batch 1 gets blocks of 256 slots at d_model 512 and of 512 at
# 256. With more rows blocks stay at 64 slots, which YNNPACK multiplies
# fastest: blocks of 128 or 256 made the batch-32 and batch-8 decode steps
# slower by up to a third (docs/decoding.md, "Keys transposed").
AUTO_BLOCK_BYTES = 2**19
AUTO_BLOCK_SLOTS = 64

# The slots axis of a key and of a value block. Keys are stored transposed,
# so that the scores q k^T multiply [kv, slots] blocks: XLA:CPU's YNNPACK
# matmuls refuse a right-hand side contracted along its minor axis, and its
# own batched matmuls run on one core (docs/decoding.md, "Keys transposed").
SLOT_AXIS = {"k": -1, "v": -2}


def block_len(config: TransformerConfig, batch_size: int, max_len: int) -> int:
  """Slots per block: config.kv_block_len, or with 0 the smallest power of two
  of at least AUTO_BLOCK_SLOTS whose block of one layer's values,
  float[batch_size, heads, block_len, kv], holds at least AUTO_BLOCK_BYTES;
  at most max_len."""
  if config.kv_block_len:
    return config.kv_block_len
  slot_bytes = batch_size * config.d_model * jnp.dtype(config.dtype).itemsize
  slots = max(AUTO_BLOCK_SLOTS, -(-AUTO_BLOCK_BYTES // slot_bytes))  # Rounded up.
  return min(max_len, 1 << (slots - 1).bit_length())


def init_cache(config: TransformerConfig, batch_size: int, max_len: int) -> dict:
  """A zero KV cache for `Transformer.decode`, in blocks of `block_len` slots.

  Returns:
    {'k': ((float[batch_size, heads, kv, block_len],) * num_blocks,) * num_layers,
    'v': ((float[batch_size, heads, block_len, kv],) * num_blocks,) * num_layers},
    or with scan_layers a tuple of blocks for each, with a leading [layers]
    axis; in config.dtype. The last block holds the remaining max_len %
    block_len slots, if any.

  Raises:
    ValueError: max_len > config.max_seq_len.
  """
  if max_len > config.max_seq_len:
    raise ValueError(
        f"Cache length {max_len} > max_seq_len={config.max_seq_len}; "
        "shorten generation or raise TransformerConfig.max_seq_len (or use a rolling "
        "cache: sampler.ar.window)."
    )
  block = block_len(config, batch_size, max_len)
  sizes = [block] * (max_len // block) + ([max_len % block] if max_len % block else [])
  lead = (config.num_layers,) if config.scan_layers else ()

  def layer(name):
    def shape(size):
      slots_kv = (config.head_dim, size) if name == "k" else (size, config.head_dim)
      return (*lead, batch_size, config.num_heads, *slots_kv)
    return tuple(jnp.zeros(shape(size), config.dtype) for size in sizes)

  if config.scan_layers:
    return {name: layer(name) for name in SLOT_AXIS}
  return {name: tuple(layer(name) for _ in range(config.num_layers)) for name in SLOT_AXIS}


def _stacked(cache: dict) -> bool:
  """Whether the blocks are stacked over layers (scan_layers)."""
  return not isinstance(cache["k"][0], tuple)


def _layer_blocks(cache: dict) -> tuple:
  """The first layer's value blocks (every value block of a stacked cache)."""
  return cache["v"] if _stacked(cache) else cache["v"][0]


def _map_layers(fn, cache: dict) -> dict:
  """The cache with each layer's blocks replaced by fn(name, blocks); fn sees
  one layer's key ('k') or value ('v') blocks without a layers axis (vmapped
  over the layers of a stacked cache)."""
  if _stacked(cache):
    return {name: jax.vmap(functools.partial(fn, name))(blocks) for name, blocks in cache.items()}
  return {name: tuple(fn(name, blocks) for blocks in layers) for name, layers in cache.items()}


def block_starts(blocks: tuple, axis: int = SLOT_AXIS["v"]) -> list[int]:
  """The first slot of each block, and the number of slots last; `axis` is the
  blocks' slots axis (value blocks' by default)."""
  starts = [0]
  for block in blocks:
    starts.append(starts[-1] + block.shape[axis])
  return starts


def cache_len(cache: dict) -> int:
  """The number of slots."""
  return block_starts(_layer_blocks(cache))[-1]


def blocks_seen(mask: jax.Array, cache: dict) -> jax.Array | None:
  """bool[num_blocks]: whether any query sees a slot of the block, for
  `attention.decode_attention`'s read_blocks; None for a cache of one block.

  mask: bool[batch or 1, 1, q_len, cache_len]. Its reduction runs over the
  batch: with the rows sharded over devices, the devices exchange it.
  """
  starts = block_starts(_layer_blocks(cache))
  if len(starts) == 2:
    return None
  return jnp.stack([jnp.any(mask[..., lo:hi]) for lo, hi in zip(starts, starts[1:])])


def _put(name: str, block: jax.Array, rows_new: jax.Array, local: jax.Array,
         layer: jax.Array | None) -> jax.Array:
  """Writes rows_new[b, i] at slot local[b, i] of row b of the block, for the
  local slots inside it, in place; block: a key or value block (`name`) with
  a leading [layers] axis when `layer` is given, rows_new: [batch, n, heads,
  kv], local: int32[batch, n]. A scatter per row (vmap): with the rows
  sharded over devices, each writes its own."""
  slot_axis = SLOT_AXIS[name]
  size = block.shape[slot_axis]
  local = jnp.where((local >= 0) & (local < size), local, size)  # size: dropped

  def put_row(row, new, slots):  # row: [(layers,) heads, slots and kv]; new: [n, heads, kv]
    index = [slice(None)] * (row.ndim + slot_axis) + [slots]
    if layer is None:  # Indexing puts n where the slots are.
      new = jnp.moveaxis(new, 0, slot_axis)
    else:  # With the layer index apart from the slots, indexing puts n first.
      index[0] = layer
    return row.at[tuple(index)].set(new.astype(row.dtype), mode="drop")

  axis = 0 if layer is None else 1
  return jax.vmap(put_row, in_axes=(axis, 0, 0), out_axes=axis)(block, rows_new, local)


def _row_slots(slot: jax.Array, n: int, batch: int, length: int) -> jax.Array:
  """int32[batch, n]: slots slot .. slot + n - 1 of each row, the first one
  clamped to [0, length - n] (as dynamic_update_slice clamps); slot is
  int32[] or int32[batch]."""
  slot = jnp.clip(jnp.asarray(slot, jnp.int32), 0, length - n)
  return jnp.broadcast_to(slot, (batch,))[:, None] + jnp.arange(n, dtype=jnp.int32)


def _write(name: str, blocks: tuple, new: jax.Array, slot: jax.Array,
           layer: jax.Array | None = None) -> tuple:
  """Key or value `blocks` (`name`) with new float[batch, q_len, heads, kv]
  written at slots slot .. slot + q_len - 1, as `write` does."""
  starts = block_starts(blocks, SLOT_AXIS[name])
  slots = _row_slots(slot, new.shape[1], new.shape[0], starts[-1])
  return tuple(_put(name, block, new, slots - start, layer)
               for block, start in zip(blocks, starts))


def write(keys: tuple, values: tuple, k: jax.Array, v: jax.Array, slot: jax.Array,
          layer: jax.Array | None = None) -> tuple[tuple, tuple]:
  """(keys, values), one layer's blocks (or with `layer` that layer of stacked
  blocks), with k and v float[batch, q_len, heads, kv] written at slots slot
  .. slot + q_len - 1, in place.

  slot: int32[] (the same slots in every row) or int32[batch] (each row its
  own, e.g. after speculative rounds that accepted different numbers of
  tokens); clamped to [0, cache_len - q_len].
  """
  return _write("k", keys, k, slot, layer), _write("v", values, v, slot, layer)


def read(block: jax.Array, layer: jax.Array | None = None) -> jax.Array:
  """One block of this layer (`layer` of a stacked block): keys float[batch,
  heads, kv, size] or values float[batch, heads, size, kv]."""
  if layer is None:
    return block
  return jax.lax.dynamic_index_in_dim(block, layer, keepdims=False)


def select_beams(cache: dict, beams: jax.Array) -> dict:
  """The cache with row b * n + j copied from row b * m + beams[b, j]: the old
  rows are `batch` groups of m beams, beams is int32[batch, n], and every row
  picks within its own group (beam search reorders its beams' caches so, and
  m = 1 makes n copies of each row). A gather inside each group keeps a batch
  sharded over devices on its devices, where a gather over all rows would
  first collect every device's cache."""
  axis = 1 if _stacked(cache) else 0  # The batch axis.
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
    dst: int32[] first destination slot, or int32[batch] one per row; clamped
      to [0, cache_len - n] as `write` clamps.
  """
  def move(name, blocks):
    axis = SLOT_AXIS[name]
    starts = block_starts(blocks, axis)
    picked = 0
    for block, start in zip(blocks, starts):
      local = src - start
      inside = (local >= 0) & (local < block.shape[axis])
      got = jax.vmap(lambda row, slots: jnp.take(row, slots, axis=axis))(
          block, jnp.clip(local, 0, block.shape[axis] - 1))
      got = jnp.moveaxis(got, axis, 1)  # [batch, n, heads, kv]
      picked = jnp.where(inside[:, :, None, None], got, picked)
    return _write(name, blocks, picked, dst)

  return _map_layers(move, cache)


def extend(cache: dict, extra: int) -> dict:
  """The cache with `extra` more zero slots at its end (in its last block)."""
  def pad(name, blocks):
    widths = [(0, 0)] * blocks[-1].ndim
    widths[SLOT_AXIS[name]] = (0, extra)
    return (*blocks[:-1], jnp.pad(blocks[-1], widths))

  return _map_layers(pad, cache)
