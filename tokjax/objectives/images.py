"""What image objectives that see pixel values (fsq, mae, classifier) share.

They read the same windows as the pixel-token models: one image per window,
its first token BOS or its class token, then `rows * cols` grey-level ids
(`tokjax.data.PixelTokenizer`). `ImageWindows` turns a batch of such windows
into float pixel values in [0, 1], the labels, and which rows hold an image
(evaluation pads its last batch with all-PAD rows).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.objectives.base import from_tokenizer


@dataclasses.dataclass(frozen=True)
class ImageWindows:
  """Mixin with the tokenizer fields an image objective needs (all `from_tokenizer`).

  Attributes:
    levels: grey levels per pixel (pixel ids 0..levels-1).
    image_shape: (rows, cols).
    class_ids: the class tokens' ids, class c at class_ids[c]; () without
      class tokens (`config.data.class_token`).
  """

  # Their models see patches or convolutions, not a transformer over each
  # window's 785 tokens: runs log tokens/s (pixels + 1 per image), no MFU.
  transformer_flops = False

  levels: int = from_tokenizer("levels", 0)
  image_shape: tuple[int, int] = from_tokenizer("image_shape", ())
  class_ids: tuple[int, ...] = from_tokenizer("class_ids", ())

  def check_image_tokenizer(self) -> None:
    """Raises ValueError when the objective was built for a text tokenizer."""
    if not self.levels or len(self.image_shape) != 2:
      raise ValueError(
          f"Objective {self.name!r} trains on images; use an image dataset "
          "(configs/fashion_mnist.py:objective=" + self.name + ").")

  def pixels(self, tokens: jax.Array) -> jax.Array:
    """float32[batch, rows, cols] pixel values in [0, 1] (id / (levels - 1)) of
    windows int32[batch, 1 + rows * cols]; non-pixel ids (PAD) count as 0."""
    ids = tokens[:, 1:].reshape(tokens.shape[0], *self.image_shape)
    return jnp.where(ids < self.levels, ids, 0).astype(jnp.float32) / (self.levels - 1)

  def image_rows(self, tokens: jax.Array) -> jax.Array:
    """float32[batch]: 1 for a window that holds an image, 0 for a PAD row."""
    return (tokens[:, 1] < self.levels).astype(jnp.float32)

  def labels(self, tokens: jax.Array) -> jax.Array:
    """int32[batch] class labels from the class tokens (-1 where there is none)."""
    if not self.class_ids:
      return jnp.full(tokens.shape[:1], -1, jnp.int32)
    label = tokens[:, 0] - self.class_ids[0]
    return jnp.where((label >= 0) & (label < len(self.class_ids)), label, -1)

  def to_uint8(self, values: jax.Array) -> np.ndarray:
    """uint8[...] host images from float pixel values in [0, 1] (clipped)."""
    return np.asarray(jnp.round(jnp.clip(values, 0.0, 1.0) * 255.0)).astype(np.uint8)
