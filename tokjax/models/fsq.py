"""Finite Scalar Quantization (FSQ) and a small convolutional FSQ autoencoder.

"Finite Scalar Quantization: VQ-VAE Made Simple" (Mentzer, Minnen, Agustsson
and Tschannen, 2023). Sec. 3: each of the d channels of a latent is bounded to
an interval and rounded to the nearest integer, so channel i takes exactly L_i
values and the latent is one point of a fixed grid of prod(L_i) codes. No
codebook is learned and no commitment loss is needed; the rounding passes
gradients straight through ("straight-through estimator", Bengio et al. 2013).
Levels (8, 5, 5, 5) give 1,000 codes (the paper's Table 1).

`quantize` returns the codes normalised to [-1, 1]; `codes_to_indices` and
`indices_to_codes` map them to and from one integer in [0, prod(L_i)) by the
mixed-radix basis (1, L_0, L_0 L_1, ...), the paper's App. A.

`FSQAutoencoder` is a small convolutional autoencoder for grey images (28x28
Fashion-MNIST): two stride-2 convolutions take an image to a grid of
(rows / 4) x (cols / 4) latents of len(levels) channels, each quantized to one
code, and two 2x sub-pixel upsamplings take the codes back to pixels.
Every parameter names its logical axes ('embed' for a convolution's hidden
input channels, 'mlp' for its hidden output channels, None otherwise), so
`tokjax.sharding` can place it on any mesh.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tokjax.models.layers import fan_in_init, param

BOUND_EPS = 1e-3  # Keeps tanh's image inside the rounding cells (Mentzer et al., App. A).
DOWNSAMPLE = 4  # Two stride-2 convolutions: 28x28 images -> a 7x7 latent grid.
# Images are [batch, rows, cols, channels], kernels [kh, kw, in, out].
CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def check_levels(levels: Sequence[int], key: str = "levels") -> tuple[int, ...]:
  """`levels` as a tuple of ints, one per latent channel.

  Raises:
    ValueError: no levels, or a level that is not an integer >= 2; the message
      names `key`, the config key that sets them.
  """
  try:
    levels = tuple(levels)
  except TypeError:
    levels = (levels,)
  bad = [level for level in levels
         if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 2]
  if not levels or bad:
    raise ValueError(
        f"{key}={levels!r}: FSQ needs one integer >= 2 per latent channel (values {bad} are "
        f"not), e.g. {key}='(8, 5, 5, 5)' for 1,000 codes (Mentzer et al. 2023, Table 1).")
  return tuple(int(level) for level in levels)


def codebook_size(levels: Sequence[int]) -> int:
  """prod(L_i): the number of codes of the FSQ grid with these `levels`."""
  return math.prod(levels)


def _half_widths(levels: Sequence[int]) -> jax.Array:
  """float32[d]: L_i // 2, the scale from integer codes to normalised ones."""
  return jnp.asarray([level // 2 for level in levels], jnp.float32)


def _basis(levels: Sequence[int]) -> jax.Array:
  """int32[d]: the mixed-radix basis (1, L_0, L_0 L_1, ...)."""
  return jnp.asarray(np.cumprod((1,) + tuple(levels[:-1])), jnp.int32)


def bound(z: jax.Array, levels: Sequence[int], eps: float = BOUND_EPS) -> jax.Array:
  """Squashes latents so that rounding gives exactly L_i integers per channel.

  Mentzer et al. 2023, Sec. 3 and App. A: with h_i = (L_i - 1)(1 - eps) / 2,
  channel i becomes tanh(z + s_i) h_i - o_i. For odd L_i, o_i = s_i = 0 and
  the image (-h_i, h_i) rounds to the L_i integers -(L_i - 1)/2 .. (L_i - 1)/2.
  For even L_i the half-step offset o_i = 1/2 moves it to (-h_i - 1/2, h_i - 1/2),
  which rounds to -L_i/2 .. L_i/2 - 1, and s_i = atanh(o_i / h_i) puts z = 0 on
  the code 0 (for L_i = 2, whose codes are -1 and 0, z = 0 sits between them: s_i = 0).

  Args:
    z: float[..., d] unbounded latents, d = len(levels).
    levels: L_i per channel.
    eps: the margin that keeps every value strictly inside its rounding cell.

  Returns:
    float32[..., d] bounded latents (integer units; `quantize` rounds them).
  """
  half = np.asarray([(level - 1) * (1 - eps) / 2 for level in levels], np.float32)
  offset = np.asarray([0.5 if level % 2 == 0 else 0.0 for level in levels], np.float32)
  shift = np.arctanh(np.where(offset < half, offset / half, 0.0)).astype(np.float32)
  return jnp.tanh(z.astype(jnp.float32) + shift) * half - offset


def quantize(z: jax.Array, levels: Sequence[int]) -> jax.Array:
  """FSQ with straight-through rounding (Mentzer et al. 2023, Sec. 3).

  The forward value is round(bound(z)) / (L_i // 2), exactly on the grid; the
  gradient is that of bound(z) / (L_i // 2), as if rounding were the identity.
  This is `b + stop_gradient(round(b) - b)` written as
  `round(b) + (b - stop_gradient(b))`, whose forward value is round(b) with no
  floating-point error, so that the decoder sees bit for bit the codes that
  `indices_to_codes` returns.

  Args:
    z: float[..., d] unbounded latents, d = len(levels).
    levels: L_i per channel.

  Returns:
    float32[..., d] normalised codes in [-1, 1]: channel i takes exactly the
    L_i values k / (L_i // 2) for the integers k of `bound`.
  """
  b = bound(z, levels)
  rounded = jnp.round(b) + (b - jax.lax.stop_gradient(b))
  return rounded / _half_widths(levels)


def codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Normalised codes float[..., d] -> int32[...] indices in [0, prod(L_i)).

  Channel i's digit is code * (L_i // 2) + L_i // 2 in [0, L_i), and the index
  is sum_i digit_i * basis_i with the mixed-radix basis (1, L_0, L_0 L_1, ...);
  a bijection between the grid and [0, prod(L_i)) (Mentzer et al. 2023, App. A).
  """
  half = _half_widths(levels)
  digits = jnp.round(codes * half + half).astype(jnp.int32)
  return (digits * _basis(levels)).sum(-1)


def indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
  """int[...] indices in [0, prod(L_i)) -> float32[..., d] normalised codes;
  the inverse of `codes_to_indices` (digit_i = index // basis_i mod L_i)."""
  digits = (indices.astype(jnp.int32)[..., None] // _basis(levels)) % jnp.asarray(levels, jnp.int32)
  half = _half_widths(levels)
  return (digits.astype(jnp.float32) - half) / half


def _kernel_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """LeCun truncated normal for a kernel [kh, kw, in, out]: variance 1 / (kh kw in).

  Drawn as a [kh kw in, out] matrix and reshaped: the same distribution as
  `fan_in_init((0, 1, 2), 3)`, whose 4-D draw XLA:CPU compiles 2-3x slower.
  """
  fan_in = math.prod(shape[:-1])
  return fan_in_init(0, 1)(key, (fan_in, shape[-1]), dtype).reshape(shape)


class Conv(nnx.Module):
  """A 2-D convolution with a bias.

  Images are NHWC, float[batch, rows, cols, in]; the kernel is
  float32[kernel, kernel, in, out] and 'SAME' padding makes the output
  float[batch, rows / stride, cols / stride, out].
  """

  def __init__(self, in_channels: int, out_channels: int, kernel: int, *, rngs: nnx.Rngs,
               stride: int = 1, in_axis: str | None = None, out_axis: str | None = None):
    self.kernel = param(rngs, _kernel_init, (kernel, kernel, in_channels, out_channels),
                        (None, None, in_axis, out_axis))
    self.bias = param(rngs, jax.nn.initializers.zeros, (out_channels,), (out_axis,))
    self.stride = stride

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, self.kernel[...], (self.stride, self.stride), "SAME",
                                     dimension_numbers=CONV_DIMS)
    return y + self.bias[...]


class Upsample(nnx.Module):
  """2x upsampling by a sub-pixel convolution ("Real-Time Single Image and Video
  Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network",
  Shi et al. 2016, Sec. 2.2): a `Conv` to 4 * out channels at the low
  resolution, each pixel's 4 groups of channels then laid out as its 2x2 block.

  float[batch, rows, cols, in] -> float[batch, 2 rows, 2 cols, out]. Used
  instead of a stride-2 transposed convolution, which XLA:CPU runs as a
  convolution over a zero-dilated input: at 64 channels and batch 64 on 2 CPU
  cores its forward and backward took 4.4x as long, the train step 2x.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel: int, *, rngs: nnx.Rngs,
               in_axis: str | None = None, out_axis: str | None = None):
    self.conv = Conv(in_channels, 4 * out_channels, kernel, in_axis=in_axis, out_axis=out_axis,
                     rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(x)
    batch, rows, cols, channels = y.shape
    y = y.reshape(batch, rows, cols, 2, 2, channels // 4).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(batch, 2 * rows, 2 * cols, channels // 4)


class FSQAutoencoder(nnx.Module):
  """A convolutional autoencoder whose latents are FSQ codes (module docstring).

  Encoder: 4x4 stride-2 conv (1 -> channels), 4x4 stride-2 conv, a residual
  3x3 conv, a 1x1 conv to d = len(levels) channels, then `quantize`. Decoder:
  3x3 conv (d -> channels), a residual 3x3 conv, two 2x `Upsample`s (3x3
  sub-pixel convs; the second to 1 channel), sigmoid. GELU between layers.
  Computation is float32 (whatever config.model.dtype says).

  Attributes:
    levels: L_i per latent channel.
    codebook_size: prod(levels), the number of codes.
    image_shape: (rows, cols) of the images, each divisible by 4.
    latent_shape: (rows / 4, cols / 4), the grid of codes per image.

  Raises:
    ValueError: bad levels, channels < 1, or an image side not divisible by 4.
  """

  def __init__(self, levels: Sequence[int], channels: int = 64, *, rngs: nnx.Rngs,
               image_shape: tuple[int, int] = (28, 28)):
    self.levels = check_levels(levels)
    if int(channels) != channels or channels < 1:
      raise ValueError(f"channels={channels!r} must be an integer >= 1, e.g. 64.")
    if len(image_shape) != 2 or any(n < DOWNSAMPLE or n % DOWNSAMPLE for n in image_shape):
      raise ValueError(f"image_shape={tuple(image_shape)}: FSQAutoencoder halves each side "
                       f"twice, so rows and cols must be multiples of {DOWNSAMPLE} (e.g. 28x28).")
    self.codebook_size = codebook_size(self.levels)
    self.image_shape = tuple(int(n) for n in image_shape)
    self.latent_shape = tuple(n // DOWNSAMPLE for n in self.image_shape)
    c, d = int(channels), len(self.levels)
    hidden = dict(in_axis="embed", out_axis="mlp")
    self.enc1 = Conv(1, c, 4, stride=2, out_axis="mlp", rngs=rngs)
    self.enc2 = Conv(c, c, 4, stride=2, **hidden, rngs=rngs)
    self.enc3 = Conv(c, c, 3, **hidden, rngs=rngs)
    self.enc_out = Conv(c, d, 1, in_axis="embed", rngs=rngs)
    self.dec_in = Conv(d, c, 3, out_axis="mlp", rngs=rngs)
    self.dec1 = Conv(c, c, 3, **hidden, rngs=rngs)
    self.dec2 = Upsample(c, c, 3, **hidden, rngs=rngs)
    self.dec_out = Upsample(c, 1, 3, in_axis="embed", rngs=rngs)

  def _check(self, x: jax.Array, shape: tuple[int, int], what: str) -> None:
    if x.ndim != 3 or tuple(x.shape[1:]) != shape:
      raise ValueError(f"FSQAutoencoder takes {what} [batch, {shape[0]}, {shape[1]}]; got shape "
                       f"{tuple(x.shape)}. Add a batch axis for one image (x[None]).")

  def latents(self, pixels: jax.Array) -> jax.Array:
    """pixels float[batch, rows, cols] in [0, 1] -> float32[batch, rows/4, cols/4, d]
    unbounded latents (before `quantize`).

    Raises:
      ValueError: pixels not of shape [batch, *image_shape].
    """
    self._check(pixels, self.image_shape, "pixels")
    h = jax.nn.gelu(self.enc1(pixels.astype(jnp.float32)[..., None]))
    h = jax.nn.gelu(self.enc2(h))
    h = h + jax.nn.gelu(self.enc3(h))
    return self.enc_out(h)

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """Normalised codes float32[batch, rows/4, cols/4, d] -> pixels
    float32[batch, rows, cols] in (0, 1)."""
    h = jax.nn.gelu(self.dec_in(codes))
    h = h + jax.nn.gelu(self.dec1(h))
    h = jax.nn.gelu(self.dec2(h))
    return jax.nn.sigmoid(self.dec_out(h)[..., 0])

  def encode(self, pixels: jax.Array) -> jax.Array:
    """pixels float[batch, rows, cols] in [0, 1] -> int32[batch, rows/4, cols/4] code indices.

    Raises:
      ValueError: pixels not of shape [batch, *image_shape].
    """
    return codes_to_indices(quantize(self.latents(pixels), self.levels), self.levels)

  def decode_indices(self, indices: jax.Array) -> jax.Array:
    """int[batch, rows/4, cols/4] code indices in [0, codebook_size) -> pixels
    float32[batch, rows, cols] in (0, 1).

    Raises:
      ValueError: indices not of shape [batch, *latent_shape].
    """
    self._check(indices, self.latent_shape, "code indices")
    return self.decode_codes(indices_to_codes(indices, self.levels))

  def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """pixels float[batch, rows, cols] in [0, 1] -> (reconstruction float32[batch, rows, cols]
    in (0, 1), code indices int32[batch, rows/4, cols/4]); gradients reach the
    encoder through the straight-through rounding.

    Raises:
      ValueError: pixels not of shape [batch, *image_shape].
    """
    codes = quantize(self.latents(pixels), self.levels)
    return self.decode_codes(codes), codes_to_indices(codes, self.levels)
