"""Pre-norm transformer blocks (Xiong et al. 2020): one block, and the stack of them.

  x = x + Attention(RMSNorm(x));  x = x + Mlp(RMSNorm(x))

The stack is either a Python list of blocks (one traced copy per layer) or,
with `TransformerConfig.scan_layers`, one `Block` whose every parameter has a
leading [layers] axis, run by `nnx.scan` so that XLA compiles one block body
however deep the model ("scan over layers", as in Flax's lifted `scan` and
T5X / MaxText). The stacked axis is named 'layers' in the parameters' logical
partition specs (`nnx.vmap`'s transform_metadata at creation); `tokjax.sharding`
maps a name its rules lack to no mesh axis (replicated), so each layer's slice
keeps its usual sharding.

The run-time transforms (`nnx.scan`, `nnx.remat`) use NNX's tree mode
(graph=False), which treats a block as a pytree: the samplers merge the model
inside a `jax.lax.while_loop` body from parameters closed over from outside,
and graph mode refuses to extract Variables created at another trace level.
Tree mode ignores transform_metadata, so inside the scan body a layer's
variables keep 'layers' in their names; nothing there reads them.

Either stack can be rematerialised per block ("gradient checkpointing": Chen et
al. 2016, "Training Deep Nets with Sublinear Memory Cost"; JAX docs, "Gradient
checkpointing with jax.checkpoint"): the backward pass recomputes a block's
activations from its input instead of keeping them, except those the policy
saves.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from tokjax.models import kv_cache
from tokjax.models.attention import Attention, decode_attention
from tokjax.models.layers import Mlp, RMSNorm
from tokjax.sharding import constrain

if TYPE_CHECKING:
  from tokjax.models.transformer import TransformerConfig

LAYERS = "layers"  # Logical name of the stacked-layer axis (scan_layers).
EMBED_AXES = ("batch", "activation_length", "activation_embed")  # The residual stream.
_LAYER_METADATA = {nnx.PARTITION_NAME: LAYERS}

# `TransformerConfig.remat` -> the `jax.checkpoint_policies` policy it names.
# 'none' runs no jax.checkpoint at all; 'full' saves only each block's input
# (the policy `nothing_saveable`). 'dots_saveable' also keeps every matmul
# output (the attention scores included) and recomputes only the elementwise
# work; 'dots_with_no_batch_dims_saveable' keeps the projections' and MLP's
# 2-D matmuls but recomputes attention (its einsums have batch dimensions).
# Measured on XLA:CPU (benchmarks/compile_time.py): only scanned layers turn
# these into less memory; with unrolled layers XLA runs the recomputation
# during the forward pass, so the step's temp bytes stay those of 'none'.
REMAT_POLICIES = {
    "none": None,
    "full": "nothing_saveable",
    "nothing_saveable": "nothing_saveable",
    "dots_saveable": "dots_saveable",
    "dots_with_no_batch_dims_saveable": "dots_with_no_batch_dims_saveable",
}


class Block(nnx.Module):
  """One pre-norm transformer block."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(config.d_model, rngs=rngs)
    self.attn = Attention(config.d_model, config.num_heads, rngs=rngs,
                          implementation=config.attention_impl)
    self.mlp_norm = RMSNorm(config.d_model, rngs=rngs)
    self.mlp = Mlp(config.d_model, config.d_ff, rngs=rngs)

  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], mask: jax.Array,
               is_causal: bool = False) -> jax.Array:
    """x: float[batch, seq_len, embed] -> same; rope from `rope_tables`, mask and
    is_causal as in `Attention.attend`."""
    q, k, v = self.attn.qkv(self.attn_norm(x), rope)
    x = x + self.attn.attend(q, k, v, mask, is_causal)
    return constrain(x + self.mlp(self.mlp_norm(x)), EMBED_AXES)

  def decode_kernels(self) -> tuple[jax.Array, jax.Array]:
    """This block's weights in the layouts that a matrix-vector product reads
    fastest: (`Attention.fused_qkv_kernel`, `Mlp.transposed_w_out`), each with
    a leading layers axis when the blocks are stacked.

    Decoding one token of one row, every matmul is a matrix-vector product
    bound by reading the weights. On XLA:CPU one q/k/v kernel reads faster
    than three, and w_out faster as [embed, mlp]: generation at batch 1 ran
    25-28% faster with both (docs/decoding.md). With more rows the stored
    layouts are the faster. XLA computes these once, outside a sampler's
    decode loop, whose weights do not change (tests/test_model.py checks the
    compiled loop).
    """
    return self.attn.fused_qkv_kernel(), self.mlp.transposed_w_out()

  def decode(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], cache_k: jax.Array,
             cache_v: jax.Array, mask: jax.Array, slot: jax.Array,
             kernels: tuple[jax.Array, jax.Array] | None = None, layer: jax.Array | None = None,
             sink_rope: tuple[int, tuple[jax.Array, jax.Array]] | None = None,
             read_blocks: jax.Array | None = None):
    """Block step that writes the new keys/values into this layer's KV cache.

    Args:
      x: float[batch, q_len, embed] hidden states of the new tokens.
      rope: `rope_tables` of the new tokens' positions.
      cache_k, cache_v: this layer's cache, key blocks float[batch, heads,
        kv, block_len] and value blocks float[batch, heads, block_len, kv];
        or, with `layer`, every layer's, each with a leading [layers] axis
        (`kv_cache`).
      mask: bool[batch, 1, q_len, cache_len] the slots each new token sees
        (after its own keys are written).
      slot: int32[] the new tokens go to slots slot .. slot + q_len - 1.
      kernels: this block's `decode_kernels()`, or None: the weights as stored.
      layer: int32[] this block's index into a stacked cache, or None.
      sink_rope: (n, rope tables [batch, n, 1, 2, kv/2]) or None: the first n
        slots' keys are read rotated by these further angles (attention
        sinks at their positions within a rolling cache).
      read_blocks: bool[num_blocks] the cache blocks to read, or None: all
        (`attention.decode_attention`).

    Returns:
      (x, cache_k, cache_v) with x float[batch, q_len, embed] and the caches
      as given, the new tokens' slots written.
    """
    qkv_kernel, w_out_t = (None, None) if kernels is None else kernels
    q, k, v = self.attn.qkv(self.attn_norm(x), rope, qkv_kernel)
    out = decode_attention(q, k, v, cache_k, cache_v, mask, slot, sink_rope, layer, read_blocks)
    # XLA updates a loop-carried cache in place only if the write provably
    # follows every read of the old cache in the step, and it orders them by
    # data dependencies (an optimization_barrier does not order them for its
    # copy insertion). out depends on both reads, so the written k and v are
    # made to depend on it; exactly k and v unless out is NaN.
    k, v = (jnp.where(jnp.isnan(out), out, new) for new in (k, v))
    cache_k, cache_v = kv_cache.write(cache_k, cache_v, k, v, slot, layer)
    x = x + self.attn.project_out(out)
    return x + self.mlp(self.mlp_norm(x), w_out_t), cache_k, cache_v


