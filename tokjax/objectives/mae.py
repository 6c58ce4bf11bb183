"""MAE: masked autoencoding of image patches, on the shared trunk.

"Masked Autoencoders Are Scalable Vision Learners" (He et al. 2022). Sec. 3:
cut each image into patches (`tokjax.models.vision.patchify`), mask a large
fraction (mask_ratio, 75% in the paper) at random, encode only the visible
patches, and let a light decoder regress the pixels of every patch from the
encodings plus a learned mask token; the loss is the mean squared error on
the masked patches only. Sec. 4 ("Reconstruction target"): with
norm_pix_loss each target patch is normalised by its own pixels' mean and
standard deviation, which the paper finds improves the representation.

Masks (`tokjax.masking.PATCH_MASKING_POLICIES`) have a static count,
round(mask_ratio * num_patches) masked patches per image, so the visible
count and every shape are static: 'random' is MAE's per-image argsort of
uniform noise; 'block' is BEiT's block-wise masking (Bao et al. 2022,
Sec. 2.3) topped up to that count.

Windows are the pixel-token windows of the image configs (`ImageWindows`:
first token BOS or a class token, never read here, then the pixel ids). All-PAD
rows (evaluation's padding) are never scored. There is no likelihood
(`likelihood_kind` 'none') and no sampler: evaluation reports the masked
reconstruction error, and `pictures` draws original, masked and reconstructed
images.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tokjax import masking
from tokjax.models import TransformerConfig
from tokjax.models.vision import MAEModel, decoder_config, patch_grid, patchify, unpatchify
from tokjax.objectives.base import Objective
from tokjax.objectives.images import ImageWindows

NORM_EPS = 1e-6  # Added to each patch's variance (MAE's reference code).
GREY = 128  # uint8 fill of masked patches in `pictures`.


def patch_norm(patches: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, std) of each patch float[..., patch_dim] over its pixels, each
  float[..., 1]; std = sqrt(unbiased variance + NORM_EPS), as MAE's code."""
  mean = patches.mean(-1, keepdims=True)
  var = patches.var(-1, keepdims=True, ddof=1)
  return mean, jnp.sqrt(var + NORM_EPS)


