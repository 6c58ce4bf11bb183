"""The `Objective` interface: corrupt, run the backbone, score (docs/design.md).

An objective turns clean tokens into model inputs plus targets and per-token
loss weights (`corrupt`), and scores the backbone's logits (`token_nats`). The
trainer and the evaluator only call `loss` and `likelihood`, so they never
branch on the objective's name.

An objective is a frozen dataclass whose init fields are of two kinds: those
the tokenizer fixes (ids, counts; declared with `from_tokenizer`) and the
user's settings, every other init field. The settings' dataclass defaults are
the only place their defaults are written: `Objective.config_section` turns
them into the config section `config.<name>`, and `Objective.from_config`
reads them back.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import config_dict

from tokjax.models import Transformer, TransformerConfig
from tokjax.samplers.base import SamplingSpec
from tokjax.schedules import MaskingSchedule, get_schedule

ATTENTION_MODES = ("causal", "bidirectional", "prefix")
LIKELIHOOD_KINDS = (
    "exact", "exact_conditional", "elbo_upper_bound", "pseudo_likelihood", "none")


FROM_TOKENIZER = "from_tokenizer"  # The metadata key `from_tokenizer` sets.


def from_tokenizer(attribute: str = "", default: Any = dataclasses.MISSING) -> Any:
  """A dataclass field the tokenizer fixes (an id or a count), not a user setting.

  Args:
    attribute: the tokenizer attribute it copies (e.g. 'mask_id'), or '' when
      the class's `tokenizer_fields` computes it.
    default: its value when the class is built by hand (usually an invalid -1
      or () that `__post_init__` rejects).
  """
  return dataclasses.field(default=default, metadata={FROM_TOKENIZER: attribute})


def config_value(value: Any) -> Any:
  """A setting's default as a config stores it.

  A `MaskingSchedule` by name; None as a placeholder that takes any value, so
  that a flag such as `--config.multi_token.head_weights='(1, 0.5)'` can set it.
  """
  if value is None:
    return config_dict.placeholder(object)
  return value.name if isinstance(value, MaskingSchedule) else value


def setting_value(value: Any, default: Any) -> Any:
  """A config's value as the setting whose default is `default`: the inverse of `config_value`.

  A schedule name becomes a `MaskingSchedule` and a list a tuple.
  """
  if isinstance(default, MaskingSchedule):
    return get_schedule(value)
  return tuple(value) if isinstance(value, list) else value


def forbid_ids(logits: jax.Array, *ids: int) -> jax.Array:
  """Gives token `ids` probability 0: their logits become -inf."""
  return logits.at[..., jnp.asarray(ids)].set(-jnp.inf)


# The samplers that fit a causal LM whose prompt attends causally (causal,
# multi_token, fim, cm3 and meap models).
CAUSAL_LM_SAMPLERS = ("ar", "beam", "speculative")

@flax.struct.dataclass
class ModelInputs:
  """What the backbone sees.

  Attributes:
    tokens: int32[batch, seq_len] corrupted tokens.
    prefix_len: int32[batch] bidirectional prefix length ('prefix' attention).
    time: float32[batch] diffusion time t in (0, 1] (time-conditioned models).
  """

  tokens: jax.Array
  prefix_len: jax.Array | None = None
  time: jax.Array | None = None


@flax.struct.dataclass
class Targets:
  """What the loss scores.

  Attributes:
    targets: int32[batch, seq_len] the token each position must predict.
    weights: float32[batch, seq_len] loss weight per position (0 = no loss).
    valid: float32[batch, seq_len] 1 where the position counts as a scored
      token for per-token and per-byte normalisation.
  """

  targets: jax.Array
  weights: jax.Array
  valid: jax.Array


class MaskInfilling:
  """Mixin for objectives whose model fills MASK positions given both sides
  (md4, maskgit, mlm): hole i becomes hole_len[i] MASKs, filled in place."""

  def infill_prompt(self, pieces, hole_len):
    holes = [np.full(n, self.mask_id, np.int32) for n in hole_len]
    return np.concatenate([x for piece, hole in zip(pieces, holes) for x in (piece, hole)]
                          + [pieces[-1]]).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Objective:
  """Base class: subclasses set the class attributes and implement `corrupt`.

  Fields marked `from_tokenizer` come from the tokenizer (`tokenizer_fields`);
  every other init field is a setting, read from `config.<name>`.

  Attributes:
    pad_id: the PAD token id (tokenizer.pad_id); PAD positions are never scored.
    num_bytes: ids below this are bytes (tokenizer.num_bytes; bits-per-byte accounting).
    byte_lengths: bytes of text per id (tokenizer.byte_lengths, a tuple of
      vocab_size ints, e.g. a BPE's), or None when each id below num_bytes is one.
    name, attention, likelihood_kind: set by each subclass.
    samplers: the registered samplers that fit this objective; the first is
      its default, and () means none yet.
    eval_samples: draws per sequence when evaluating a stochastic figure.
    transformer_flops: whether MFU's transformer FLOPs count applies (class attribute).
  """

  pad_id: int = from_tokenizer("pad_id")
  num_bytes: int = from_tokenizer("num_bytes")
  byte_lengths: tuple[int, ...] | None = dataclasses.field(
      default=None, repr=False, metadata={FROM_TOKENIZER: "byte_lengths"})

  # Whether the model is the transformer over each window's tokens, so that
  # MFU's 6N + 12LdT FLOPs per token (tokjax.metrics) apply to the run.
  transformer_flops = True

  name: str = dataclasses.field(default="", init=False)
  attention: str = dataclasses.field(default="causal", init=False)
  likelihood_kind: str = dataclasses.field(default="exact", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=("ar",), init=False)
  eval_samples: int = dataclasses.field(default=1, init=False)

  @classmethod
  def extra_special_tokens(cls, config) -> tuple[str, ...]:
    """Named special tokens (e.g. sentinels) this objective adds to the tokenizer."""
    del config
    return ()

  @classmethod
  def setting_fields(cls) -> list[dataclasses.Field]:
    """The settings: the init fields not marked `from_tokenizer`."""
    return [f for f in dataclasses.fields(cls) if f.init and FROM_TOKENIZER not in f.metadata]

  @classmethod
  def config_section(cls) -> dict[str, Any]:
    """{setting: default}, the section `config.<name>` of `tokjax.config.base_config`.

    The defaults are the dataclass's own, as the config stores them (`config_value`).
    """
    return {f.name: config_value(f.default) for f in cls.setting_fields()}

  @classmethod
  def tokenizer_fields(cls, tokenizer, section) -> dict[str, Any]:
    """{field: value} of the `from_tokenizer` fields, for this tokenizer and config section.

    Here those that name a tokenizer attribute (the field's default where the
    tokenizer lacks it, e.g. image fields of a text tokenizer, which the
    objective's own checks then reject); subclasses add the others.
    """
    del section
    return {f.name: getattr(tokenizer, f.metadata[FROM_TOKENIZER], f.default)
            for f in dataclasses.fields(cls) if f.metadata.get(FROM_TOKENIZER)}

  @classmethod
  def from_config(cls, section, tokenizer) -> "Objective":
    """Builds the objective from its config section `config.<name>` and the tokenizer.

    A setting the section lacks (e.g. in a run saved before the setting
    existed) keeps its default.

    Raises:
      ValueError: a setting the objective's own checks reject.
    """
    settings = {f.name: setting_value(section[f.name], f.default)
                for f in cls.setting_fields() if f.name in section}
    return cls(**cls.tokenizer_fields(tokenizer, section), **settings)

  def eval_report(self, totals: dict) -> dict:
    """Extra report entries from the evaluation sums (e.g. accuracy, AUC)."""
    del totals
    return {}

  def build_model(self, model_config: TransformerConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The module this objective trains: by default the shared backbone."""
    return Transformer(model_config, rngs=rngs)

  def infill_prompt(self, pieces: list[np.ndarray],
                    hole_len: tuple[int, ...]) -> np.ndarray | None:
    """The prompt asking this objective's model to fill the holes between `pieces`.

    Args:
      pieces: the known text, int32[...] ids each; a hole lies between consecutive ones.
      hole_len: tokens per hole, one per hole (len(pieces) - 1 of them), for
        models that need the length up front.

    Returns:
      int32[prompt_len], or None when this objective's model cannot infill.
    """
    del pieces, hole_len
    return None

  def infill_result(self, pieces: list[np.ndarray], prompt: np.ndarray,
                    generated: np.ndarray) -> np.ndarray:
    """The filled sequence from one sampled row int32[length] of `infill_prompt`'s prompt."""
    del pieces, prompt
    return generated

  def pictures(self, model: Any, tokens: jax.Array, rng: jax.Array) -> dict[str, np.ndarray]:
    """Panels that show what the model does to the images in windows `tokens`,
    for an image objective without a sampler: {panel name: uint8[batch, rows,
    cols]}, e.g. MAE's 'original', 'masked' and 'reconstructed'. The base
    class has none; `tokjax.generation.write_pictures` draws them as a grid.
    """
    del model, tokens, rng
    return {}

  def pick_sampler(self, name: str = "") -> str:
    """`name` if it fits this objective, else (for '') the default; '' if there is none.

    Raises:
      ValueError: a sampler that does not fit, listing those that do.
    """
    if not name:
      return self.samplers[0] if self.samplers else ""
    if name not in self.samplers:
      raise ValueError(
          f"Sampler {name!r} does not fit objective {self.name!r}; samplers that do: "
          f"{', '.join(self.samplers) or 'none yet'}. Set --sampler.name (or "
          "--config.sampler.name) to one of them.")
    return name

  def sampling_spec(self) -> SamplingSpec:
    """What this objective's samplers need to know about it."""
    return SamplingSpec()

  @property
  def uses_time(self) -> bool:
    """Whether `corrupt` returns a diffusion time for the backbone."""
    return False

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    """tokens: int32[batch, seq_len] -> (ModelInputs, Targets); pure, static shapes."""
    raise NotImplementedError

  def mask_logits(self, logits: jax.Array) -> jax.Array:
    """Restricts the output distribution (e.g. MASK gets probability 0)."""
    return logits

  def token_nats(self, logits: jax.Array, targets: Targets) -> jax.Array:
    """float32[batch, seq_len] weighted cross-entropy, in nats."""
    logits = self.mask_logits(logits.astype(jnp.float32))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets.targets)
    return jnp.where(targets.weights > 0, ce * targets.weights, 0.0)

  def corrupt_eval(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    """The corruption scored by `likelihood`; the training one unless overridden."""
    return self.corrupt(tokens, rng)

  def forward(self, model: Any, tokens: jax.Array, rng: jax.Array, *, evaluation: bool = False):
    """Corrupts `tokens`, runs `model`, returns (nats float32[batch, seq_len], Targets)."""
    corrupt = self.corrupt_eval if evaluation else self.corrupt
    inputs, targets = corrupt(tokens, rng)
    return self.token_nats(self.apply_model(model, inputs), targets), targets

  def apply_model(self, model: Any, inputs: ModelInputs) -> jax.Array:
    """The model's logits, float32[batch, seq_len, vocab], on `inputs` under this attention."""
    return model(inputs.tokens, attention=self.attention, prefix_len=inputs.prefix_len,
                 time=inputs.time)

  def loss(self, model: Any, tokens: jax.Array, rng: jax.Array):
    """Training loss: mean nats per scored token (a scalar), and metrics."""
    return mean_token_loss(*self.forward(model, tokens, rng))

  def likelihood(self, model: Any, tokens: jax.Array, rng: jax.Array):
    """One estimate of each sequence's likelihood figure.

    Returns a dict of float32[batch]: `nats` (negative log-likelihood, or its
    bound, in nats), `tokens` (scored tokens) and `bytes` (the bytes of text
    the scored tokens stand for, `target_bytes`).
    """
    nats, targets = self.forward(model, tokens, rng, evaluation=True)
    return {
        "nats": nats.sum(-1),
        "tokens": targets.valid.sum(-1),
        "bytes": jnp.where(targets.valid > 0, self.target_bytes(targets.targets), 0.0).sum(-1),
    }

  def target_bytes(self, ids: jax.Array) -> jax.Array:
    """float32[...] the bytes of text (or pixels) each id of int[...] ids stands for; 0 for specials."""
    if self.byte_lengths is None:
      return (ids < self.num_bytes).astype(jnp.float32)
    return jnp.asarray(self.byte_lengths, jnp.float32)[ids]


def mean_token_loss(nats: jax.Array, targets: Targets):
  """(loss, metrics) from nats float32[batch, seq_len]: the mean nats per
  scored token, and the scored-token count as metrics['tokens']."""
  num_tokens = jnp.maximum(targets.valid.sum(), 1.0)
  loss = nats.sum() / num_tokens
  return loss, {"loss": loss, "tokens": targets.valid.sum()}
