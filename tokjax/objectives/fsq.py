"""FSQ image tokenizer training: a convolutional autoencoder with FSQ latents.

"Finite Scalar Quantization: VQ-VAE Made Simple" (Mentzer et al. 2023), Sec. 3
and 4: an autoencoder whose latents are rounded to a fixed grid of codes
(`tokjax.models.fsq`), trained with the reconstruction loss alone (no
codebook or commitment loss). Here it is the mean squared error of the pixel
values in [0, 1] of grey 28x28 images, coded as a 7x7 grid of codes (levels
(8, 5, 5, 5): 1,000 codes). Token models then train on the codes
(`tokjax.fsq_tokenizer.FSQTokenizer`).

It reads the pixel windows of `configs/fashion_mnist.py` (`ImageWindows`).
There is no likelihood (kind 'none'): evaluation reports the reconstruction
MSE, the PSNR (dB, 10 log10(1 / MSE) for pixels in [0, 1]) and the codebook
usage: the perplexity exp(H) of the codes' frequencies (H in nats; at most
the codebook size, reached by uniform use) and the fraction of codes used.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tokjax.models import TransformerConfig
from tokjax.models.fsq import FSQAutoencoder, check_levels, codebook_size
from tokjax.objectives.base import Objective
from tokjax.objectives.images import ImageWindows

MAX_CODEBOOK_SIZE = 2**16  # The paper's largest codebook (Mentzer et al. 2023, Table 1).
MIN_MSE = 1e-10  # PSNR is capped at 100 dB rather than infinite for a perfect reconstruction.


def psnr(mse: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB, 10 log10(1 / mse), of pixel values in [0, 1]
  (mse float32[...], floored at MIN_MSE)."""
  return -10.0 * jnp.log10(jnp.maximum(mse, MIN_MSE))


def perplexity(counts: np.ndarray) -> float:
  """exp(H) of the frequencies of int/float counts[num_codes], H = -sum p log p
  in nats over the codes with p > 0; 0 when there are no counts. Equals
  num_codes when every code is used equally often."""
  counts = np.asarray(counts, np.float64)
  total = counts.sum()
  if total <= 0:
    return 0.0
  p = counts[counts > 0] / total
  return float(np.exp(-(p * np.log(p)).sum()))


