"""Images as FSQ codes: a trained `fsq` run as the tokenizer of token models.

"Finite Scalar Quantization: VQ-VAE Made Simple" (Mentzer et al. 2023), Sec. 4:
a token model (causal, md4, maskgit) trains on the FSQ codes of images instead
of their pixels. `FSQTokenizer` restores the autoencoder of a run of
`configs/fashion_mnist.py:objective=fsq` and codes each 28x28 image as its
7x7 grid of code indices in raster order (49 tokens), in the layout of
`tokjax.data.tokenizer`::

  0 .. K-1     an FSQ code index (K = prod(levels), 1,000 for (8, 5, 5, 5))
  K .. K+3     <pad>, <bos>, <eos>, <mask>
  K + 4 ..     extra named specials, then the class tokens <class_0>, ...

An image is BOS + its 49 codes, or its class token + its codes (as
`PixelTokenizer` does with `num_classes`). Decoding runs the autoencoder's
decoder, so it gives the autoencoder's reconstruction of the image.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from tokjax.data.tokenizer import ImageTokenizer, pixel_values

MAX_CHUNK = 1024  # Images per jitted encoder or decoder call.
TRAIN_COMMAND = ("python -m tokjax.train --config configs/fashion_mnist.py:objective=fsq "
                 "--workdir {}")


def _bucket(n: int) -> int:
  """The batch a chunk of n images is padded to: the next power of two, at most
  MAX_CHUNK, so a few compiled programs serve every size."""
  return min(MAX_CHUNK, 1 << max(n - 1, 0).bit_length())


def _local_params(params):
  """The parameters as arrays on this process's default device (gathered first
  when sharded over several processes), so the small autoencoder runs on one device."""
  def local(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    return jax.device_put(np.asarray(x))
  return jax.tree.map(local, params)


def _to_uint8(pixels: jax.Array) -> jax.Array:
  """Pixel values in [0, 1] (clipped) as uint8 grey values, as `ImageWindows.to_uint8`."""
  return jnp.round(jnp.clip(pixels, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def _not_fsq(objective: str, workdir: str = "") -> str:
  """The error for a run of another objective where an fsq run is needed."""
  where = f"{workdir} holds" if workdir else "This is"
  return (f"{where} a run of objective {objective!r}, not an FSQ tokenizer; "
          "--config.data.tokenizer_workdir must be the workdir of a "
          f"configs/fashion_mnist.py:objective=fsq run ({TRAIN_COMMAND.format('DIR')}).")


class FSQTokenizer(ImageTokenizer):
  """Grey images as FSQ code indices (see module docstring).

  Attributes (besides `ImageTokenizer`'s; num_bytes = codebook_size, unit 'code'):
    code_levels: the FSQ levels L_i per latent channel.
    codebook_size: prod(code_levels), the number of code ids.
    pixel_levels: grey levels the fsq run saw per pixel (its data.pixel_levels).
    image_shape: (rows, cols) of the images, (28, 28).
    latent_shape: (rows / 4, cols / 4), the grid of codes per image, (7, 7).
    tokens_per_image: codes per image, 49.

  Build it with `from_workdir` (a trained fsq run) or `from_run`.
  """

  unit = "code"

  def __init__(self, graphdef: nnx.GraphDef, params, *, pixel_levels: int = 256,
               extra_special_tokens: tuple[str, ...] = (), num_classes: int = 0):
    """graphdef and params: an `FSQAutoencoder` split by `nnx.split(model, nnx.Param)`.

    Raises:
      ValueError: num_classes not an integer >= 0, or special names that repeat.
    """
    model = nnx.merge(graphdef, params)
    super().__init__(model.codebook_size, extra_special_tokens, num_classes)
    self.code_levels = model.levels
    self.codebook_size = model.codebook_size
    self.pixel_levels = int(pixel_levels)
    self.image_shape = model.image_shape
    self.latent_shape = model.latent_shape
    self.tokens_per_image = self.latent_shape[0] * self.latent_shape[1]
    self.params = _local_params(params)
    self._encode = jax.jit(lambda p, pixels: nnx.merge(graphdef, p).encode(pixels))
    self._decode = jax.jit(
        lambda p, indices: _to_uint8(nnx.merge(graphdef, p).decode_indices(indices)))

  @classmethod
  def from_run(cls, exp, params, extra_special_tokens: tuple[str, ...] = (),
               num_classes: int = 0) -> "FSQTokenizer":
    """The tokenizer of an fsq run's `tokjax.experiment.Experiment` and its params.

    Raises:
      ValueError: the run is not an fsq run.
    """
    if exp.objective.name != "fsq":
      raise ValueError(_not_fsq(exp.objective.name))
    return cls(exp.graphdef, params, pixel_levels=exp.objective.levels,
               extra_special_tokens=extra_special_tokens, num_classes=num_classes)

  @classmethod
  def from_workdir(cls, workdir: str, extra_special_tokens: tuple[str, ...] = (),
                   num_classes: int = 0) -> "FSQTokenizer":
    """Restores the latest checkpoint of the fsq run in `workdir`.

    Raises:
      FileNotFoundError: no checkpoint in `workdir`, naming the command that
        trains one.
      ValueError: the run in `workdir` is not an fsq run.
    """
    # Imported here: tokjax.restore imports tokjax.objectives, whose make_tokenizer imports us.
    from tokjax.checkpoint import Checkpointer
    from tokjax.restore import load_run
    workdir = os.path.abspath(os.path.expanduser(workdir))
    missing = (f"No fsq checkpoint in {os.path.join(workdir, 'checkpoints')}; train the FSQ "
               f"tokenizer first: {TRAIN_COMMAND.format(workdir)}")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise FileNotFoundError(missing)
    ckpt = Checkpointer(workdir)
    try:
      objective = ckpt.saved_config().get("objective")
    except FileNotFoundError as e:
      raise FileNotFoundError(missing) from e
    finally:
      ckpt.close()
    if objective != "fsq":
      raise ValueError(_not_fsq(objective, workdir))
    exp, params, _ = load_run(workdir)
    return cls.from_run(exp, params, extra_special_tokens, num_classes)

  def _chunked(self, fn, inputs: np.ndarray) -> np.ndarray:
    """fn(params, chunk) over `inputs` (at least one row) in chunks of at most
    MAX_CHUNK rows, each padded (with its first row) to a power-of-two batch;
    the host outputs, concatenated."""
    outs = []
    for start in range(0, len(inputs), MAX_CHUNK):
      chunk = inputs[start:start + MAX_CHUNK]
      size = _bucket(len(chunk))
      padded = np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk), 0)])
      outs.append(np.asarray(fn(self.params, padded))[:len(chunk)])
    return np.concatenate(outs)

  def encode_images(self, images, labels: Sequence[int] | None = None) -> np.ndarray:
    """Codes a batch of images: int32[n, 1 + tokens_per_image].

    Args:
      images: uint8[n, rows, cols] grey images of `image_shape`.
      labels: int[n] class labels, or None. With num_classes > 0 each row starts
        with its image's class token; otherwise (or with no labels) with BOS.

    Returns:
      Each row: BOS or the class token, then the image's code indices in raster
      order of the latent grid.

    Raises:
      ValueError: images not uint8[n, rows, cols], labels of another length,
        or a label outside [0, num_classes).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != self.image_shape:
      raise ValueError(
          "encode_images takes grey images uint8[n, "
          f"{self.image_shape[0]}, {self.image_shape[1]}]; got {images.dtype}{list(images.shape)}. "
          "Stack them first and convert, e.g. images.astype(np.uint8) for values in "
          "[0, 255].")
    if not len(images):
      return np.zeros((0, 1 + self.tokens_per_image), np.int32)
    first = np.full((len(images), 1), self.bos_id, np.int32)
    if labels is not None and self.num_classes:
      labels = np.asarray(labels)
      if labels.shape != (len(images),):
        raise ValueError(f"labels has shape {labels.shape}; give one label per image, "
                         f"({len(images)},).")
      bad = labels[(labels < 0) | (labels >= self.num_classes)]
      if bad.size:
        self.class_id(int(bad[0]))  # Raises, naming the fix.
      first[:, 0] = np.asarray(self.class_ids, np.int32)[labels]
    codes = self._chunked(self._encode, pixel_values(images, self.pixel_levels))
    return np.concatenate([first, codes.reshape(len(images), -1).astype(np.int32)], axis=1)

  def encode(self, image, add_bos: bool = False, add_eos: bool = False,
             label: int | None = None) -> np.ndarray:
    """One image uint8[rows, cols] -> int32[tokens_per_image (+1 per BOS / EOS)],
    its codes in raster order; with add_bos and a `label`, the first token is
    the class token class_ids[label] (as `PixelTokenizer.encode`).
    For many images use `encode_images`, which batches them.

    Raises:
      ValueError: an image that is not uint8[rows, cols] of `image_shape`, or
        a label outside [0, num_classes).
    """
    image = np.asarray(image)
    if image.ndim != 2:
      raise ValueError(f"encode takes one image uint8{list(self.image_shape)}; got shape "
                       f"{list(image.shape)}. Use encode_images for a batch.")
    ids = self._framed(self.encode_images(image[None])[0, 1:], add_bos, add_eos)
    if add_bos and label is not None:
      ids[0] = self.class_id(label)
    return ids

  def codes(self, rows) -> np.ndarray:
    """int32[n, tokens_per_image]: each row's code ids in order, specials dropped,
    cut to tokens_per_image, a short row completed with code 0.

    Raises:
      ValueError: rows not int[n, length], or ids outside [0, vocab_size).
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer):
      raise ValueError(f"decode_batch takes int[n, length] rows; got "
                       f"{rows.dtype}{list(rows.shape)}. Use decode for one row.")
    if rows.size and (rows.min() < 0 or rows.max() >= self.vocab_size):
      raise ValueError(f"ids must lie in [0, {self.vocab_size}); got range "
                       f"[{rows.min()}, {rows.max()}].")
    is_code = rows < self.codebook_size
    order = np.argsort(~is_code, axis=1, kind="stable")  # Codes first, in their order.
    packed = np.take_along_axis(rows, order, axis=1)
    packed = np.where(np.arange(rows.shape[1]) < is_code.sum(1, keepdims=True), packed, 0)
    width = self.tokens_per_image
    packed = np.pad(packed, ((0, 0), (0, max(width - rows.shape[1], 0))))[:, :width]
    return packed.astype(np.int32)

  def decode_batch(self, rows) -> np.ndarray:
    """Decodes rows int[n, length] to images uint8[n, rows, cols]: each row's codes
    (see `codes`) through the autoencoder's decoder, one jitted call per chunk.

    Raises:
      ValueError: rows not int[n, length], or ids outside [0, vocab_size).
    """
    codes = self.codes(rows).reshape(-1, *self.latent_shape)
    if not len(codes):
      return np.zeros((0, *self.image_shape), np.uint8)
    return self._chunked(self._decode, codes)

  def decode(self, ids) -> np.ndarray:
    """Decodes one sampled row int[num_tokens] to an image uint8[rows, cols].

    Specials are dropped; missing codes are completed with code 0 and codes
    past tokens_per_image are ignored.

    Raises:
      ValueError: not one 1-D sequence, or ids outside [0, vocab_size).
    """
    return self.decode_batch(self._checked_ids(ids).astype(np.int64)[None])[0]
