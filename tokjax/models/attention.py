"""Multi-head self-attention with RoPE, mask modes and a KV-cache path.

Masks are boolean, True where a query may attend to a key, shaped
[batch or 1, 1, q_len, kv_len] for `jax.nn.dot_product_attention`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from tokjax.models import kv_cache
from tokjax.models.layers import dense, fan_in_init, materialised_transpose, mixed_einsum, param
from tokjax.sharding import constrain

ATTENTION_MODES = ("causal", "bidirectional", "prefix")
# Kernels for softmax(q k^T / sqrt(d)) v: 'matmul' is ours (heads-major batched
# matmuls, the fastest on CPU); the others are `jax.nn.dot_product_attention`'s
# implementations ('cudnn' is its fused flash attention on NVIDIA GPUs, 'xla'
# its portable one). 'auto' picks 'matmul' on CPU and lets JAX choose elsewhere.
ATTENTION_IMPLS = ("auto", "matmul", "xla", "cudnn")
# Logical axes of q, k, v and the attention output, float[batch, length, heads, kv].
HEADS_AXES = ("batch", "activation_length", "activation_heads", "activation_kv")


def rope_tables(positions: jax.Array, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
  """The rotary tables (Su et al. 2021, "RoFormer: Enhanced Transformer with
  Rotary Position Embedding", Eq. 34), computed once per forward pass for
  every layer.

  The angle of pair i (elements i and i + kv/2, the GPT-NeoX "rotate half"
  layout) at position p is theta = p * base^(-2i / kv).

  Args:
    positions: int32[batch, seq_len] absolute positions.
    head_dim: kv, even.
    base: wavelength base, 10000 in the paper.

  Returns:
    (cos, sin_signed), each float32[batch, seq_len, 1, 2, kv / 2]: [cos, cos]
    and [-sin, sin] over the two halves.
  """
  half = head_dim // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, :, None, None, None] * inv_freq
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  return jnp.concatenate([cos, cos], axis=-2), jnp.concatenate([-sin, sin], axis=-2)


def apply_rope(x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotates each pair (x1, x2) = (x[..., i], x[..., i + kv/2]) by its angle:
  (x1 cos - x2 sin, x2 cos + x1 sin).

  Written as x cos + swap_halves(x) sin_signed on a [..., 2, kv/2] view, so
  that it fuses into one elementwise kernel without a concatenation.

  Args:
    x: float[batch, seq_len, heads, kv] queries or keys.
    rope: from `rope_tables`.

  Returns:
    float[batch, seq_len, heads, kv], dtype of x; the rotation runs in float32.
  """
  cos, sin_signed = rope
  halves = x.astype(jnp.float32).reshape(*x.shape[:-1], 2, x.shape[-1] // 2)
  rotated = halves * cos + halves[..., ::-1, :] * sin_signed
  return rotated.reshape(x.shape).astype(x.dtype)


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


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                          implementation: str = "auto", is_causal: bool = False) -> jax.Array:
  """softmax(q k^T / sqrt(kv) + log mask) v ("Attention Is All You Need", Eq. 1).

  Args:
    q: float[batch, q_len, heads, kv].
    k, v: float[batch, kv_len, heads, kv].
    mask: bool[batch or 1, 1, q_len, kv_len], True = visible.
    implementation: one of ATTENTION_IMPLS (see there).
    is_causal: a promise that `mask` is the causal mask over q_len == kv_len
      positions; 'matmul' then skips the blocks above the diagonal (see
      `_causal_blocks`), the others pass it on to JAX.

  Returns:
    float[batch, q_len, heads, kv] in the dtype of q; scores and softmax are float32.

  Raises:
    ValueError: an unknown implementation.
  """
  if implementation not in ATTENTION_IMPLS:
    raise ValueError(f"Unknown attention implementation {implementation!r}; use one of "
                     f"{ATTENTION_IMPLS}.")
  if implementation == "auto":
    implementation = "matmul" if jax.default_backend() == "cpu" else None
  if implementation != "matmul":
    return jax.nn.dot_product_attention(q, k, v, mask=None if is_causal else mask,
                                        is_causal=is_causal, implementation=implementation)
  # Heads-major [batch, heads, length, kv] once, copied (a transpose that XLA
  # turned into a layout change left bfloat16 batched matmuls without a native
  # kernel on CPU), so that every batched matmul below reads contiguous operands
  # and no per-block slice transposes again. The copies are float32 and each
  # matmul casts its slice back: the backward pass then sums the query blocks'
  # key and value gradients in float32, where bfloat16 rounded after every add
  # in slow scalar code (docs/performance.md, third round).
  dtype = q.dtype
  q, k, v = (materialised_transpose(x.astype(jnp.float32), [0, 2, 1, 3]) for x in (q, k, v))
  out = (_causal_blocks(q, k, v, mask, dtype) if is_causal
         else _softmax_attention(q, k, v, mask, dtype))
  return out.transpose(0, 2, 1, 3)


def _softmax_attention(q, k, v, mask, dtype=None):
  """The attention of `dot_product_attention` as two batched matmuls on
  heads-major q: float[batch, heads, q_len, kv] and k, v: [batch, heads, kv_len, kv],
  cast to `dtype` first (None: as given)."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  if dtype is not None:
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
  scores = mixed_einsum("bhqd,bhkd->bhqk", q, k) * scale
  return _probs_times_values(scores, v, mask)


def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, keys: tuple, values: tuple,
                     mask: jax.Array, slot: jax.Array,
                     sink_rope: tuple[int, tuple[jax.Array, jax.Array]] | None = None,
                     layer: jax.Array | None = None,
                     read_blocks: jax.Array | None = None) -> jax.Array:
  """Attention of new tokens over a heads-major KV cache read *before* their
  keys and values are written to it (`Block.decode` writes them afterwards).

  The result is that of attending over the cache with k and v written at
  slots slot .. slot + q_len - 1, computed as two parts under one softmax:
  the old cache with those slots hidden, and the new tokens' own k and v.
  Reading the old cache lets XLA update the loop-carried cache in place: with
  the read after the write, XLA:CPU copied every layer's cache several times
  per step at batch 1 (it fused the write into both of its users).

  The cache comes in blocks (`kv_cache`). Each block in `read_blocks` is
  read once, under a `lax.cond`, into its part of the softmax (its largest
  score, sum of exponentials and weighted values: the split over keys of
  Flash-Decoding, Dao et al. 2023, "Flash-Decoding for long-context
  inference"), and the parts are joined; the other blocks are not read. So a
  decode step costs the filled part of the cache, not all of it.

  A prefill (q_len > 1) skips the cache part when no query sees any cache
  slot (an empty cache), and when no new token sees a later one it attends
  over the new tokens by causal blocks (`_causal_blocks`), as the training
  forward does.

  Args:
    q, k, v: float[batch, q_len, heads, kv] the new tokens' (q and k rotated).
    keys, values: the cache before the write, one layer's key blocks
      float[batch, heads, kv, block_len] and value blocks float[batch, heads,
      block_len, kv] (`kv_cache`), or with `layer` the stacked blocks, with
      a leading [layers] axis.
    mask: bool[batch or 1, 1, q_len, cache_len] the slots each new token sees
      once the new tokens are written, its own included.
    slot: int32[] the new tokens' first slot, or int32[batch] one per row;
      clamped to [0, cache_len - q_len] as `kv_cache.write` clamps.
    sink_rope: (n, rope tables float32[batch, n, 1, 2, kv / 2]) or None: the
      first n slots' keys are read rotated by these further angles (the same
      for every sink of a row), a new key written there too.
    layer: int32[] this layer's index into stacked blocks, or None.
    read_blocks: bool[num_blocks] the blocks to read, a superset of those
      holding a slot that `mask` shows (`kv_cache.blocks_seen`); None: all.

  Returns:
    float[batch, q_len, heads, kv] in the dtype of v.
  """
  starts = kv_cache.block_starts(values)
  length, q_len = starts[-1], q.shape[1]
  slot = jnp.clip(jnp.asarray(slot, jnp.int32), 0, length - q_len)
  slots = jnp.arange(length, dtype=jnp.int32)
  new_slots = slot[..., None] + jnp.arange(q_len, dtype=jnp.int32)  # [q_len] or [batch, q_len]
  if slot.ndim == 0:
    written = ((slots >= slot) & (slots < slot + q_len))[None, None, None, :]
    new_mask = jax.lax.dynamic_slice_in_dim(mask, slot, q_len, axis=3)
  else:
    rows = slot[:, None]
    written = ((slots[None] >= rows) & (slots[None] < rows + q_len))[:, None, None, :]
    new_mask = jnp.take_along_axis(jnp.broadcast_to(mask, (slot.shape[0], *mask.shape[1:])),
                                   new_slots[:, None, None, :], axis=3)
  cache_mask = mask & ~written
  if sink_rope is not None:
    n, tables = sink_rope
    rotated = apply_rope(k, tuple(t[:, :1] for t in tables))  # Every sink's angle is the same.
    in_sinks = jnp.broadcast_to(new_slots < n, (k.shape[0], q_len))
    k = jnp.where(in_sinks[:, :, None, None], rotated, k)
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  scale = 1.0 / math.sqrt(q.shape[-1])

  low = jnp.finfo(jnp.float32).min
  # One query per row and head makes both cache matmuls matrix-vector
  # products, which XLA:CPU runs with its own single-core kernel; two copies
  # of the query make them small matrix products that YNNPACK runs, faster
  # for the same bytes read (docs/decoding.md, "Keys transposed").
  rows = jnp.concatenate([q, q], axis=2) if q_len == 1 else q

  def block_part(j):
    """Block j's part of the softmax (Flash-Decoding's split over keys):
    float32 (max score [batch, heads, q_len, 1], sum of exp(score - max) [same],
    exp(score - max) @ values [batch, heads, q_len, kv])."""
    lo, hi = starts[j], starts[j + 1]
    block_keys, block_values = kv_cache.read(keys[j], layer), kv_cache.read(values[j], layer)
    scores = mixed_einsum("bhqd,bhdk->bhqk", rows, block_keys) * scale
    if sink_rope is not None and lo < n:
      m = min(n, hi) - lo
      sinks = apply_rope(block_keys[..., :m].transpose(0, 3, 1, 2),  # [batch, m, heads, kv]
                         tuple(t[:, lo:lo + m] for t in tables)).transpose(0, 2, 3, 1)
      sink_scores = mixed_einsum("bhqd,bhdk->bhqk", rows, sinks) * scale
      scores = jax.lax.dynamic_update_slice_in_dim(scores, sink_scores, 0, axis=3)
    scores = jnp.where(cache_mask[..., lo:hi], scores, low)
    top = jnp.max(scores, axis=-1, keepdims=True)
    probs = jnp.exp(scores - top)
    out = mixed_einsum("bhqk,bhkd->bhqd", probs.astype(block_values.dtype), block_values)
    return tuple(x[:, :, :q_len] for x in (top, jnp.sum(probs, axis=-1, keepdims=True), out))

  def unread():
    return (jnp.full((*q.shape[:3], 1), low), jnp.zeros((*q.shape[:3], 1), jnp.float32),
            jnp.zeros(q.shape, jnp.float32))

  def with_cache():
    """Each block read (or not, by read_blocks) under one `lax.cond`, the
    parts and the new tokens' own keys joined under one softmax."""
    parts = [block_part(j) if read_blocks is None
             else jax.lax.cond(read_blocks[j], functools.partial(block_part, j), unread)
             for j in range(len(keys))]
    new_scores = jnp.where(new_mask, mixed_einsum("bhqd,bhkd->bhqk", q, k) * scale, low)
    top = functools.reduce(jnp.maximum, [p[0] for p in parts],
                           jnp.max(new_scores, axis=-1, keepdims=True))
    new_probs = jnp.exp(new_scores - top)
    total = jnp.sum(new_probs, axis=-1, keepdims=True)
    out = mixed_einsum("bhqk,bhkd->bhqd", new_probs.astype(v.dtype), v)
    for part_top, part_total, part_out in parts:
      weight = jnp.exp(part_top - top)
      total, out = total + weight * part_total, out + weight * part_out
    return (out / total).astype(v.dtype)

  if q_len == 1:
    out = with_cache()
  else:
    def new_only():
      if q_len < 2 * MIN_CAUSAL_BLOCK:  # `_causal_blocks` would run one block.
        return _softmax_attention(q, k, v, new_mask)
      later = jnp.arange(q_len)[None, :] > jnp.arange(q_len)[:, None]
      return jax.lax.cond(jnp.any(new_mask & later),
                          lambda: _softmax_attention(q, k, v, new_mask),
                          lambda: _causal_blocks(q, k, v, new_mask))

    out = jax.lax.cond(jnp.any(cache_mask), with_cache, new_only)
  return out.transpose(0, 2, 1, 3)


