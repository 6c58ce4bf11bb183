"""The shared backbone: a pre-norm decoder-style transformer with RoPE.

One network serves every objective; only the attention mode and the optional
diffusion-time input change. Layout per block (pre-norm, Xiong et al. 2020):

  x = x + Attention(RMSNorm(x));  x = x + Mlp(RMSNorm(x))

followed by a final RMSNorm and an untied output head. No dropout. Parameters
are stored in `config.param_dtype` (float32 by default; with bfloat16 the
optimizer state follows them), activations run in `config.dtype`, logits are
float32. The blocks are a list, or with `config.scan_layers` one stacked
block run by `nnx.scan` (see `block.py`, which also rematerialises them).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tokjax.models import kv_cache
from tokjax.models.attention import ATTENTION_IMPLS, attention_mask, cache_mask, rope_tables
from tokjax.models.block import REMAT_POLICIES, decode_blocks, make_blocks, run_blocks
from tokjax.models.kv_cache import init_cache
from tokjax.models.layers import RMSNorm, TimeEmbedding, dense, fan_in_init, param
from tokjax.sharding import constrain

DTYPES = ("float32", "bfloat16")
# Fields the experiment derives (from the tokenizer, seq_len and the
# objective) rather than the user's `config.model` section.
FROM_EXPERIMENT = ("vocab_size", "max_seq_len", "time_conditioning")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Backbone hyper-parameters.

  Attributes:
    vocab_size: number of token ids V, including any MASK / special ids.
    num_layers: number of transformer blocks.
    d_model: residual width; must be divisible by num_heads.
    num_heads: attention heads; head_dim = d_model / num_heads must be even (RoPE).
    d_ff: hidden width of the MLP and of the time-embedding MLP.
    max_seq_len: longest sequence (and KV cache) the model accepts.
    time_conditioning: whether `__call__` takes a diffusion time t in [0, 1].
    dtype: compute (activation) dtype, 'float32' or 'bfloat16'.
    param_dtype: parameter dtype, 'float32' or 'bfloat16'; the optimizer
      state (AdamW moments) takes the parameters' dtype.
    rope_base: RoPE wavelength base.
    attention_impl: the attention kernel, one of `attention.ATTENTION_IMPLS`
      ('auto': ours on CPU, JAX's choice, e.g. cuDNN flash attention, on GPU).
    scan_layers: stack the blocks' parameters along a leading [layers] axis
      (logical name 'layers') and run them with `nnx.scan`: compile time stays
      flat in num_layers. The KV cache is then stacked too (`init_cache`).
    remat: per-block rematerialisation, a key of `block.REMAT_POLICIES`:
      'none', 'full' (= 'nothing_saveable'), 'dots_saveable' or
      'dots_with_no_batch_dims_saveable' (`jax.checkpoint_policies`).
    kv_block_len: slots per KV-cache block (`kv_cache`); decoding reads only
      the blocks that hold visible slots. 0: chosen per cache from its batch
      size: at least `kv_cache.AUTO_BLOCK_SLOTS` slots and
      `kv_cache.AUTO_BLOCK_BYTES` of a layer's keys (`kv_cache.block_len`).

  Raises:
    ValueError: on an inconsistent setting, naming the fix.
  """

  vocab_size: int
  num_layers: int = 6
  d_model: int = 256
  num_heads: int = 4
  d_ff: int = 1024
  max_seq_len: int = 256
  time_conditioning: bool = False
  dtype: str = "float32"
  rope_base: float = 10000.0
  attention_impl: str = "auto"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat: str = "none"
  kv_block_len: int = 0

  @classmethod
  def config_section(cls) -> dict:
    """{field: default} of the user's settings, the section `config.model` of
    `tokjax.config.base_config` (every field but `FROM_EXPERIMENT`)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in FROM_EXPERIMENT}

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "d_ff", "max_seq_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}.")
    if self.kv_block_len < 0:
      raise ValueError(f"TransformerConfig.kv_block_len must be >= 0 (0: chosen from the "
                       f"batch), got {self.kv_block_len}.")
    if self.d_model % self.num_heads:
      raise ValueError(
          f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
          "pick num_heads dividing d_model."
      )
    if self.head_dim % 2:
      raise ValueError(
          f"head_dim = d_model / num_heads = {self.head_dim} must be even for RoPE; "
          "change d_model or num_heads."
      )
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"Unknown attention_impl {self.attention_impl!r}; use one of "
                       f"{ATTENTION_IMPLS}.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"Unknown {name} {getattr(self, name)!r}; use one of {DTYPES}.")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"Unknown remat {self.remat!r}; use one of {tuple(REMAT_POLICIES)} "
                       "(see jax.checkpoint_policies).")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


class Transformer(nnx.Module):
  """Token ids -> float32 logits over the vocabulary.

  Crosses `jax.jit` as `(graphdef, state)`: `graphdef, state = nnx.split(model)`,
  then `nnx.merge(graphdef, state)(tokens)` inside the jitted function.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = param(
        rngs, jax.nn.initializers.normal(1.0), (config.vocab_size, config.d_model),
        ("vocab", "embed"),
    )
    self.time_embed = (
        TimeEmbedding(config.d_model, config.d_ff, rngs=rngs) if config.time_conditioning else None
    )
    self.blocks = make_blocks(config, rngs)
    self.final_norm = RMSNorm(config.d_model, rngs=rngs)
    self.head = param(
        rngs, fan_in_init(0, 1), (config.d_model, config.vocab_size), ("embed", "vocab")
    )
    cast_params(self, config.param_dtype)

  def __call__(self, tokens, *, attention="causal", prefix_len=None, time=None, positions=None):
    """Full-sequence forward pass.

    Args:
      tokens: int32[batch, seq_len] ids in [0, vocab_size); seq_len <= max_seq_len.
        Out-of-range ids raise when tokens are concrete; under jit, ids >=
        vocab_size give NaN logits and negative ids wrap around as in NumPy.
      attention: 'causal' | 'bidirectional' | 'prefix' (see `attention_mask`).
        Masks follow the index order of `tokens`, not `positions`.
      prefix_len: int32[batch], only with attention='prefix'.
      time: float32[batch] diffusion time in [0, 1]; required iff
        config.time_conditioning.
      positions: int32[batch, seq_len] RoPE positions; default 0..seq_len-1.

    Returns:
      float32[batch, seq_len, vocab_size] logits.

    Raises:
      ValueError: seq_len > max_seq_len, bad token ids, an unknown attention
        mode, or time given without time_conditioning (or missing with it).
    """
    return self.logits_from_hidden(self.hidden(
        tokens, attention=attention, prefix_len=prefix_len, time=time, positions=positions))

  def hidden(self, tokens, *, attention="causal", prefix_len=None, time=None, positions=None):
    """The last block's output, before `final_norm` and the head (arguments as `__call__`).

    Returns:
      float[batch, seq_len, embed] in config.dtype.

    Raises:
      ValueError: as `__call__`.
    """
    batch, seq_len = self._check_tokens(tokens)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
    mask = attention_mask(attention, seq_len, prefix_len)
    rope = rope_tables(positions, self.config.head_dim, self.config.rope_base)
    return run_blocks(self.blocks, self._embed(tokens, time), rope, mask, self.config,
                      is_causal=attention == "causal")

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    """An empty KV cache for `decode`; see `kv_cache.init_cache`."""
    return init_cache(self.config, batch_size, max_len)

  def decode(self, tokens, positions, cache, prefix_len=None, *, write_at=None, kv_mask=None,
             sink_shift=None, filled_len=None):
    """KV-cache forward: the logits of `tokens` given everything cached.

    By default (slot == position) q_len = prompt length is a batched
    prefill and q_len = 1 is one step; both match `__call__(...,
    attention='causal')` on the full sequence, or with prefix_len
    `__call__(..., attention='prefix', prefix_len=prefix_len)`. The keyword
    arguments let a sampler place tokens elsewhere: left-padded prompts of
    different lengths, a tree of draft tokens, a rolling cache.

    Args:
      tokens: int32[batch, q_len] new tokens.
      positions: int32[batch, q_len] their RoPE positions (any per row).
      cache: from `init_cache` (`kv_cache`).
      prefix_len: int32[batch] or None: slots below it are visible to every
        query (ignored with kv_mask).
      write_at: int32[] the first slot the new tokens' keys and values go
        to (consecutive slots), or int32[batch] one per row (a scatter);
        default positions[0, 0].
      kv_mask: bool[batch, q_len, cache_len] the slots each new token sees,
        its own included; default `attention.cache_mask(positions, ...)`
        (slot s visible iff s <= position).
      sink_shift: (n, int32[batch]) or None: the first n slots' keys are
        read as if rotated by that many more positions (StreamingLLM's
        attention sinks at their positions within a rolling cache: Xiao et
        al. 2024, "Efficient Streaming Language Models with Attention
        Sinks", Sec. 3.2).
      filled_len: int32[] or None: slots at or past it are hidden from every
        query and never read. A sampler that knows where the cache's filled
        slots end passes it; without it, decode attention reads the blocks
        (`kv_cache`) holding a slot that the mask shows, found by a
        reduction over the batch, which costs a cross-device exchange per
        step when the rows are sharded over devices.

    Returns:
      (float32[batch, q_len, vocab_size] logits, updated cache).

    Raises:
      ValueError: q_len longer than the cache, or a time-conditioned model.
    """
    hidden, cache = self.decode_hidden(tokens, positions, cache, prefix_len, write_at=write_at,
                                       kv_mask=kv_mask, sink_shift=sink_shift,
                                       filled_len=filled_len)
    return self.logits_from_hidden(hidden), cache

  def decode_hidden(self, tokens, positions, cache, prefix_len=None, *, write_at=None,
                    kv_mask=None, sink_shift=None, filled_len=None):
    """`decode` up to the last block: (float[batch, q_len, embed] hidden
    states before `final_norm`, updated cache). Arguments and errors as `decode`."""
    if self.config.time_conditioning:
      raise ValueError("decode() has no time input; use a model with time_conditioning=False.")
    _, q_len = self._check_tokens(tokens)
    length = kv_cache.cache_len(cache)
    if q_len > length:
      raise ValueError(f"q_len={q_len} exceeds the cache length {length}.")
    if kv_mask is None:
      mask = cache_mask(positions, length, prefix_len)
    else:
      mask = kv_mask[:, None]
    if filled_len is None:
      read_blocks = kv_cache.blocks_seen(mask, cache)
    else:
      filled = jnp.arange(length, dtype=jnp.int32) < filled_len
      mask = mask & filled
      read_blocks = kv_cache.blocks_seen(filled[None, None, None], cache)  # The same for all rows.
    slot = positions[0, 0] if write_at is None else write_at
    rope = rope_tables(positions, self.config.head_dim, self.config.rope_base)
    sink_rope = None
    if sink_shift is not None:
      n, shift = sink_shift
      shift = jnp.broadcast_to(jnp.asarray(shift, jnp.int32)[:, None], (tokens.shape[0], n))
      sink_rope = (n, rope_tables(shift, self.config.head_dim, self.config.rope_base))
    return decode_blocks(self.blocks, self._embed(tokens, None), rope, cache, mask, slot,
                         self.config, sink_rope, read_blocks)

  def _check_tokens(self, tokens) -> tuple[int, int]:
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be int32[batch, seq_len], got shape {tokens.shape}.")
    seq_len = tokens.shape[1]
    if seq_len > self.config.max_seq_len:
      raise ValueError(
          f"Sequence length {seq_len} > max_seq_len={self.config.max_seq_len}; "
          "shorten the input or raise TransformerConfig.max_seq_len."
      )
    if not isinstance(tokens, jax.core.Tracer) and tokens.size:
      host = np.asarray(tokens)  # concrete: check on the host, outside any trace
      low, high = int(host.min()), int(host.max())
      if low < 0 or high >= self.config.vocab_size:
        raise ValueError(
            f"Token ids span [{low}, {high}] but must lie in [0, {self.config.vocab_size}); "
            "check the tokenizer against TransformerConfig.vocab_size."
        )
    return tokens.shape

  def _embed(self, tokens, time) -> jax.Array:
    """Token embeddings (+ time embedding) in the compute dtype."""
    if (time is not None) != self.config.time_conditioning:
      raise ValueError(
          "Pass time (float32[batch]) exactly when TransformerConfig.time_conditioning=True "
          f"(it is {self.config.time_conditioning})."
      )
    x = jnp.take(self.embed[...], tokens, axis=0)
    if time is not None:
      x = x + self.time_embed(jnp.asarray(time, jnp.float32))[:, None, :]
    return x.astype(self.config.dtype)

  def logits_from_hidden(self, x) -> jax.Array:
    """float[batch, seq_len, embed] block output -> float32[batch, seq_len, vocab] logits."""
    logits = dense(self.final_norm(x), self.head[...], out_dtype=jnp.float32)
    return constrain(logits, ("batch", "activation_length", "activation_vocab"))


def cast_params(module: nnx.Module, dtype: str) -> None:
  """Casts every `nnx.Param` of `module` to `dtype` in place (`layers.param`
  creates float32 parameters); parameters already in `dtype` are kept."""
  params = nnx.state(module, nnx.Param)
  nnx.update(module, jax.tree.map(lambda p: p if p.dtype == dtype else p.astype(dtype), params))
