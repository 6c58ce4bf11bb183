"""Dataset registry and `load_split`: a split of a TFDS builder as one token stream.

Builders write ArrayRecord files and are read back with `as_data_source`, so
TensorFlow is never needed. Add a dataset with one entry in `BUILDERS` (and,
for grey images, one in `IMAGE_SHAPES`).

Text datasets load as byte tokens (`ByteTokenizer`), BOS + text + EOS per
document. Image datasets load as pixel tokens (`PixelTokenizer`), BOS + the
pixels in raster order per image, so that with seq_len = 1 + rows * cols
(`image_seq_len`) every packed window is exactly one image.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from tokjax.data import fashion_mnist
from tokjax.data.fashion_mnist import FashionMnist
from tokjax.data.shakespeare import Shakespeare
from tokjax.data.text_files import TextFiles, TextFilesConfig

DEFAULT_DATA_DIR = "~/.cache/tokjax/tensorflow_datasets"
FILE_FORMAT = "array_record"


def default_config() -> ml_collections.ConfigDict:
  """The `config.data` fields: dataset name, TFDS data_dir, and text_files path.

  An image dataset's config adds `pixel_levels`, the grey levels per pixel
  (`PixelTokenizer`; DEFAULT_PIXEL_LEVELS when absent), as
  configs/fashion_mnist.py does. It is left out here so that the saved config
  of a text run, which the checkpoint compares on resume, stays as it was.
  """
  return ml_collections.ConfigDict(
      dict(name="shakespeare", data_dir=DEFAULT_DATA_DIR, path="")
  )


def _shakespeare(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  del config_data  # Nothing to configure.
  return Shakespeare(data_dir=data_dir, file_format=FILE_FORMAT)


def _text_files(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  config = TextFilesConfig.for_path(config_data.path)
  return TextFiles(config=config, data_dir=data_dir, file_format=FILE_FORMAT)


def _fashion_mnist(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  del config_data  # pixel_levels acts in the tokenizer, not in the stored data.
  return FashionMnist(data_dir=data_dir, file_format=FILE_FORMAT)


BUILDERS: dict[str, Callable[..., tfds.core.DatasetBuilder]] = {
    "fashion_mnist": _fashion_mnist,
    "shakespeare": _shakespeare,
    "text_files": _text_files,
}

# The image datasets among BUILDERS: name -> (rows, cols) of their grey
# images, stored as {'image': uint8[rows, cols], ...} examples. The rest hold text.
IMAGE_SHAPES: dict[str, tuple[int, int]] = {
    "fashion_mnist": fashion_mnist.IMAGE_SHAPE,
}
# Their label counts: with `config.data.class_token` each window starts with
# its image's class token instead of BOS.
IMAGE_CLASSES: dict[str, int] = {
    "fashion_mnist": fashion_mnist.NUM_CLASSES,
}


def image_seq_len(name: str) -> int | None:
  """The seq_len whose windows hold one image each, 1 + rows * cols (BOS and
  the pixels; 785 for fashion_mnist); None for a text dataset."""
  shape = IMAGE_SHAPES.get(name)
  return None if shape is None else 1 + shape[0] * shape[1]


def prepare(config_data) -> tfds.core.DatasetBuilder:
  """Returns the builder named by `config_data.name`, prepared on disk.

  In a multi-process run, process 0 prepares first while the others wait, and
  then the others prepare too: a no-op on a shared disk (where writing at once
  would race on TFDS's final rename), the real thing on hosts with their own.

  Raises:
    ValueError: an unknown name, listing the registered ones.
  """
  if config_data.name not in BUILDERS:
    raise ValueError(
        f"Unknown data.name {config_data.name!r}; use one of "
        f"{', '.join(BUILDERS)} (e.g. --config.data.name=text_files)."
    )
  data_dir = os.path.expanduser(config_data.data_dir)
  first = jax.process_index() == 0
  if first:
    builder = _prepared(config_data, data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"tokjax: {config_data.name} prepared by process 0")
  if not first:  # Built only now, so it sees what process 0 wrote.
    builder = _prepared(config_data, data_dir)
  return builder


def _prepared(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  builder = BUILDERS[config_data.name](config_data, data_dir)
  builder.download_and_prepare()
  return builder


def load_split(config_data, split: str, tokenizer) -> np.ndarray:
  """Returns int32[num_tokens]: every document of `split` as one token stream.

  Text: each document as BOS + text + EOS (a ByteTokenizer's bytes). Images:
  each image as BOS + its rows * cols pixel ids in raster order (a
  PixelTokenizer's), so num_tokens = num_images * (1 + rows * cols); a
  tokenizer with class tokens puts the image's class token in BOS's place.

  Documents come in the order TFDS stored them, fixed by their keys, so the
  stream is the same on every call and every host. Stored bytes that are not
  valid UTF-8 decode to U+FFFD.

  Raises:
    ValueError: an unknown dataset or split name, or a tokenizer that does not
      fit the dataset (pixels for images, bytes for text).
  """
  check_tokenizer(config_data.name, tokenizer)
  builder = prepare(config_data)
  if split not in builder.info.splits:
    raise ValueError(
        f"{config_data.name} has no split {split!r}; it has "
        f"{', '.join(builder.info.splits)}."
    )
  if config_data.name in IMAGE_SHAPES:
    images, labels = fashion_mnist.load_images(builder, split)
    if hasattr(tokenizer, "encode_images"):  # FSQ codes: one batched encoder pass.
      return tokenizer.encode_images(images, labels if tokenizer.num_classes else None).reshape(-1)
    if not tokenizer.num_classes:
      labels = [None] * len(images)
    return np.concatenate([tokenizer.encode(image, add_bos=True, label=label)
                           for image, label in zip(images, labels)], dtype=np.int32)
  source = builder.as_data_source(split=split)
  docs = [
      tokenizer.encode(source[i]["text"].decode("utf-8", errors="replace"),
                       add_bos=True, add_eos=True)
      for i in range(len(source))
  ]
  return np.concatenate(docs, dtype=np.int32)


def check_tokenizer(name: str, tokenizer) -> None:
  """Checks that `tokenizer` fits dataset `name`: a PixelTokenizer of the
  dataset's image shape for an image dataset, a byte tokenizer for text.

  Raises:
    ValueError: a mismatch, naming the fix.
  """
  pixels = getattr(tokenizer, "unit", "byte") in ("dim", "code")  # Pixels or FSQ codes.
  shape = IMAGE_SHAPES.get(name)
  if shape is None and pixels:
    raise ValueError(
        f"data.name={name!r} holds text, but the tokenizer is a {type(tokenizer).__name__}, "
        f"which encodes images ({', '.join(IMAGE_SHAPES)}); use a ByteTokenizer "
        "(make_tokenizer(config) picks the right one), e.g. configs/shakespeare.py.")
  if shape is not None and not pixels:
    raise ValueError(
        f"data.name={name!r} holds images, which load as pixel tokens, but the tokenizer "
        f"is a {type(tokenizer).__name__}; use a PixelTokenizer (make_tokenizer(config) "
        "picks the right one), e.g. configs/fashion_mnist.py.")
  if shape is not None and tuple(tokenizer.image_shape) != tuple(shape):
    raise ValueError(
        f"data.name={name!r} holds {shape[0]}x{shape[1]} images, but the {type(tokenizer).__name__} "
        f"encodes {tokenizer.image_shape}; build it with image_shape={shape}.")
