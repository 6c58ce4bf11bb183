"""A shared trunk with n output heads for multi-token prediction.

"Better & Faster Large Language Models via Multi-token Prediction" (Gloeckle
et al. 2024, Sec. 2): a shared trunk f_s maps x_{<=t} to a latent z_t, n
independent heads f_h_k map z_t to a prediction of token t+k, and all heads
share one unembedding f_u:

  P(x_{t+k} | x_{<=t}) = softmax(f_u(f_h_k(z_t))),  k = 1..n.

Here the trunk is the backbone `Transformer`, and head 1 is its own final
RMSNorm plus output matrix, so `__call__` and `decode` are exactly the
backbone's next-token model. Heads k = 2..n are a cheaper choice than the
paper's one transformer layer per head: a pre-norm residual MLP on the trunk's
last hidden state z_t (before `final_norm`), then the head's own RMSNorm and
the trunk's output matrix (shared, as in the paper's f_u):

  u_k = z_t + Mlp_k(RMSNorm_k(z_t));  logits_k = RMSNorm'_k(u_k) @ W_head.

Being position-wise, an extra head needs no attention and no KV cache, so the
heads can serve as self-drafters for speculative decoding (Sec. 3.2): after the
trunk reads the last accepted token at position t, `draft_logits(z_t)` proposes
tokens t+2..t+n at the cost of n-1 MLPs, and the trunk verifies them in one
`decode` call; `decode_drafts` returns both from the KV-cache path.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tokjax.models.layers import Mlp, RMSNorm
from tokjax.models.transformer import Transformer, TransformerConfig, cast_params


class ExtraHead(nnx.Module):
  """One extra head f_h_k: pre-norm residual MLP, then its own RMSNorm.

  Parameters: RMSNorm scales ('embed',), Mlp ('embed', 'mlp') and ('mlp', 'embed').
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.mlp_norm = RMSNorm(config.d_model, rngs=rngs)
    self.mlp = Mlp(config.d_model, config.d_ff, rngs=rngs)
    self.out_norm = RMSNorm(config.d_model, rngs=rngs)

  def __call__(self, hidden: jax.Array, unembed: jax.Array) -> jax.Array:
    """hidden: float[batch, seq_len, embed]; unembed: float32[embed, vocab].

    Returns float32[batch, seq_len, vocab] logits.
    """
    x = self.out_norm(hidden + self.mlp(self.mlp_norm(hidden)))
    return jnp.einsum("bld,dv->blv", x, unembed.astype(x.dtype),
                      preferred_element_type=jnp.float32)


class MultiTokenModel(nnx.Module):
  """The backbone trunk plus n - 1 extra heads (head k predicts token t+k).

  Attributes:
    config: the trunk's `TransformerConfig` (so `samplers.model_fns` accepts
      this model as it does a `Transformer`).
    trunk: the backbone; its own head is head 1.
    extra_heads: heads 2..n.

  Raises:
    ValueError: num_heads < 2 (n = 1 is the plain causal backbone).
  """

  def __init__(self, config: TransformerConfig, num_heads: int, *, rngs: nnx.Rngs):
    if num_heads < 2:
      raise ValueError(
          f"MultiTokenModel needs num_heads >= 2, got {num_heads}; for next-token "
          "prediction only use the backbone (objective=causal)."
      )
    self.config = config
    self.trunk = Transformer(config, rngs=rngs)
    self.extra_heads = nnx.List([ExtraHead(config, rngs=rngs) for _ in range(num_heads - 1)])
    cast_params(self.extra_heads, config.param_dtype)

  @property
  def num_heads(self) -> int:
    """n, the number of predicted future tokens (head 1 included)."""
    return len(self.extra_heads) + 1

  def __call__(self, tokens, *, attention="causal", prefix_len=None, time=None, positions=None):
    """Next-token logits float32[batch, seq_len, vocab]: the trunk's, see `Transformer.__call__`."""
    return self.trunk(tokens, attention=attention, prefix_len=prefix_len, time=time,
                      positions=positions)

  def all_heads(self, tokens, *, attention="causal", prefix_len=None, time=None, positions=None):
    """Every head's logits from one trunk pass (arguments as `Transformer.__call__`).

    Returns:
      float32[n, batch, seq_len, vocab]; [k - 1, :, t] predicts token t + k.
      Holds n logit tensors at once: mind the memory for large vocabularies.

    Raises:
      ValueError: as `Transformer.__call__`.
    """
    hidden = self.trunk.hidden(tokens, attention=attention, prefix_len=prefix_len, time=time,
                               positions=positions)
    next_token = self.trunk.logits_from_hidden(hidden)  # Head 1: the trunk's final_norm and head.
    return jnp.concatenate([next_token[None], self.draft_logits(hidden)])

  def draft_logits(self, hidden: jax.Array) -> jax.Array:
    """Heads 2..n on trunk states `hidden` float[batch, seq_len, embed] (`Transformer.hidden`).

    Returns float32[n - 1, batch, seq_len, vocab]; [k - 2, :, t] predicts token t + k.
    """
    unembed = self.trunk.head[...]
    return jnp.stack([head(hidden, unembed) for head in self.extra_heads])

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    """The trunk's empty KV cache; see `Transformer.init_cache`."""
    return self.trunk.init_cache(batch_size, max_len)

  def decode(self, tokens, positions, cache, prefix_len=None, **kwargs):
    """Head 1's KV-cache forward, exactly the trunk's; see `Transformer.decode`."""
    return self.trunk.decode(tokens, positions, cache, prefix_len, **kwargs)

  def decode_drafts(self, tokens, positions, cache, prefix_len=None, **kwargs):
    """`decode` plus every extra head's logits at the same positions.

    Returns:
      (logits float32[batch, q_len, vocab] of head 1, drafts float32[n - 1,
      batch, q_len, vocab] where [k - 2, :, i] predicts the token k places
      after tokens[:, i], updated cache). Arguments and errors as `Transformer.decode`.
    """
    hidden, cache = self.trunk.decode_hidden(tokens, positions, cache, prefix_len, **kwargs)
    return self.trunk.logits_from_hidden(hidden), self.draft_logits(hidden), cache
