"""Causal language modelling: next-token prediction with an exact NLL."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.objectives.base import (
    CAUSAL_LM_SAMPLERS, ModelInputs, Objective, SamplingSpec, Targets, forbid_ids, from_tokenizer)


def next_token(tokens: jax.Array, pad_id: int) -> tuple[ModelInputs, Targets]:
  """Plain left-to-right LM on int32[batch, seq_len]: position n predicts token n+1.

  The last position of each window and PAD targets are unscored, so the summed
  nats are the exact NLL of each window's tokens after its first.
  """
  targets = jnp.roll(tokens, -1, axis=1)
  valid = (targets != pad_id).at[:, -1].set(False).astype(jnp.float32)
  return ModelInputs(tokens), Targets(targets, valid, valid)


class PlainOrderEvaluation:
  """Mixin for objectives that train a left-to-right model on rearranged text (FIM, CM3).

  Evaluation scores the text in its plain left-to-right order, so the figure is
  the exact NLL of the text, comparable with `causal` and independent of the
  corruption settings.
  """

  def corrupt_eval(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    del rng  # Deterministic.
    return next_token(tokens, self.pad_id)


@dataclasses.dataclass(frozen=True)
class Causal(Objective):
  """Next-token prediction, log p(x) = sum_n log p(x_{n+1} | x_{<=n}).

  ("Language Models are Unsupervised Multitask Learners", Radford et al. 2019,
  Sec. 2.) Position n predicts token n+1 of the same window, so the last
  position of each window is unscored. PAD targets are unscored.

  Attributes:
    forbidden_ids: ids the model gives probability 0, in the loss and in the
      sampler (tokenizer.non_target_ids): none for text; every special for
      images, whose windows are BOS + pixels, so that the NLL is over pixel
      values alone (a uniform model scores exactly log2(levels) bits/dim).
  """

  forbidden_ids: tuple[int, ...] = from_tokenizer("non_target_ids", ())

  name: str = dataclasses.field(default="causal", init=False)
  attention: str = dataclasses.field(default="causal", init=False)
  likelihood_kind: str = dataclasses.field(default="exact", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=CAUSAL_LM_SAMPLERS, init=False)

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    del rng  # Deterministic.
    return next_token(tokens, self.pad_id)

  def mask_logits(self, logits: jax.Array) -> jax.Array:
    return forbid_ids(logits, *self.forbidden_ids) if self.forbidden_ids else logits

  def sampling_spec(self) -> SamplingSpec:
    return SamplingSpec(forbidden_ids=self.forbidden_ids)