# `_causal_blocks` splits the queries into blocks of at least this many.
MIN_CAUSAL_BLOCK = 64


def _probs_times_values(scores, values, mask):
  probs = jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), axis=-1)
  return mixed_einsum("bhqk,bhkd->bhqd", probs.astype(values.dtype), values).astype(values.dtype)


def _causal_blocks(q, k, v, mask, dtype=None, min_block: int = MIN_CAUSAL_BLOCK,
                   max_blocks: int = 4):
  """Causal attention by query blocks (heads-major, as `_softmax_attention`):
  block i of n attends only to keys [0, (i + 1) L / n), skipping the keys it
  cannot see, so the score and value matmuls do (n + 1) / (2n) of the full
  work (5/8 for n = 4). More, smaller blocks save more matmul work but cost
  more in slicing; n = 4 was the fastest train step at seq_len 256 on CPU."""
  length = q.shape[2]
  n = max(1, min(max_blocks, length // min_block))
  while length % n:
    n -= 1
  size = length // n
  outs = [
      _softmax_attention(q[:, :, i * size:(i + 1) * size], k[:, :, :(i + 1) * size],
                         v[:, :, :(i + 1) * size],
                         mask[..., i * size:(i + 1) * size, :(i + 1) * size], dtype)
      for i in range(n)
  ]
  return jnp.concatenate(outs, axis=2)


class Attention(nnx.Module):
  """Multi-head attention; q/k/v kernels are [embed, heads, kv]."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs,
               implementation: str = "auto"):
    head_dim = d_model // num_heads
    shape, axes = (d_model, num_heads, head_dim), ("embed", "heads", "kv")
    self.wq = param(rngs, fan_in_init(0, (1, 2)), shape, axes)
    self.wk = param(rngs, fan_in_init(0, (1, 2)), shape, axes)
    self.wv = param(rngs, fan_in_init(0, (1, 2)), shape, axes)
    self.wo = param(
        rngs, fan_in_init((0, 1), 2), (num_heads, head_dim, d_model), ("heads", "kv", "embed")
    )
    self.implementation = implementation

  def qkv(self, x: jax.Array, rope: tuple[jax.Array, jax.Array],
          fused_kernel: jax.Array | None = None):
    """Projects x: float[batch, seq_len, embed] to RoPE'd q, k and plain v
    (`rope` from `rope_tables`): three matmuls, or with `fused_kernel` (from
    `fused_qkv_kernel`, as decoding passes it) one.

    Returns three float[batch, seq_len, heads, kv] arrays in the dtype of x.
    """
    if fused_kernel is None:
      q, k, v = (constrain(dense(x, w[...]), HEADS_AXES) for w in (self.wq, self.wk, self.wv))
    else:
      q, k, v = (constrain(y, HEADS_AXES) for y in jnp.unstack(dense(x, fused_kernel), axis=-2))
    return apply_rope(q, rope), apply_rope(k, rope), v

  def fused_qkv_kernel(self) -> jax.Array:
    """The q, k and v kernels as one, float32[(layers,) embed, heads, 3, kv].

    For decoding one row, where each matmul is a matrix-vector product that
    reads its weights from memory: one read of [embed, 3 * heads * kv]
    runs faster than three of [embed, heads * kv] on XLA:CPU (see
    `Block.decode_kernels`). Heads stay the major axis, so a tensor-parallel
    split over heads stays one block per device.
    """
    return jnp.stack([self.wq[...], self.wk[...], self.wv[...]], axis=-2)

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
             is_causal: bool = False) -> jax.Array:
    """Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) + output projection.

    Args:
      q: float[batch, q_len, heads, kv].
      k, v: float[batch, kv_len, heads, kv].
      mask: bool[batch or 1, 1, q_len, kv_len], True = visible.
      is_causal: `mask` is the causal mask (see `dot_product_attention`).

    Returns:
      float[batch, q_len, embed] in the dtype of q; softmax runs in float32.
    """
    return self.project_out(dot_product_attention(q, k, v, mask, self.implementation, is_causal))

  def project_out(self, out: jax.Array) -> jax.Array:
    """The output projection: float[batch, q_len, heads, kv] -> float[batch, q_len, embed]."""
    return dense(constrain(out, HEADS_AXES), self.wo[...], num_contract=2)
