"""An image classifier on the shared trunk: the label from the pixels.

A ViT-style classifier ("An Image is Worth 16x16 Words", Dosovitskiy et al.
2021, Sec. 3.1, with global average pooling instead of a class token, as in
its Appendix D.3 and MAE's fine-tuning): patches embedded linearly, the
shared bidirectional blocks, the mean over patches, and a linear head
(`tokjax.models.vision.ClassifierModel`). It trains by cross-entropy on the
labels that class tokens carry (`config.data.class_token=True`: the window's
first token is the image's class token, which the model never sees; it reads
only the pixels).

It has no likelihood (`likelihood_kind` 'none') and no sampler; evaluation
reports the accuracy. Its `logits_and_features` serve as the judge of image
samples (their class accuracy, and features for a Fashion-MNIST FID).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tokjax.models import TransformerConfig
from tokjax.models.vision import ClassifierModel, patch_grid
from tokjax.objectives.base import Objective
from tokjax.objectives.images import ImageWindows


@dataclasses.dataclass(frozen=True)
class Classifier(ImageWindows, Objective):
  """Image classifier (see module docstring).

  Attributes:
    patch_size: patch side in pixels; must divide both image sides.

  Raises:
    ValueError: on construction, a bad patch size; from `build_model`, `loss`
      and `likelihood`, a text tokenizer or windows without class tokens.
  """

  patch_size: int = 4

  name: str = dataclasses.field(default="classifier", init=False)
  attention: str = dataclasses.field(default="bidirectional", init=False)
  likelihood_kind: str = dataclasses.field(default="none", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=(), init=False)

  def __post_init__(self):
    if int(self.patch_size) != self.patch_size or self.patch_size < 1:
      raise ValueError(f"--config.classifier.patch_size={self.patch_size!r} must be a positive "
                       "integer dividing the image sides, e.g. 4 for 28x28.")
    if len(self.image_shape) == 2:
      self.check_patch_size()

  def check_patch_size(self) -> None:
    """Raises ValueError unless patch_size divides the image sides."""
    try:
      patch_grid(self.image_shape, self.patch_size)
    except ValueError as e:
      raise ValueError(f"--config.classifier.patch_size: {e}") from None

  def check_labels(self) -> None:
    """Raises ValueError for a text tokenizer or windows without class tokens."""
    self.check_image_tokenizer()
    if len(self.class_ids) < 2:
      raise ValueError(
          "objective=classifier needs labelled windows: set --config.data.class_token=True "
          "(configs/fashion_mnist.py:objective=classifier does).")

  def build_model(self, model_config: TransformerConfig, rngs: nnx.Rngs) -> ClassifierModel:
    """ClassifierModel on `model_config`'s trunk.

    Raises:
      ValueError: a text tokenizer, no class tokens, or a bad patch size.
    """
    self.check_labels()
    self.check_patch_size()
    return ClassifierModel(model_config, self.patch_size, self.image_shape, len(self.class_ids),
                           rngs=rngs)

  def scores(self, model, tokens: jax.Array) -> dict:
    """Per-row figures, each float32[batch]: 'nats' (cross-entropy of the
    label, 0 for rows without one), 'valid' (1 for an image with a label),
    'correct' (1 where the arg-max logit is the label and the row is valid)."""
    self.check_labels()
    labels = self.labels(tokens)
    valid = (labels >= 0).astype(jnp.float32) * self.image_rows(tokens)
    logits = model(self.pixels(tokens)).astype(jnp.float32)
    safe = jnp.maximum(labels, 0)
    nats = optax.softmax_cross_entropy_with_integer_labels(logits, safe) * valid
    correct = (jnp.argmax(logits, -1) == safe).astype(jnp.float32) * valid
    return {"nats": nats, "valid": valid, "correct": correct}

  def loss(self, model, tokens: jax.Array, rng: jax.Array):
    """Mean cross-entropy (nats) over labelled image rows, and metrics
    'loss', 'accuracy', 'tokens' (rows scored)."""
    del rng
    s = self.scores(model, tokens)
    rows = s["valid"].sum()
    loss = s["nats"].sum() / jnp.maximum(rows, 1.0)
    accuracy = s["correct"].sum() / jnp.maximum(rows, 1.0)
    return loss, {"loss": loss, "accuracy": accuracy, "tokens": rows}

  def likelihood(self, model, tokens: jax.Array, rng: jax.Array) -> dict:
    """Per-row float32[batch]: 'nats' (the cross-entropy; kind 'none', so the
    report omits it), 'tokens' (1 per scored row), 'bytes' (its pixels), 'correct'."""
    del rng
    s = self.scores(model, tokens)
    return {"nats": s["nats"], "tokens": s["valid"],
            "bytes": s["valid"] * float(self.image_shape[0] * self.image_shape[1]),
            "correct": s["correct"]}

  def eval_report(self, totals: dict) -> dict:
    """'accuracy' over scored rows, and 'cross_entropy' (mean nats per row)."""
    rows = max(float(totals["tokens"]), 1.0)
    return {"accuracy": float(totals["correct"]) / rows,
            "cross_entropy": float(totals["nats"]) / rows}