def make_blocks(config: TransformerConfig, rngs: nnx.Rngs) -> nnx.List | Block:
  """config.num_layers blocks: an `nnx.List`, or with config.scan_layers one
  `Block` whose parameters are stacked, float[layers, *shape], their logical
  axes (LAYERS, *axes) (`nnx.vmap`'s transform_metadata)."""
  if not config.scan_layers:
    return nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])

  @nnx.split_rngs(splits=config.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYER_METADATA)
  def stacked(rngs):
    return Block(config, rngs=rngs)

  return stacked(rngs)


def remat_policy(name: str):
  """The `jax.checkpoint_policies` policy that `TransformerConfig.remat` names
  (any name but 'none'), made to see through custom VJPs.

  Every matmul of the model is a `layers.mixed_einsum`: a dot_general behind a
  custom VJP, which JAX's dot policies, matching the bare dot_general
  primitive, would never save ('dots_saveable' would act as 'full'). So a
  custom-VJP call whose body ends in its one dot (after the cast of its
  weight, in a low precision) is judged as that dot.
  """
  policy = getattr(jax.checkpoint_policies, REMAT_POLICIES[name])

  def see_through_custom_vjp(prim, *args, **params):
    if prim.name == "custom_vjp_call":
      body = params["call_jaxpr"].jaxpr.eqns
      if [e.primitive.name for e in body[:-1]] in ([], ["convert_element_type"]):
        return policy(body[-1].primitive, *args, **body[-1].params)
    return policy(prim, *args, **params)

  return see_through_custom_vjp