@dataclasses.dataclass(frozen=True)
class FSQ(ImageWindows, Objective):
  """Trains an `FSQAutoencoder` on pixel windows (see module docstring).

  Attributes:
    code_levels: FSQ levels L_i per latent channel (`config.fsq.code_levels`);
      the codebook has prod(L_i) codes. (Named so as not to clash with
      `levels`, the grey levels per pixel of the tokenizer.)
    channels: the convolutions' hidden width (`config.fsq.channels`).

  Raises (on construction):
    ValueError: a level < 2, a codebook over MAX_CODEBOOK_SIZE, channels < 1,
      a text tokenizer, or an image side not divisible by 4.
  """

  code_levels: tuple[int, ...] = (8, 5, 5, 5)
  channels: int = 64

  name: str = dataclasses.field(default="fsq", init=False)
  attention: str = dataclasses.field(default="bidirectional", init=False)  # Unused: no backbone.
  likelihood_kind: str = dataclasses.field(default="none", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=(), init=False)

  def __post_init__(self):
    object.__setattr__(self, "code_levels", check_levels(self.code_levels,
                                                         key="--config.fsq.code_levels"))
    if codebook_size(self.code_levels) > MAX_CODEBOOK_SIZE:
      raise ValueError(
          f"--config.fsq.code_levels={self.code_levels} give {codebook_size(self.code_levels)} "
          f"codes, more than {MAX_CODEBOOK_SIZE}; use fewer or smaller levels, e.g. (8, 5, 5, 5).")
    if isinstance(self.channels, bool) or int(self.channels) != self.channels or self.channels < 1:
      raise ValueError(f"--config.fsq.channels={self.channels!r} must be an integer >= 1, e.g. 64.")
    self.check_image_tokenizer()
    if any(n % 4 for n in self.image_shape):
      raise ValueError(f"FSQ halves each image side twice; image_shape {self.image_shape} must "
                       "have rows and cols divisible by 4 (Fashion-MNIST: 28x28).")

  @property
  def codebook_size(self) -> int:
    """prod(code_levels), the number of codes."""
    return codebook_size(self.code_levels)

  def build_model(self, model_config: TransformerConfig, rngs: nnx.Rngs) -> FSQAutoencoder:
    """The FSQAutoencoder; the Transformer's `model_config` is not used."""
    del model_config
    return FSQAutoencoder(self.code_levels, self.channels, image_shape=self.image_shape, rngs=rngs)

  def reconstruct(self, model: FSQAutoencoder, tokens: jax.Array):
    """Windows int32[batch, 1 + rows * cols] -> (pixels float32[batch, rows, cols] in [0, 1],
    reconstruction float32[batch, rows, cols], code indices int32[batch, rows/4, cols/4],
    rows float32[batch]: 1 for an image, 0 for a PAD row)."""
    pixels = self.pixels(tokens)
    reconstruction, indices = model(pixels)
    return pixels, reconstruction, indices, self.image_rows(tokens)

  def _squared_errors(self, pixels, reconstruction, rows) -> jax.Array:
    """float32[batch]: each image's summed squared pixel error (0 for PAD rows)."""
    return ((reconstruction - pixels) ** 2).sum((1, 2)) * rows

  def loss(self, model: FSQAutoencoder, tokens: jax.Array, rng: jax.Array):
    """Mean squared error per pixel of the image rows of windows int32[batch, 1 + rows * cols].

    Returns (loss, metrics): loss, mse (the same), psnr (dB) and tokens (the
    number of pixels scored).
    """
    del rng
    pixels, reconstruction, _, rows = self.reconstruct(model, tokens)
    num_pixels = rows.sum() * math.prod(self.image_shape)
    mse = self._squared_errors(pixels, reconstruction, rows).sum() / jnp.maximum(num_pixels, 1.0)
    return mse, {"loss": mse, "mse": mse, "psnr": psnr(mse), "tokens": num_pixels}

  def likelihood(self, model: FSQAutoencoder, tokens: jax.Array, rng: jax.Array):
    """No likelihood (`nats` = 0); the reconstruction figures per window.

    Returns:
      float32[batch]: nats (zeros), tokens and bytes (pixels scored: rows *
      cols for an image, 0 for a PAD row), sq_err (summed squared pixel error);
      float32[batch, codebook_size]: code_counts, how often each code occurs
      in the row's latent grid.
    """
    del rng
    pixels, reconstruction, indices, rows = self.reconstruct(model, tokens)
    batch = tokens.shape[0]
    scored = rows * math.prod(self.image_shape)
    flat = indices.reshape(batch, -1)
    counts = jnp.zeros((batch, self.codebook_size), jnp.float32).at[
        jnp.arange(batch)[:, None], flat].add(jnp.broadcast_to(rows[:, None], flat.shape))
    return {
        "nats": jnp.zeros((batch,), jnp.float32),
        "tokens": scored,
        "bytes": scored,
        "sq_err": self._squared_errors(pixels, reconstruction, rows),
        "code_counts": counts,
    }

  def eval_report(self, totals: dict) -> dict:
    """mse, psnr (dB), codebook_perplexity and codebook_usage (the fraction of
    codes used) from the summed `likelihood` (numpy)."""
    mse = float(totals["sq_err"]) / max(float(totals["tokens"]), 1.0)
    counts = np.asarray(totals["code_counts"])
    return {
        "mse": mse,
        "psnr": -10.0 * math.log10(max(mse, MIN_MSE)),
        "codebook_perplexity": perplexity(counts),
        "codebook_usage": float((counts > 0).mean()),
    }

  def pictures(self, model: FSQAutoencoder, tokens: jax.Array,
               rng: jax.Array) -> dict[str, np.ndarray]:
    """{'original', 'reconstructed'}: uint8[batch, rows, cols] each, the images of
    windows `tokens` and their reconstructions from the codes (one compiled program)."""
    del rng
    graphdef, state = nnx.split(model)
    pixels, reconstruction = _pictures(self, graphdef, state, tokens)
    return {"original": self.to_uint8(pixels), "reconstructed": self.to_uint8(reconstruction)}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _pictures(objective: FSQ, graphdef, state, tokens):
  pixels, reconstruction, _, _ = objective.reconstruct(nnx.merge(graphdef, state), tokens)
  return pixels, reconstruction
