"""ELECTRA: replaced-token detection with a small MLM generator.

"ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators"
(Clark et al., 2020). Sec. 2: select mask_ratio (15%) of the positions and
replace them all by MASK; a small generator G (a masked LM) predicts them and
its samples replace the selected positions, giving x_corrupt; the
discriminator D predicts at every non-PAD position whether
x_corrupt[n] != x[n]. A sample that reproduces the original token counts as
original. The loss is

  L = L_MLM(G) + lambda * L_BCE(D),   lambda = disc_weight (50 in the paper),

with L_MLM the mean cross-entropy over selected positions and L_BCE the mean
binary cross-entropy over non-PAD positions. Sampling is not differentiated
(the paper trains G by maximum likelihood, not adversarially).

Model choices (`ElectraModel`), following Sec. 3.2:
- The generator has the discriminator's depth and heads, with d_model and d_ff
  scaled by generator_scale (the paper finds 1/4 to 1/2 of the
  discriminator's size best).
- Token embeddings are shared (Sec. 3.2, "Weight Sharing"): one table
  float32[vocab, embed] at the discriminator's width, owned by the
  discriminator; the generator reads it through a learned projection to its
  own width (as ELECTRA's code maps its shared embedding_size to a smaller
  generator hidden size). Output heads are not shared.
- D's replaced-logit is its vocab head's logit for MASK, an id D never sees
  as input: sigmoid(w^T h_D(x)_n) with w the MASK column of the head, as in
  Sec. 2. The head's other columns get no gradient from this objective.

There is no likelihood (`likelihood_kind` 'none'): evaluation reports the
discriminator's accuracy and ROC AUC over non-PAD tokens.
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tokjax.models import Transformer, TransformerConfig
from tokjax.models.layers import fan_in_init, param
from tokjax.models.transformer import cast_params
from tokjax.objectives.mlm import MLM


def generator_config(config: TransformerConfig, scale: float) -> TransformerConfig:
  """The generator's config: `config` with d_model and d_ff scaled by `scale`.

  Raises:
    ValueError: scale outside (0, 1], or a scaled d_model that is not a
      multiple of 2 * num_heads (RoPE needs an even head_dim).
  """
  if not 0.0 < scale <= 1.0:
    raise ValueError(f"generator_scale={scale} must lie in (0, 1]; ELECTRA uses 0.25 to 0.5.")
  d_model, d_ff = round(scale * config.d_model), max(1, round(scale * config.d_ff))
  step = 2 * config.num_heads
  if abs(d_model - scale * config.d_model) > 1e-6 or d_model % step or not d_model:
    raise ValueError(
        f"generator_scale={scale} * d_model={config.d_model} must be a whole multiple of "
        f"2 * num_heads = {step}; pick electra.generator_scale accordingly."
    )
  return dataclasses.replace(config, d_model=d_model, d_ff=d_ff)


class SharedEmbedding(nnx.Module):
  """The discriminator's token table, projected to the generator's width.

  Stands in for `Transformer.embed`: `self[...]` is the table
  float32[vocab, gen_embed] = table[vocab, embed] @ proj[embed, gen_embed].
  The projection's output axis is replicated ('embed' already names its input).
  """

  def __init__(self, table: nnx.Param, width: int, *, rngs: nnx.Rngs):
    self.table = table
    self.proj = param(rngs, fan_in_init(0, 1), (table.shape[1], width), ("embed", None))

  def __getitem__(self, index) -> jax.Array:
    return (self.table[...] @ self.proj[...])[index]


class ElectraModel(nnx.Module):
  """Generator and discriminator sharing one token table (see module docstring).

  Called like a backbone, it is the generator (a masked LM). The generator's
  own token table is replaced by a `SharedEmbedding` of the discriminator's
  (always projected, even at generator_scale=1).
  """

  def __init__(self, config: TransformerConfig, *, generator_scale: float, replaced_id: int,
               rngs: nnx.Rngs):
    self.replaced_id = replaced_id
    self.discriminator = Transformer(config, rngs=rngs)
    gen_config = generator_config(config, generator_scale)
    self.generator = Transformer(gen_config, rngs=rngs)
    self.generator.embed = SharedEmbedding(self.discriminator.embed, gen_config.d_model, rngs=rngs)
    cast_params(self.generator.embed, config.param_dtype)  # Created outside a Transformer.

  def __call__(self, tokens: jax.Array, **kwargs) -> jax.Array:
    """Generator logits float32[batch, seq_len, vocab]; kwargs as `Transformer.__call__`."""
    return self.generator(tokens, **kwargs)

  def discriminate(self, tokens: jax.Array) -> jax.Array:
    """float32[batch, seq_len] logit that each token was replaced (bidirectional)."""
    return self.discriminator(tokens, attention="bidirectional")[..., self.replaced_id]


@flax.struct.dataclass
class Replaced:
  """One corrupted batch for the discriminator.

  Attributes:
    gen_nats: float32[batch, seq_len] generator cross-entropy, nats, 0 where
      not selected.
    selected: float32[batch, seq_len] 1 at the positions the generator predicts.
    x_corrupt: int32[batch, seq_len] tokens with generator samples at selected positions.
    labels: float32[batch, seq_len] 1 where x_corrupt != x.
    valid: float32[batch, seq_len] 1 at non-PAD positions (scored by D).
  """

  gen_nats: jax.Array
  selected: jax.Array
  x_corrupt: jax.Array
  labels: jax.Array
  valid: jax.Array


def score_histogram(scores: jax.Array, weights: jax.Array, bins: int) -> jax.Array:
  """float32[batch, bins] weighted counts of scores in [0, 1] over `bins` equal bins.

  Args:
    scores: float[batch, seq_len] in [0, 1]; 1 falls in the last bin.
    weights: float[batch, seq_len] count of each score (0 leaves it out).
  """
  index = jnp.clip(jnp.floor(scores * bins), 0, bins - 1).astype(jnp.int32)
  return jnp.einsum("bl,blk->bk", weights.astype(jnp.float32), jax.nn.one_hot(index, bins))


def auc_from_histograms(positive, negative) -> float:
  """ROC AUC = P(s+ > s-) + P(s+ = s-) / 2 from score histograms (Mann-Whitney U).

  Two scores in the same bin count as a tie, so the result is exact for
  scores already binned and otherwise off by at most half the fraction of
  (positive, negative) pairs sharing a bin.

  Args:
    positive, negative: float[bins] counts per bin, bins in increasing score.

  Returns:
    The AUC in [0, 1], or NaN when either class is empty.

  Raises:
    ValueError: the histograms are not 1-D of the same length.
  """
  pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
  if pos.ndim != 1 or pos.shape != neg.shape:
    raise ValueError(
        f"Histograms must be float[bins] of one length, got {pos.shape} and {neg.shape}."
    )
  pairs = pos.sum() * neg.sum()
  if pairs == 0:
    return float("nan")
  below = np.cumsum(neg) - neg
  return float((pos * (below + 0.5 * neg)).sum() / pairs)


@dataclasses.dataclass(frozen=True)
class Electra(MLM):
  """ELECTRA replaced-token detection (see module docstring).

  Selection is MLM's `masking_policy` at `mask_ratio`; every selected position
  becomes MASK for the generator (replace_mask=1, replace_random=0). Its
  settings (`config.electra`) are MLM's, with these defaults, and its own.

  Attributes:
    disc_weight: lambda, the weight of the discriminator loss (50 in the paper).
    generator_scale: generator width / discriminator width, in (0, 1].
    eval_bins: bins of the evaluation histograms of D's replaced-probability.
  """

  replace_mask: float = 1.0
  replace_random: float = 0.0
  disc_weight: float = 50.0
  generator_scale: float = 0.25
  eval_bins: int = 64

  name: str = dataclasses.field(default="electra", init=False)
  likelihood_kind: str = dataclasses.field(default="none", init=False)

  def __post_init__(self):
    super().__post_init__()
    if self.disc_weight < 0:
      raise ValueError(f"disc_weight={self.disc_weight} must be >= 0; ELECTRA uses 50.")
    if self.eval_bins < 2:
      raise ValueError(f"eval_bins={self.eval_bins} must be >= 2, e.g. 64.")

  def build_model(self, model_config: TransformerConfig, rngs: nnx.Rngs) -> ElectraModel:
    return ElectraModel(model_config, generator_scale=self.generator_scale,
                        replaced_id=self.mask_id, rngs=rngs)

  def replace(self, model, tokens: jax.Array, rng: jax.Array) -> Replaced:
    """Masks `tokens` int32[batch, seq_len], runs G and swaps in its samples.

    Samples are drawn from stop_gradient(G's logits), MASK and PAD excluded.
    """
    mask_rng, sample_rng = jax.random.split(rng)
    inputs, targets = self.corrupt(tokens, mask_rng)
    logits = self.mask_logits(model(inputs.tokens, attention=self.attention))
    samples = jax.random.categorical(sample_rng, jax.lax.stop_gradient(logits))
    x_corrupt = jnp.where(targets.weights > 0, samples.astype(tokens.dtype), tokens)
    return Replaced(
        gen_nats=self.token_nats(logits, targets), selected=targets.weights, x_corrupt=x_corrupt,
        labels=(x_corrupt != tokens).astype(jnp.float32),
        valid=(tokens != self.pad_id).astype(jnp.float32),
    )

  def loss(self, model, tokens: jax.Array, rng: jax.Array):
    """L_MLM + disc_weight * L_BCE (a scalar), and metrics (module docstring)."""
    r = self.replace(model, tokens, rng)
    logits = model.discriminate(r.x_corrupt)
    num_tokens = jnp.maximum(r.valid.sum(), 1.0)
    gen_loss = r.gen_nats.sum() / jnp.maximum(r.selected.sum(), 1.0)
    bce = optax.sigmoid_binary_cross_entropy(logits, r.labels)
    disc_loss = (bce * r.valid).sum() / num_tokens
    loss = gen_loss + self.disc_weight * disc_loss
    return loss, {
        "loss": loss, "gen_loss": gen_loss, "disc_loss": disc_loss,
        "disc_accuracy": (_correct(logits, r.labels) * r.valid).sum() / num_tokens,
        "replaced_fraction": (r.labels * r.valid).sum() / num_tokens,
        "tokens": r.valid.sum(),
    }

  def likelihood(self, model, tokens: jax.Array, rng: jax.Array):
    """No likelihood (`nats` = 0); D's figures per sequence for `eval_report`.

    Returns:
      float32[batch]: nats (zeros), tokens and bytes (non-PAD), disc_correct;
      float32[batch, eval_bins]: hist_replaced and hist_original, counts of D's
      replaced-probability over replaced and over original tokens.
    """
    r = self.replace(model, tokens, rng)
    logits = model.discriminate(r.x_corrupt)
    prob = jax.nn.sigmoid(logits)
    return {
        "nats": jnp.zeros(tokens.shape[:1], jnp.float32),
        "tokens": r.valid.sum(-1),
        "bytes": (r.valid * self.target_bytes(tokens)).sum(-1),
        "disc_correct": (_correct(logits, r.labels) * r.valid).sum(-1),
        "hist_replaced": score_histogram(prob, r.labels * r.valid, self.eval_bins),
        "hist_original": score_histogram(prob, (1.0 - r.labels) * r.valid, self.eval_bins),
    }

  def eval_report(self, totals: dict) -> dict:
    """disc_accuracy and disc_auc (NaN if a class is empty) from summed `likelihood`."""
    return {
        "disc_accuracy": float(totals["disc_correct"]) / max(float(totals["tokens"]), 1.0),
        "disc_auc": auc_from_histograms(totals["hist_replaced"], totals["hist_original"]),
    }


def _correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """float32[...] 1 where D's decision (logit > 0 = replaced) matches the label."""
  return ((logits > 0) == (labels > 0)).astype(jnp.float32)