def run_blocks(blocks: nnx.List | Block, x: jax.Array, rope: tuple[jax.Array, jax.Array],
               mask: jax.Array, config: TransformerConfig, is_causal: bool = False) -> jax.Array:
  """Applies the stack from `make_blocks` to x: float[batch, seq_len, embed] -> same.

  Each block is wrapped in `nnx.remat` with `config.remat`'s policy unless it
  is 'none'; with config.scan_layers the blocks run in one `nnx.scan`.
  is_causal promises that `mask` is the causal mask (`Attention.attend`).
  """

  def block_fn(block, x, rope, mask):
    return block(x, rope, mask, is_causal)

  if config.remat != "none":
    # In a scan the loop itself keeps XLA from merging the recomputation back
    # into the forward pass, so CSE may stay on there (jax.checkpoint's docs).
    block_fn = nnx.remat(block_fn, policy=remat_policy(config.remat), graph=False,
                         prevent_cse=not config.scan_layers)
  if not config.scan_layers:
    for block in blocks:
      x = block_fn(block, x, rope, mask)
    return x
  scan = nnx.scan(block_fn, in_axes=(0, nnx.Carry, None, None), out_axes=nnx.Carry, graph=False)
  return scan(blocks, x, rope, mask)


def decode_blocks(blocks: nnx.List | Block, x: jax.Array, rope: tuple[jax.Array, jax.Array],
                  cache: dict, mask: jax.Array, slot: jax.Array, config: TransformerConfig,
                  sink_rope=None, read_blocks=None) -> tuple[jax.Array, dict]:
  """`Block.decode` through the stack: x float[batch, q_len, embed] -> (x, cache).

  `cache` is `kv_cache.init_cache`'s: each layer's blocks, written in place;
  or, with config.scan_layers, blocks stacked over layers, carried through
  the scan and written in place at each block's layer.

  One token of one row (x of shape [1, 1, embed]) runs on the weights in
  `Block.decode_kernels`' layouts, built before the layers (and outside their
  scan); more rows run on the weights as stored, the faster there (batch 4,
  8 x 512: 15% slower generation with the transposed w_out).
  """
  one_row = x.shape[0] * x.shape[1] == 1
  if not config.scan_layers:
    new_k, new_v = [], []
    for block, cache_k, cache_v in zip(blocks, cache["k"], cache["v"]):
      kernels = block.decode_kernels() if one_row else None
      x, cache_k, cache_v = block.decode(x, rope, cache_k, cache_v, mask, slot, kernels,
                                         sink_rope=sink_rope, read_blocks=read_blocks)
      new_k.append(cache_k)
      new_v.append(cache_v)
    return x, {"k": tuple(new_k), "v": tuple(new_v)}

  def block_fn(carry, block, kernels, layer):
    x, cache_k, cache_v = carry
    return block.decode(x, rope, cache_k, cache_v, mask, slot, kernels, layer, sink_rope,
                        read_blocks)

  kernels = blocks.decode_kernels() if one_row else None
  scan = nnx.scan(block_fn, in_axes=(nnx.Carry, 0, 0 if one_row else None, 0),
                  out_axes=nnx.Carry, graph=False)
  x, cache_k, cache_v = scan((x, cache["k"], cache["v"]), blocks, kernels,
                             jnp.arange(config.num_layers, dtype=jnp.int32))
  return x, {"k": cache_k, "v": cache_v}
