"""MEAP: mask-enhanced autoregressive prediction.

"Mask-Enhanced Autoregressive Prediction Aids Large Language Models in Key
Information Retrieval" (Zhuang et al., 2025), Sec. 3: a small random fraction
of the *input* tokens is replaced by MASK, and the decoder is trained with
ordinary next-token prediction of the clean sequence under causal attention.

Evaluation scores the clean, unmasked sequence, so the reported figure is the
exact causal NLL, comparable with `causal`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax import masking
from tokjax.objectives.base import ModelInputs, Targets, from_tokenizer
from tokjax.objectives.causal import Causal


@dataclasses.dataclass(frozen=True)
class MEAP(Causal):
  """Causal LM on inputs with `mask_ratio` of the tokens (never PAD) masked.

  Attributes:
    mask_id: the MASK token id (tokenizer.mask_id).
    mask_ratio: expected fraction of input tokens masked, in (0, 1).
  """

  mask_id: int = from_tokenizer("mask_id", -1)
  mask_ratio: float = 0.15

  name: str = dataclasses.field(default="meap", init=False)

  def __post_init__(self):
    masking.check_mask_ratio(self.mask_ratio)

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    inputs, targets = super().corrupt(tokens, rng)
    masked = masking.token_mask(rng, tokens, self.mask_ratio, pad_id=self.pad_id)
    return ModelInputs(jnp.where(masked, self.mask_id, inputs.tokens)), targets

  def corrupt_eval(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    return super().corrupt(tokens, rng)
