"""Multi-token prediction: n heads on a shared trunk predict tokens t+1..t+n.

"Better & Faster Large Language Models via Multi-token Prediction" (Gloeckle
et al. 2024, Sec. 2). The training loss is a weighted mean of the heads'
cross-entropies,

  L = sum_k w_k CE_k / sum_k w_k,  CE_k = mean over t of -log P_k(x_{t+k} | x_{<=t}),

where CE_k averages over the positions t whose token t+k exists in the window
and is not PAD (the paper's weights are uniform, w_k = 1). Evaluation and
sampling use head 1 only, so the likelihood is the exact next-token NLL, the
same figure as `Causal` on the trunk.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from tokjax.models import TransformerConfig
from tokjax.models.multi_token import MultiTokenModel
from tokjax.objectives.base import CAUSAL_LM_SAMPLERS, ModelInputs, Objective, Targets


@dataclasses.dataclass(frozen=True)
class MultiToken(Objective):
  """Next-n-token prediction with a `MultiTokenModel`.

  Attributes:
    num_predict: n >= 2, the number of heads (future tokens per position).
    head_weights: n non-negative loss weights w_k with a positive sum, or
      None for uniform weights (`--config.multi_token.head_weights='(1, 0.5)'`).

  Raises:
    ValueError: num_predict < 2, or head_weights of the wrong length, negative,
      non-finite or summing to 0.
  """

  num_predict: int = 4
  head_weights: tuple[float, ...] | None = None

  name: str = dataclasses.field(default="multi_token", init=False)
  attention: str = dataclasses.field(default="causal", init=False)
  likelihood_kind: str = dataclasses.field(default="exact", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=CAUSAL_LM_SAMPLERS, init=False)

  def __post_init__(self):
    if self.num_predict < 2:
      raise ValueError(
          f"multi_token.num_predict must be >= 2, got {self.num_predict}; "
          "for next-token prediction only use objective=causal."
      )
    weights = self.weights
    if len(weights) != self.num_predict:
      raise ValueError(
          f"multi_token.head_weights has {len(weights)} entries but num_predict="
          f"{self.num_predict}; give one weight per head, or None for uniform weights."
      )
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
      raise ValueError(
          f"multi_token.head_weights={weights} must be finite, >= 0 and sum to > 0."
      )

  @property
  def weights(self) -> tuple[float, ...]:
    """The n head weights w_k, uniform when `head_weights` is None."""
    return (1.0,) * self.num_predict if self.head_weights is None else tuple(self.head_weights)

  def build_model(self, model_config: TransformerConfig, rngs) -> MultiTokenModel:
    return MultiTokenModel(model_config, self.num_predict, rngs=rngs)

  def head_targets(self, tokens: jax.Array, k: int) -> Targets:
    """Head k's targets: token t+k at position t, unscored past the window end or on PAD.

    tokens: int32[batch, seq_len]; k >= 1. Returns `Targets` of [batch, seq_len].
    """
    targets = jnp.roll(tokens, -k, axis=1)
    in_window = jnp.arange(tokens.shape[1]) < tokens.shape[1] - k
    valid = ((targets != self.pad_id) & in_window).astype(jnp.float32)
    return Targets(targets, valid, valid)

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    """Head 1 (next-token) targets, as `Causal`; scored by `likelihood`."""
    del rng  # Deterministic.
    return ModelInputs(tokens), self.head_targets(tokens, 1)

  def loss(self, model: MultiTokenModel, tokens: jax.Array, rng: jax.Array):
    """The weighted mean of the heads' mean CEs (nats per token), and metrics.

    Metrics: loss, loss_head_k (CE_k) for k = 1..n, and tokens (head 1's scored tokens).

    Raises:
      ValueError: `model` has a number of heads other than num_predict.
    """
    del rng  # Deterministic.
    logits = model.all_heads(tokens, attention=self.attention)
    if logits.shape[0] != self.num_predict:
      raise ValueError(
          f"The model has {logits.shape[0]} heads but multi_token.num_predict="
          f"{self.num_predict}; build it with `build_model`."
      )
    targets = [self.head_targets(tokens, k) for k in range(1, self.num_predict + 1)]
    ces = [self.token_nats(head_logits, t).sum() / jnp.maximum(t.valid.sum(), 1.0)
           for head_logits, t in zip(logits, targets)]
    loss = sum(w * ce for w, ce in zip(self.weights, ces)) / sum(self.weights)
    metrics = {f"loss_head_{k}": ce for k, ce in enumerate(ces, start=1)}
    return loss, dict(metrics, loss=loss, tokens=targets[0].valid.sum())