@dataclasses.dataclass(frozen=True)
class MAE(ImageWindows, Objective):
  """Masked autoencoder (see module docstring).

  Attributes:
    patch_size: patch side in pixels; must divide both image sides (28: 1, 2, 4, 7, 14, 28).
    mask_ratio: fraction of patches masked, in [0, 1), at least one left visible
      (round(mask_ratio * num_patches) masked per image).
    masking_policy: 'random' (MAE) or 'block' (BEiT block-wise).
    norm_pix_loss: regress per-patch normalised pixels (MAE Sec. 4).
    decoder_layers, decoder_d_model, decoder_heads: the light decoder
      (d_ff = 4 * decoder_d_model).

  Raises:
    ValueError: on construction, a setting out of range (naming its
      --config.mae flag); from `build_model`, a text tokenizer.
  """

  patch_size: int = 4
  mask_ratio: float = 0.75
  masking_policy: str = "random"
  norm_pix_loss: bool = True
  decoder_layers: int = 2
  decoder_d_model: int = 64
  decoder_heads: int = 2

  name: str = dataclasses.field(default="mae", init=False)
  attention: str = dataclasses.field(default="bidirectional", init=False)
  likelihood_kind: str = dataclasses.field(default="none", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=(), init=False)

  def __post_init__(self):
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ValueError(f"--config.mae.mask_ratio={self.mask_ratio} must lie in [0, 1), "
                       "e.g. 0.75 (MAE).")
    if int(self.patch_size) != self.patch_size or self.patch_size < 1:
      raise ValueError(f"--config.mae.patch_size={self.patch_size!r} must be a positive "
                       "integer dividing the image sides, e.g. 4 for 28x28.")
    masking.get_patch_policy(self.masking_policy)
    try:
      decoder_config(TransformerConfig(vocab_size=1), num_layers=self.decoder_layers,
                     d_model=self.decoder_d_model, num_heads=self.decoder_heads, num_patches=1)
    except ValueError as e:
      raise ValueError(f"--config.mae.decoder_layers/decoder_d_model/decoder_heads: {e}") from None
    if len(self.image_shape) == 2:  # An image tokenizer: check the sizes now.
      if self.num_masked >= self.num_patches:  # `num_patches` raises on a bad patch size.
        raise ValueError(
            f"--config.mae.mask_ratio={self.mask_ratio} masks all {self.num_patches} patches; "
            "leave at least one visible (e.g. 0.75).")

  # Sizes.

  @property
  def grid(self) -> tuple[int, int]:
    """(rows, cols) of patches.

    Raises:
      ValueError: a patch size that does not divide the image, naming --config.mae.patch_size.
    """
    try:
      return patch_grid(self.image_shape, self.patch_size)
    except ValueError as e:
      raise ValueError(f"--config.mae.patch_size: {e}") from None

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def num_masked(self) -> int:
    """Patches masked per image: round(mask_ratio * num_patches)."""
    return int(round(self.mask_ratio * self.num_patches))

  @property
  def num_visible(self) -> int:
    return self.num_patches - self.num_masked

  # Model.

  def build_model(self, model_config: TransformerConfig, rngs: nnx.Rngs) -> MAEModel:
    """MAEModel with `model_config` as its encoder and the decoder settings here.

    Raises:
      ValueError: a text tokenizer, a bad patch size, or fewer model
        positions (max_seq_len) than patches.
    """
    self.check_image_tokenizer()
    if model_config.max_seq_len < self.num_patches:
      raise ValueError(f"max_seq_len={model_config.max_seq_len} < {self.num_patches} patches; "
                       "raise --config.seq_len or --config.mae.patch_size.")
    dec = decoder_config(model_config, num_layers=self.decoder_layers,
                         d_model=self.decoder_d_model, num_heads=self.decoder_heads,
                         num_patches=self.num_patches)
    return MAEModel(model_config, dec, self.patch_size ** 2, self.num_patches, rngs=rngs)

  def mask(self, rng: jax.Array, batch_size: int) -> jax.Array:
    """bool[batch, num_patches], True = masked: exactly `num_masked` per image."""
    policy = masking.get_patch_policy(self.masking_policy)
    return policy(rng, batch_size, self.grid, self.num_masked)

  def visible_indices(self, mask: jax.Array) -> jax.Array:
    """int32[batch, num_visible]: the unmasked patches' raster indices, ascending,
    of mask bool[batch, num_patches] (exactly num_masked True per row)."""
    order = jnp.argsort(mask, axis=-1, stable=True)  # Unmasked (False) first, in raster order.
    return order[:, :self.num_visible].astype(jnp.int32)

  def targets(self, patches: jax.Array) -> jax.Array:
    """The regression targets float32[batch, num_patches, patch_dim]: the
    pixel patches, per-patch normalised when norm_pix_loss."""
    if not self.norm_pix_loss:
      return patches
    mean, std = patch_norm(patches)
    return (patches - mean) / std

  def reconstruct(self, model, tokens: jax.Array, rng: jax.Array) -> dict:
    """Masks, encodes the visible patches and decodes every patch.

    Args:
      model: an `MAEModel` (or any callable with its `__call__`).
      tokens: int32[batch, 1 + rows * cols] image windows.
      rng: a PRNG key for the mask.

    Returns:
      {'patches': float32[batch, num_patches, patch_dim] pixels in [0, 1],
       'mask': bool[batch, num_patches] (True = masked),
       'predictions': float32[batch, num_patches, patch_dim] in target units,
       'sq_err': float32[batch, num_patches] squared error against `targets`
         summed over each patch's pixels,
       'rows': float32[batch] 1 for image rows, 0 for PAD rows}.
    """
    self.check_image_tokenizer()
    patches = patchify(self.pixels(tokens), self.patch_size)
    mask = self.mask(rng, tokens.shape[0])
    predictions = model(patches, self.visible_indices(mask))
    sq_err = ((predictions - self.targets(patches)) ** 2).sum(-1)
    return dict(patches=patches, mask=mask, predictions=predictions, sq_err=sq_err,
                rows=self.image_rows(tokens))

  # Scoring.

  def loss(self, model, tokens: jax.Array, rng: jax.Array):
    """Mean squared error per pixel over the masked patches of image rows (a
    scalar, in target units), and metrics: 'loss', 'tokens' (masked patches scored)."""
    r = self.reconstruct(model, tokens, rng)
    weights = r["mask"] * r["rows"][:, None]
    count = weights.sum()
    loss = (r["sq_err"] * weights).sum() / (jnp.maximum(count, 1.0) * self.patch_size ** 2)
    return loss, {"loss": loss, "tokens": count}

  def likelihood(self, model, tokens: jax.Array, rng: jax.Array) -> dict:
    """No likelihood; per-row sums for `eval_report`.

    Returns:
      float32[batch] each: 'nats' (zeros), 'tokens' (masked patches),
      'bytes' (pixels of the image), 'sq_err' (squared error over the masked
      patches' pixels, in target units: per-patch normalised with
      norm_pix_loss), 'sq_err_pixels' (the same in pixel units, [0, 1] scale,
      predictions un-normalised with each patch's own mean and std).
    """
    r = self.reconstruct(model, tokens, rng)
    weights = r["mask"] * r["rows"][:, None]
    pixels_err = ((self.to_pixels(r["predictions"], r["patches"]) - r["patches"]) ** 2).sum(-1)
    return {
        "nats": jnp.zeros(tokens.shape[:1], jnp.float32),
        "tokens": weights.sum(-1),
        "bytes": r["rows"] * float(self.num_patches * self.patch_size ** 2),
        "sq_err": (r["sq_err"] * weights).sum(-1),
        "sq_err_pixels": (pixels_err * weights).sum(-1),
    }

  def eval_report(self, totals: dict) -> dict:
    """'mse': mean squared error per masked pixel in target units (the loss's:
    per-patch normalised when norm_pix_loss); 'mse_pixels': the same in pixel
    units (values in [0, 1])."""
    pixels = max(float(totals["tokens"]), 1.0) * self.patch_size ** 2
    return {"mse": float(totals["sq_err"]) / pixels,
            "mse_pixels": float(totals["sq_err_pixels"]) / pixels}

  def to_pixels(self, predictions: jax.Array, patches: jax.Array) -> jax.Array:
    """Predictions float32[batch, num_patches, patch_dim] in pixel units: with
    norm_pix_loss un-normalised by each original patch's own mean and std (as
    MAE's visualisation does), else as they are."""
    if not self.norm_pix_loss:
      return predictions
    mean, std = patch_norm(patches)
    return predictions * std + mean

  def panels(self, model, tokens: jax.Array, rng: jax.Array) -> tuple[jax.Array, ...]:
    """(original, masked, reconstructed), each float32[batch, rows, cols] in [0, 1]:
    masked patches grey (128 / 255); the reconstruction pastes the visible
    patches from the original and the predictions (`to_pixels`) elsewhere."""
    r = self.reconstruct(model, tokens, rng)
    patches, mask = r["patches"], r["mask"][:, :, None]
    masked = jnp.where(mask, GREY / 255.0, patches)
    rebuilt = jnp.where(mask, jnp.clip(self.to_pixels(r["predictions"], patches), 0.0, 1.0),
                        patches)
    return tuple(unpatchify(x, self.patch_size, self.image_shape)
                 for x in (patches, masked, rebuilt))

  def pictures(self, model, tokens: jax.Array, rng: jax.Array) -> dict[str, np.ndarray]:
    """{'original', 'masked', 'reconstructed'}: uint8[batch, rows, cols] panels
    (masked patches grey 128; see `panels`), from one compiled program."""
    graphdef, state = nnx.split(model)
    panels = _panels(self, graphdef, state, tokens, rng)
    return {name: self.to_uint8(x)
            for name, x in zip(("original", "masked", "reconstructed"), panels)}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _panels(objective: MAE, graphdef, state, tokens, rng):
  return objective.panels(nnx.merge(graphdef, state), tokens, rng)
