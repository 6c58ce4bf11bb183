"""Prefix LM: bidirectional attention over a random prefix, causal LM on the rest.

"What Language Model Architecture and Pretraining Objective Work Best for
Zero-Shot Generalization?" (Wang et al., 2022), Sec. 3.1 (non-causal decoder,
"prefix language modeling"): each sequence is split at a uniformly random point
P; tokens x_{<P} attend to each other bidirectionally and the loss is the
next-token NLL of x_{>=P}, an exact conditional likelihood log p(x_{>=P} | x_{<P}).
Evaluation reports it as `exact_conditional`: the nats of the suffix given a
random prefix, not a full-sequence NLL, so never in a column with `causal`'s.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.objectives.base import ModelInputs, Objective, SamplingSpec, Targets


@dataclasses.dataclass(frozen=True)
class PrefixLM(Objective):
  """Prefix LM (see module docstring); P ~ U{1, ..., seq_len - 1} per sequence."""

  name: str = dataclasses.field(default="prefix_lm", init=False)
  attention: str = dataclasses.field(default="prefix", init=False)
  likelihood_kind: str = dataclasses.field(default="exact_conditional", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=("ar",), init=False)

  def sampling_spec(self) -> SamplingSpec:
    """The prompt is the bidirectional prefix; generation continues causally."""
    return SamplingSpec(prefix_attention=True)

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    batch, length = tokens.shape
    prefix_len = jax.random.randint(rng, (batch,), 1, length, dtype=jnp.int32)
    targets = jnp.roll(tokens, -1, axis=1)
    # Position n predicts n + 1, which must lie outside the prefix: n >= P - 1.
    positions = jnp.arange(length, dtype=jnp.int32)[None, :]
    scored = (positions >= prefix_len[:, None] - 1) & (positions < length - 1)
    weights = (scored & (targets != self.pad_id)).astype(jnp.float32)
    return ModelInputs(tokens, prefix_len=prefix_len), Targets(targets, weights, weights)
